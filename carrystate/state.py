"""Recurrent state: the `State` type, zero states and masking, and the `StateStore` of every agent's state.

A state is a tuple of tensors, each `[depth, batch, width]`, their shapes the core's `state_shapes` (LSTM: (h, c),
each [num_layers, batch, hidden]; GRU: (h,); window: the last window - 1 frames, [window - 1, batch, frame];
none: ()). The recurrent core never keeps state: callers pass it in and get the new one back.

`StateStore`: the recurrent state of every agent, carried across steps and rollouts, and the single place
where a carried state is zeroed (an episode ended). Replay applies the same resets inside a segment with
`mask_state`, at the steps the rollout recorded.

Keyed by the start of the env batch's slice of agents (several batches may alternate, as in
double-buffered vectorisation); each entry is a tuple of tensors `[depth, agents_in_slice, width]`.
Lifecycle: born as zeros at `register`; replaced after every rollout step by `set` (always detached: the
store never holds a graph); zeroed by `reset(mask)` for exactly the agents whose episode just ended,
before they see their next episode's first observation; saved and restored with `state_dict`.
"""

from __future__ import annotations

import torch
from torch import Tensor

State = tuple[Tensor, ...]
Shapes = tuple[tuple[int, int], ...]  # (depth, width) of each state tensor: the shape without the batch


def zero_state(shapes: Shapes, batch: int, device: torch.device | str = "cpu") -> State:
    """One zero tensor `[depth, batch, width]` per entry of `shapes`: the state of an episode's first step."""
    return tuple(torch.zeros(depth, batch, width, device=device) for depth, width in shapes)


def mask_state(state: State, reset: Tensor) -> State:
    """Zero the rows of every state tensor where `reset` [batch] is true; other rows pass unchanged. A multiply
    by 0/1, as the unroll kernels reset (cheaper than masked_fill on the rollout's small tensors: BENCHMARKS.md)."""
    if not state:
        return state
    keep = (~reset).to(state[0].dtype).view(1, -1, 1)
    return tuple(s * keep for s in state)


class StateStore:
    def __init__(self, shapes: Shapes, device: torch.device | str = "cpu"):
        self.shapes = tuple(tuple(s) for s in shapes)  # the policy's `state_shapes`
        self.num_tensors = len(self.shapes)
        self.device = torch.device(device)
        self.slices: dict[int, State] = {}
        self.sizes: dict[int, int] = {}

    def register(self, start: int, num_agents: int) -> None:
        """Create zero state for the agents [start, start + num_agents)."""
        for other, size in self.sizes.items():
            if start < other + size and other < start + num_agents and other != start:
                raise ValueError(f"agent slice [{start}, {start + num_agents}) overlaps [{other}, {other + size})")
        self.sizes[start] = num_agents
        self.slices[start] = zero_state(self.shapes, num_agents, self.device)

    def get(self, start: int) -> State:
        return self.slices[start]

    def set(self, start: int, state: State) -> None:
        if len(state) != self.num_tensors or any(s.shape[1] != self.sizes[start] for s in state):
            raise ValueError(
                f"state for slice {start} must be {self.num_tensors} tensors with {self.sizes[start]} agents"
            )
        self.slices[start] = tuple(s.detach() for s in state)

    def reset(self, start: int, mask: Tensor) -> None:
        """Zero the state of the agents of this slice where mask [agents_in_slice] is true; nobody else."""
        self.slices[start] = mask_state(self.slices[start], mask.to(self.device))

    def state_dict(self) -> dict[str, Tensor]:
        """Flat name → tensor mapping (safetensors-ready): `slice{start}.{i}`, on the CPU (on the meta device for a
        store built there, which holds shapes only)."""
        return {
            f"slice{start}.{i}": t.contiguous() if t.is_meta else t.contiguous().cpu()
            for start, st in self.slices.items()
            for i, t in enumerate(st)
        }

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        for start, size in self.sizes.items():
            loaded = []
            for i, (depth, width) in enumerate(self.shapes):
                key = f"slice{start}.{i}"
                if key not in tensors:
                    raise ValueError(f"saved recurrent state lacks {key}: the checkpoint has other env slices")
                t = tensors[key]
                want = (depth, size, width)
                if tuple(t.shape) != want:
                    raise ValueError(
                        f"saved recurrent state {key} has shape {tuple(t.shape)} but this run needs {want} "
                        "([depth, agents, width]): policy.core, policy.hidden_size, policy.num_layers, "
                        "policy.window or the number of agents differ from the checkpoint's"
                    )
                loaded.append(t.to(self.device))
            self.slices[start] = tuple(loaded)
