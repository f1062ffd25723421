"""Diagnostics of carried state: how stale stored start states are after an update, start-state refresh,
and the gradient-reach probe. Measurements here never change training.

Staleness. After the update, a sample of segments has its start state recomputed by replaying the agent's
earlier rows of the rollout (all of them, or the last `window` rows) under the new weights and, with the same
computation, under the rollout's weights. Replaying from an episode start zeroes the state, so a window that
contains the episode start recomputes the state exactly; a window that does not starts from the stored
state at its first row. Reported, at the first and last step of each sampled segment:
- `memory/state_distance`: ‖s_new − s_old‖ / ‖s_old‖ over all state tensors;
- `memory/kl_first`, `memory/kl_last`: KL(π_new(·|s_new) ‖ π_new(·|s_old)), the action-distribution change
  the stale state causes;
- `memory/value_gap_first`, `memory/value_gap_last`: R2D2's discrepancy |V(s_old) − V(s_new)| / max |V(s_new)|;
- `memory/replay_rounding`: ‖stored − s_old‖ / ‖stored‖, the float rounding between the rollout's batched
  steps and the replay (not staleness; near 1e-7).
Comparing two replays by the same code makes the staleness of an unchanged policy exactly zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from carrystate.buffer import SegmentBuffer
from carrystate.policy import Policy, State


def _replay(policy: Policy, buffer: SegmentBuffer, rows: Tensor, back: int, start: State | None = None) -> State:
    """State at the start of `rows` after replaying the `back` rows before each (same agent)."""
    state = tuple(s[:, rows - back] for s in (start or buffer.start_state))
    for j in range(back):
        r = rows - back + j
        _, _, state = policy.sequence(buffer.obs[r], state, buffer.starts[r])
    return state


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
        for dst, src in zip(fresh, state):
            dst[:, first + k] = src
    return fresh


def _norm(state: State) -> Tensor:
    return torch.cat([s.transpose(0, 1).flatten(1) for s in state], 1).norm(dim=1)  # [n]


def _diff(a: State, b: State) -> State:
    return tuple(x - y for x, y in zip(a, b))


@torch.no_grad()
def staleness(old: Policy, new: Policy, buffer: SegmentBuffer, samples: int, window: int | None,
              generator: torch.Generator) -> dict[str, float]:
    """Staleness metrics over `samples` random segments that have earlier rows in the rollout (see module doc)."""
    K = buffer.rows_per_agent
    if K < 2 or samples <= 0 or not new.core.num_state_tensors:
        return {}
    eligible = torch.nonzero(torch.arange(buffer.segments) % K != 0).flatten()
    pick = eligible[torch.randperm(len(eligible), generator=generator)[:samples]].to(buffer.obs.device)
    back = pick % K if window is None else torch.clamp(pick % K, max=window)
    out: dict[str, list[Tensor]] = {}
    for b in torch.unique(back).tolist():
        rows = pick[back == b]
        s_old, s_new = _replay(old, buffer, rows, b), _replay(new, buffer, rows, b)
        stored = tuple(s[:, rows] for s in buffer.start_state)
        eps = 1e-12
        metrics = {"state_distance": _norm(_diff(s_new, s_old)) / (_norm(s_old) + eps),
                   "replay_rounding": _norm(_diff(stored, s_old)) / (_norm(stored) + eps)}
        p_old, v_old, _ = new.sequence(buffer.obs[rows], s_old, buffer.starts[rows])
        p_new, v_new, _ = new.sequence(buffer.obs[rows], s_new, buffer.starts[rows])
        scale = v_new.abs().amax(1).clamp(min=1e-6)
        for name, t in (("first", 0), ("last", -1)):
            metrics[f"kl_{name}"] = new.actor.kl(p_new[:, t], p_old[:, t])
            metrics[f"value_gap_{name}"] = (v_old[:, t] - v_new[:, t]).abs() / scale
        for k, v in metrics.items():
            out.setdefault(k, []).append(v)
    return {f"memory/{k}": float(torch.cat(v).mean()) for k, v in out.items()}


def gradient_reach(policy: Policy, buffer: SegmentBuffer, chain: int, max_lag: int) -> np.ndarray:
    """Mean over agents of ‖∂(value + log-prob at an agent's last rollout step) / ∂obs at lag k‖ for k in
    [0, max_lag], through the training unroll: segments from their stored start states, or chains of
    `chain` consecutive segments with gradients across their boundaries. Only agents with no episode start
    inside the lag window count, so a zero is a segment cut, not an episode boundary."""
    obs = buffer.obs.clone().requires_grad_(True)
    if chain == 1:
        params, values, _ = policy.sequence(obs, buffer.start_state, buffer.starts)
    else:
        n = buffer.segments // chain
        first = torch.arange(n, device=obs.device) * chain
        state = tuple(s[:, first] for s in buffer.start_state)
        params, values = policy.chain(obs.view(n, chain, *obs.shape[1:]), state, buffer.starts.view(n, chain, -1))
        params, values = params.flatten(0, 1), values.flatten(0, 1)
    logp, _ = policy.actor.log_prob_entropy(params, buffer.actions)
    target = buffer.timeline(values)[:, -1] + buffer.timeline(logp)[:, -1]  # [agents]
    (grad,) = torch.autograd.grad(target.sum(), obs)
    g = buffer.timeline(grad).flatten(2).norm(dim=2)  # [agents, steps]
    starts = buffer.timeline(buffer.starts)
    steps = g.shape[1]
    lags = min(max_lag, steps - 1)
    reach = np.full(max_lag + 1, np.nan)
    for k in range(lags + 1):
        clean = ~starts[:, steps - 1 - k + 1 :].any(1) if k > 0 else torch.ones_like(starts[:, 0])
        if clean.any():
            reach[k] = float(g[clean, steps - 1 - k].mean())
    return reach
