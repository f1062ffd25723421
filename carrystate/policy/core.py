"""The recurrent core: `lstm`, `gru`, or `none`, with `step` (T=1, rollout) and `sequence` (T>1, training).

State lifecycle. A state is a tuple of tensors, each `[num_layers, batch, hidden]` (LSTM: (h, c); GRU: (h,);
none: ()). The core never keeps state itself: callers pass it in and get the new one back. `reset[b]`
(or `resets[b, t]`) true means row b starts a new episode at that step: its state is replaced by zeros
*before* the step's input is read, in every layer, and no other row is touched.

`sequence` is the one place where training unrolls the core. It applies the in-segment resets exactly by
cutting the segment at every timestep where some row resets and running the fused `nn.LSTM`/`nn.GRU`
over each piece; with no resets it is a single fused call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


def mask_state(state: State, reset: Tensor) -> State:
    """Zero the rows of every state tensor where `reset` [batch] is true; other rows pass unchanged."""
    if not state:
        return state
    keep = ~reset.view(1, -1, 1)
    return tuple(torch.where(keep, s, torch.zeros((), dtype=s.dtype, device=s.device)) for s in state)


class RecurrentCore(nn.Module):
    """`kind` in {lstm, gru, none}: maps [batch, (T,) in_size] features to [batch, (T,) hidden] outputs."""

    def __init__(self, kind: str, in_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        if kind == "lstm":
            self.rnn = nn.LSTM(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 2
        elif kind == "gru":
            self.rnn = nn.GRU(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 1
        elif kind == "none":
            self.rnn = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU())
            self.num_state_tensors = 0
        else:
            raise ValueError(f"policy.core={kind!r} is not one of lstm, gru, none")
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.orthogonal_(p)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        shape = (self.num_layers, batch, self.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.num_state_tensors))

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.kind == "lstm":
            y, (h, c) = self.rnn(x, state)
            return y, (h, c)
        if self.kind == "gru":
            y, h = self.rnn(x, state[0])
            return y, (h,)
        return self.rnn(x), ()

    def step(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        """One step for every row: x [batch, in], reset [batch] bool → y [batch, hidden], new state."""
        y, state = self._run(x.unsqueeze(1), mask_state(state, reset))
        return y.squeeze(1), state

    def sequence(self, x: Tensor, state: State, resets: Tensor) -> tuple[Tensor, State]:
        """x [batch, T, in], state at t=0, resets [batch, T] bool → y [batch, T, hidden], state after T-1."""
        if self.kind == "none":
            return self.rnn(x), ()
        T = x.shape[1]
        cut_at = (torch.nonzero(resets[:, 1:].any(0)).flatten() + 1).tolist()  # one host sync per call
        bounds = [0, *cut_at, T]
        outputs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            state = mask_state(state, resets[:, a])
            y, state = self._run(x[:, a:b], state)
            outputs.append(y)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)), state
