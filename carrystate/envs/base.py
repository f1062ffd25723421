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

from carrystate.errors import EnvError
from carrystate.structured import StructuredSpace


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


def obs_dtype(space: gym.Space) -> np.dtype:
    """The dtype observations of `space` travel and are stored in: an integer or bool Box's own (MettaGrid's uint8
    tokens, a `StructuredSpace`'s records), float32 for everything else."""
    if isinstance(space, gym.spaces.Box) and (np.issubdtype(space.dtype, np.integer) or space.dtype == np.bool_):
        return np.dtype(space.dtype)
    return np.dtype(np.float32)


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


def env_label(env) -> str:
    """How errors name an env batch: its class, with its config name where it carries one."""
    name = getattr(env, "name", None)
    return f"{type(env).__name__} ({name})" if isinstance(name, str) and name else type(env).__name__


def check_step_type(res, env: str) -> None:
    """Raise EnvError naming `env` where its step returned something other than a StepResult."""
    if isinstance(res, StepResult):
        return
    hint = (
        " (a gymnasium-style (obs, reward, terminated, truncated, info) tuple? gymnasium envs go through "
        "env.name=gymnasium, which wraps them)"
        if isinstance(res, tuple)
        else ""
    )
    raise EnvError(
        f"{env}: step returned a {type(res).__name__}{hint}; it must return a carrystate.envs.base.StepResult"
        "(obs, reward, terminated, truncated, final_obs, ...) with one row per agent"
    )


def check_finite(
    what: str,
    value: np.ndarray,
    env: str,
    agents_per_env: int = 1,
    first_row: int = 0,
    rows: np.ndarray | None = None,
    space: gym.Space | None = None,
) -> None:
    """Raise EnvError naming `env`, `what` (e.g. 'obs from step') and the first agent row where `value`
    [agents, ...] is not finite; only the rows where the mask `rows` is true are checked, if given. Records of a
    `StructuredSpace` `space` are checked entry by entry (their float entries), and the error names the entries of
    that row that are not finite."""
    value = np.asarray(value)
    if isinstance(space, StructuredSpace):
        bad = ~space.finite_rows(value)
    elif value.dtype.kind in "iub":
        return
    else:
        checked = value if rows is None else value[rows]
        if np.isfinite(checked).all():  # the per-step case: one check, no row search
            return
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(1)
    if rows is not None:
        bad &= rows
    if not bad.any():
        return
    index = int(np.flatnonzero(bad)[0])
    row = first_row + index
    entries = space.nonfinite_fields(value[index]) if isinstance(space, StructuredSpace) else []
    where = f" in {'entry' if len(entries) == 1 else 'entries'} {', '.join(map(repr, entries))}" if entries else ""
    raise EnvError(
        f"{env}: non-finite {what} at agent row {row} (env {row // agents_per_env}, agent {row % agents_per_env})"
        f"{where}; {int(bad.sum())} rows affected"
    )


def check_step_result(
    res: StepResult,
    num_agents: int,
    obs_shape: tuple[int, ...],
    agents_per_env: int = 1,
    env: str = "the env",
    first_row: int = 0,
    space: gym.Space | None = None,
) -> None:
    """Raise EnvError naming `env`, the field and the agent where a step's output breaks the contract: its type,
    every field's shape, numeric observations and rewards, and no NaN or infinity in what training reads (the
    observation, the reward, and the final observation of every episode that ended, a truncated one's bootstrap
    target). `first_row` is the batch's first row among all agents (a double-buffered lane's offset)."""
    check_step_type(res, env)
    for name in ("obs", "final_obs"):
        value = getattr(res, name)
        if not isinstance(value, np.ndarray) or value.shape != (num_agents, *obs_shape):
            got = getattr(value, "shape", type(value).__name__)
            raise EnvError(f"{env}: step returned {name} of shape {got}, expected {(num_agents, *obs_shape)}")
        if value.dtype.kind not in "fiub":
            raise EnvError(f"{env}: step returned {name} of dtype {value.dtype}; expected a numeric dtype")
    for name, kinds, expected in (
        ("reward", "fiub", "a numeric"),
        ("terminated", "bui", "a bool"),
        ("truncated", "bui", "a bool"),
    ):
        value = np.asarray(getattr(res, name))
        if value.shape != (num_agents,):
            raise EnvError(f"{env}: step returned {name} of shape {value.shape}, expected ({num_agents},)")
        if value.dtype.kind not in kinds:
            raise EnvError(f"{env}: step returned {name} of dtype {value.dtype}; expected {expected} dtype")
    if res.valid is not None and np.shape(res.valid) != (num_agents,):
        raise EnvError(f"{env}: step returned valid of shape {np.shape(res.valid)}, expected ({num_agents},)")
    where = {"env": env, "agents_per_env": agents_per_env, "first_row": first_row}
    check_finite("obs from step", res.obs, space=space, **where)
    check_finite("reward from step", res.reward, **where)
    ended = np.asarray(res.terminated, bool) | np.asarray(res.truncated, bool)
    if ended.any():
        check_finite(
            "final_obs from step (the last observation of an episode that ended there)",
            res.final_obs,
            rows=ended,
            space=space,
            **where,
        )
