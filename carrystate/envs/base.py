"""The `VecEnv` protocol: a batch of environments with every agent flattened into one row.

Contract of `step` (same-step autoreset): when an agent's episode ends at a step, `terminated` or
`truncated` is set for its row, `final_obs[row]` holds the last observation of the ended episode (the
bootstrap target of a truncation) and `obs[row]` is already the first observation of its next episode.
No action is ever spent on a reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import gymnasium as gym
import numpy as np


@dataclass
class StepResult:
    obs: np.ndarray  # [agents, *obs_shape]: next observation (first of a new episode where one ended)
    reward: np.ndarray  # [agents] float32
    terminated: np.ndarray  # [agents] bool: the episode ended in a terminal state (no bootstrap)
    truncated: np.ndarray  # [agents] bool: the episode was cut by a time limit (bootstrap from final_obs)
    final_obs: np.ndarray  # [agents, *obs_shape]: meaningful only where terminated | truncated
    episode_returns: list[float] = field(default_factory=list)  # undiscounted returns of episodes ended now
    episode_lengths: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)  # per ended episode, for tasks that define success
    # [agents] bool or None (all valid): False where the row of `obs` is padding (e.g. an agent that left its
    # episode early and waits for the env's reset); padding steps are masked out of the loss
    valid: np.ndarray | None = None


@runtime_checkable
class VecEnv(Protocol):
    num_agents: int
    single_observation_space: gym.Space
    single_action_space: gym.Space

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


class EpisodeTracker:
    """Running undiscounted return and length per agent, emitted when episodes end."""

    def __init__(self, num_agents: int):
        self.returns = np.zeros(num_agents, dtype=np.float64)
        self.lengths = np.zeros(num_agents, dtype=np.int64)

    def update(
        self, reward: np.ndarray, done: np.ndarray, active: np.ndarray | None = None
    ) -> tuple[list[float], list[int]]:
        """Add this step's reward; `active` [agents] (default all) marks rows that acted (not padding)."""
        self.returns += reward
        self.lengths += 1 if active is None else active
        ended = np.flatnonzero(done)
        out = self.returns[ended].tolist(), self.lengths[ended].tolist()
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return out


def check_actions(actions: np.ndarray, space: gym.Space, num_agents: int) -> np.ndarray:
    """Actions as an array of the right batch shape and within the space, or a ValueError saying why."""
    actions = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        expected = (num_agents,)
    else:
        expected = (num_agents, *space.shape)
    if actions.shape != expected:
        raise ValueError(f"actions have shape {actions.shape}, expected {expected} (agents × action shape)")
    if isinstance(space, gym.spaces.Discrete):
        bad = (actions < space.start) | (actions >= space.start + space.n)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"action {actions[row]} of agent {row} is outside {space}")
    return actions


class EnvError(RuntimeError):
    """An environment misbehaved: raised inside step, or returned data that breaks the VecEnv contract."""


def check_step_result(res: StepResult, num_agents: int, obs_shape: tuple[int, ...], agents_per_env: int = 1) -> None:
    """Raise EnvError naming the field, env and agent when a step's output breaks the contract."""

    def where(row: int) -> str:
        return f"agent row {row} (env {row // agents_per_env}, agent {row % agents_per_env})"

    for name in ("obs", "final_obs"):
        value = getattr(res, name)
        if not isinstance(value, np.ndarray) or value.shape != (num_agents, *obs_shape):
            got = getattr(value, "shape", type(value).__name__)
            raise EnvError(f"env returned {name} of shape {got}, expected {(num_agents, *obs_shape)}")
        if value.dtype.kind not in "fiub":
            raise EnvError(f"env returned {name} of dtype {value.dtype}; expected a numeric dtype")
    for name in ("reward", "terminated", "truncated"):
        value = np.asarray(getattr(res, name))
        if value.shape != (num_agents,):
            raise EnvError(f"env returned {name} of shape {value.shape}, expected ({num_agents},)")
    for name, value in (("observation", res.obs), ("reward", res.reward)):
        value = np.asarray(value)
        if value.dtype.kind in "iub" or np.isfinite(value).all():  # the per-step case: one check, no row search
            continue
        bad = ~np.isfinite(value.reshape(num_agents, -1)).all(1)
        if bad.any():
            raise EnvError(
                f"non-finite {name} from the env at {where(int(np.flatnonzero(bad)[0]))}"
                f" ({int(bad.sum())} rows affected)"
            )
