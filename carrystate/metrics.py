"""Every metric a run logs, with its meaning: the one table that `report.html`, the documentation (docs/metrics.md)
and `carrystate config --metrics` show. Producers (the learner, the diagnostics, `rollout_metrics` here and the
trainer's timing) return `{name: value}`; the monitor writes whatever it is given. This module imports nothing of
the package (no torch).
"""

from __future__ import annotations

import numpy as np

RESULTS = ("charts/episodic_return", "charts/success_rate")
# the iteration's wall time, rollout start to update end, split three ways that add up to it
TIME_SPLIT = ("perf/env_seconds", "perf/policy_seconds", "perf/learn_seconds")
METRICS = {
    "charts/episodic_return": "Mean undiscounted return of the episodes that ended in the iteration's rollout.",
    "charts/episodic_length": "Mean length in steps of the episodes that ended in the iteration's rollout.",
    "charts/success_rate": "Fraction of the rollout's ended episodes that the task counts as solved.",
    "charts/reward_per_agent_step": "Mean reward per present agent-step of the rollout.",
    "charts/SPS": "Agent-steps per second since the run (or its resume) started, rollout and update included.",
    "charts/learning_rate": "The optimizer's learning rate in the iteration (annealed with trainer.anneal_lr).",
    "charts/clip_coef": "PPO's clip coefficient in the iteration (when trainer.clip_coef_final schedules it).",
    "charts/ent_coef": "The entropy bonus's coefficient in the iteration (when trainer.ent_coef_final schedules it).",
    "perf/iteration_seconds": "Wall time of the iteration from the start of its rollout to the end of its update "
    "(checkpoint writes excluded); env, policy and learn seconds add up to it.",
    "perf/env_seconds": "Seconds of the iteration's rollout spent stepping the environments.",
    "perf/policy_seconds": "Seconds of the iteration's rollout spent in the policy (choosing actions) and around it.",
    "perf/learn_seconds": "Seconds of the iteration spent in the update (advantages, epochs, observation statistics, "
    "diagnostics).",
    "losses/policy_loss": "PPO's clipped surrogate loss (lower is better for the policy).",
    "losses/value_loss": "Squared error of the value head against the GAE returns (clipped when clip_vloss).",
    "losses/entropy": "Mean entropy of the action distribution: how much the policy still explores.",
    "losses/approx_kl": "Approximate KL between the rollout policy and the updated one: how far an update moved.",
    "losses/clipfrac": "Fraction of samples whose probability ratio left the PPO clip range.",
    "losses/explained_variance": "How much of the returns' variance the rollout's value estimates explain (1: all).",
    "memory/state_distance": "Relative distance (0 to 2) between a segment's start state recomputed with the "
    "updated weights and with the rollout's weights: how stale a stored start state is after the update.",
    "memory/kl_first": "KL between the updated policy's actions from the fresh and from the stale start state, at "
    "the first step of a segment: what the staleness costs the policy there.",
    "memory/kl_last": "The same KL at the segment's last step: whether the stale start state still matters after "
    "a whole segment.",
    "memory/value_gap_first": "R2D2's value discrepancy |V(stale) - V(fresh)| / max |V(fresh)| at a segment's "
    "first step.",
    "memory/value_gap_last": "The same value discrepancy at the segment's last step.",
    "memory/replay_rounding": "Float rounding between the rollout's batched steps and the replay of a segment (not "
    "staleness; near 1e-7, larger means the replay does not reproduce the rollout).",
}


def rollout_metrics(stats, buffer) -> dict[str, float]:
    """What a finished rollout (`RolloutStats`, the `SegmentBuffer` it filled) logs: its episodes and rewards."""
    out = {"perf/env_seconds": stats.env_seconds}
    valid = buffer.valid  # mean reward per present agent-step of this rollout
    out["charts/reward_per_agent_step"] = float((buffer.rewards * valid).sum() / valid.sum().clamp(min=1))
    if stats.episode_returns:
        out["charts/episodic_return"] = float(np.mean(stats.episode_returns))
        out["charts/episodic_length"] = float(np.mean(stats.episode_lengths))
    if stats.success:
        out["charts/success_rate"] = float(np.mean(stats.success))
    return out


def table() -> str:
    """The metrics as a Markdown table (docs/metrics.md, `carrystate config --metrics`); a `|` in a meaning is
    escaped, so it stays in its cell."""
    cells = {name: meaning.replace("|", r"\|") for name, meaning in METRICS.items()}
    return "| metric | meaning |\n|---|---|\n" + "\n".join(f"| `{k}` | {v} |" for k, v in cells.items())
