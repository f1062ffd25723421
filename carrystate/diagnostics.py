"""Diagnostics of carried state: how stale stored start states are after an update, and the gradient-reach
probe. Measurements here never change training; they replay segments through `replay`, as training does.

Staleness. After the update, a sample of segments has its start state recomputed by replaying the agent's
earlier rows of the rollout (all of them, or the last `window` rows) under the new weights and, with the same
computation, under the rollout's weights. Replaying from an episode start zeroes the state, so a window that
contains the episode start recomputes the state exactly; a window that does not starts from the stored
state at its first row. Reported, at the first and last step of each sampled segment:
- `memory/state_distance`: ‖s_new − s_old‖ / max(‖s_old‖, ‖s_new‖) over all state tensors (0 to 2; bounded
  so that a state near zero does not blow the ratio up);
- `memory/kl_first`, `memory/kl_last`: KL(π_new(·|s_new) ‖ π_new(·|s_old)), the action-distribution change
  the stale state causes;
- `memory/value_gap_first`, `memory/value_gap_last`: R2D2's discrepancy |V(s_old) − V(s_new)| / max |V(s_new)|;
- `memory/replay_rounding`: ‖stored − s_old‖ / ‖stored‖, the float rounding between the rollout's batched
  steps and the replay (not staleness; near 1e-7).
Comparing two replays by the same code makes the staleness of an unchanged policy exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import Tensor

from carrystate import replay
from carrystate.buffer import SegmentBuffer
from carrystate.config import Config
from carrystate.policy import Policy
from carrystate.state import State, mask_state


def _norm(state: State) -> Tensor:
    return torch.cat([s.transpose(0, 1).flatten(1) for s in state], 1).norm(dim=1)  # [n]


def _diff(a: State, b: State) -> State:
    return tuple(x - y for x, y in zip(a, b))


@torch.no_grad()
def staleness(
    new: Policy,
    rollout_weights: Callable[[], AbstractContextManager],
    buffer: SegmentBuffer,
    samples: int,
    window: int | None,
    generator: torch.Generator,
) -> dict[str, float]:
    """Staleness metrics over `samples` random segments that have earlier rows in the rollout (see module doc).
    `new` is the updated policy; inside `rollout_weights()` it holds the rollout's weights (`Learner.weights`)."""
    K = buffer.rows_per_agent
    if K < 2 or samples <= 0 or not new.num_state_tensors:
        return {}
    eligible = torch.nonzero(torch.arange(buffer.segments) % K != 0).flatten()
    pick = eligible[torch.randperm(len(eligible), generator=generator)[:samples]].to(buffer.obs.device)
    back = pick % K if window is None else torch.clamp(pick % K, max=window)
    out: dict[str, list[Tensor]] = {}
    for b in torch.unique(back).tolist():
        rows = pick[back == b]
        opens = buffer.starts[rows, 0]  # a segment that opens an episode starts from zeros either way
        with rollout_weights():
            s_old = mask_state(replay.state_after_rows(new, buffer, rows, b), opens)
        s_new = mask_state(replay.state_after_rows(new, buffer, rows, b), opens)
        stored = tuple(s[:, rows] for s in buffer.start_state)
        eps = 1e-12
        scale = torch.maximum(_norm(s_old), _norm(s_new)) + eps
        metrics = {
            "state_distance": _norm(_diff(s_new, s_old)) / scale,
            "replay_rounding": _norm(_diff(stored, s_old)) / (_norm(stored) + eps),
        }
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
    first = torch.arange(0, buffer.segments, chain, device=obs.device)  # every chain's first segment
    params, values = replay.unroll(policy, obs, buffer.starts, tuple(s[:, first] for s in buffer.start_state), chain)
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


def probe(
    policy: Policy, cfg: Config, gradient_horizons: list, max_lag: int | None = None, seed: int = 0, out=None
) -> dict:
    """Gradient reach of a trained policy (of a run of `cfg`) on fresh rollouts of its env, for each gradient
    horizon (`bptt_horizon`, multiples of it, or 'episode'); plots the curves to `out` (PNG) if given."""
    from carrystate.envs import make_env
    from carrystate.wiring import build_parts

    t = cfg.trainer
    env = make_env(cfg.env, seed=seed)
    try:
        parts = build_parts(cfg, env, policy, seed)
        parts.rollout.collect(policy, parts.buffer, parts.generators.sample)  # warm the carried state up first
        parts.rollout.collect(policy, parts.buffer, parts.generators.sample)
    finally:
        env.close()
    buffer = parts.buffer
    max_lag = max_lag or buffer.steps - 1
    curves = {}
    for gh in gradient_horizons:
        chain = t.model_copy(update={"gradient_horizon": gh}).chain_length(buffer.rows_per_agent)
        if chain < 1 or buffer.rows_per_agent % chain:
            raise ValueError(
                f"gradient horizon {gh} does not fit {buffer.rows_per_agent} segments of "
                f"{t.bptt_horizon} steps per agent"
            )
        curves[str(gh)] = gradient_reach(policy, buffer, chain, max_lag)
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, reach in curves.items():
            ax.semilogy(np.arange(len(reach)), np.where(reach > 0, reach, np.nan), label=f"gradient horizon {name}")
        for b in range(t.bptt_horizon - 1, max_lag + 1, t.bptt_horizon):
            ax.axvline(b + 0.5, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("lag k (steps back from an agent's last step of the rollout)")
        ax.set_ylabel("mean ‖∂loss_t / ∂obs_(t−k)‖")
        ax.set_title(f"gradient reach, bptt_horizon {t.bptt_horizon} (dotted: segment boundaries)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return {"bptt_horizon": t.bptt_horizon, "curves": curves}
