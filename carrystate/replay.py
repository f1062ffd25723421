"""How a stored segment is replayed: its start state under each mode, burn-in warm-up, and the segment and
chain unrolls. The learner trains through these; diagnostics measure through the same code.

A segment (row of the `SegmentBuffer`) is replayed with `policy.sequence` from a start state, applying the
resets the rollout recorded in `buffer.starts` at the same steps, so that with unchanged weights the
replay reproduces the rollout. The start state is, by `trainer.start_state`:
- `stored`: what the agent held at the segment's first step in the rollout (detached, carried);
- `zero`: zeros, as several trainers do;
- `refresh`: recomputed with the current weights by replaying the agent's earlier rows of this rollout
  (a rollout's first rows keep their stored state: their past lies in an earlier rollout).
Burn-in (R2D2) then warms the start state up over the `burn_in` steps that precede the segment, without
gradient. Chains of consecutive segments (`trainer.gradient_horizon`) are unrolled with gradients flowing
across their boundaries (`Policy.chain`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from carrystate.buffer import SegmentBuffer
from carrystate.policy import Policy
from carrystate.state import State, mask_state


def start_states(mode: str, policy: Policy, buffer: SegmentBuffer) -> State:
    """The state every segment's replay starts from under `mode` (stored | zero | refresh): [depth, segments,
    width] per state tensor (the core's state_shapes)."""
    if mode == "zero":
        return tuple(torch.zeros_like(s) for s in buffer.start_state)
    if mode == "refresh":
        return refresh_start_states(policy, buffer)
    return buffer.start_state


@torch.no_grad()
def refresh_start_states(policy: Policy, buffer: SegmentBuffer) -> State:
    """Every segment's start state recomputed with `policy` by replaying its agent's earlier rows of this
    rollout in order (the first row of each agent keeps its stored state: its past is in an earlier rollout)."""
    K, A = buffer.rows_per_agent, buffer.num_agents
    fresh = tuple(s.clone() for s in buffer.start_state)
    first = torch.arange(A, device=buffer.obs.device) * K
    state = tuple(s[:, first] for s in fresh)
    for k in range(1, K):
        prev = first + k - 1
        _, _, state = policy.sequence(buffer.obs[prev], state, buffer.starts[prev])
        for dst, src in zip(fresh, mask_state(state, buffer.starts[first + k, 0])):
            dst[:, first + k] = src
    return fresh


def state_after_rows(policy: Policy, buffer: SegmentBuffer, rows: Tensor, back: int) -> State:
    """The state at the start of segments `rows` [n] after replaying the `back` rows before each (same agent),
    from the stored start state of the first of them."""
    state = tuple(s[:, rows - back] for s in buffer.start_state)
    for j in range(back):
        r = rows - back + j
        _, _, state = policy.sequence(buffer.obs[r], state, buffer.starts[r])
    return state


def warm_up(policy: Policy, buffer: SegmentBuffer, first: Tensor, state: State) -> State:
    """Burn-in: the start states `state` of segments `first` [n], replaced by the state reached after the
    `buffer.burn_in` steps that precede each segment (no gradient), where those steps exist."""
    b_obs, b_starts, b_state, has = buffer.burn_in_inputs(first)
    with torch.no_grad():
        _, _, warmed = policy.sequence(b_obs, b_state, b_starts)
    return tuple(torch.where(has.view(1, -1, 1), w, s) for w, s in zip(warmed, state))


def unroll(policy: Policy, obs: Tensor, starts: Tensor, state: State, chain: int = 1) -> tuple[Tensor, Tensor]:
    """Segments obs [n, H, *obs_shape] with their resets starts [n, H] from `state` → params [n, H, P] and
    values [n, H]. `chain` > 1: the n segments are n / chain runs of consecutive segments of one agent,
    `state` holds each run's start, and gradients flow across the boundaries inside a run."""
    if chain == 1:
        params, values, _ = policy.sequence(obs, state, starts, end_state=False)
        return params, values
    n = obs.shape[0] // chain
    params, values = policy.chain(obs.view(n, chain, *obs.shape[1:]), state, starts.view(n, chain, -1))
    return params.flatten(0, 1), values.flatten(0, 1)


def replay(
    policy: Policy, buffer: SegmentBuffer, idx: Tensor, start: State, obs: Tensor, starts: Tensor
) -> tuple[Tensor, Tensor]:
    """Replay a minibatch: segments idx [n] or chains of consecutive segments idx [n, chain], whose per-step
    obs and starts are gathered in `obs`, `starts` (flattened in idx's order), from their start states
    `start` (all segments' states under the epoch's mode), warmed up by burn-in first when the buffer keeps
    it. Returns params and values per step."""
    first = (idx[:, 0] if idx.dim() == 2 else idx).to(obs.device)
    state = tuple(s[:, first] for s in start)
    if buffer.burn_in:
        state = warm_up(policy, buffer, first, state)
    return unroll(policy, obs, starts, state, idx.shape[1] if idx.dim() == 2 else 1)
