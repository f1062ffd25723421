"""POPGym adapter: any registered POPGym env (`popgym.envs.ALL`) by name, as a batch of single-agent rows.

Observation of a row: the env's observation flattened to float32 (Discrete and MultiDiscrete parts become
one-hots, Box parts stay as they are), followed by the previous action the way POPGym's baselines feed it:
one-hot for Discrete, concatenated one-hots for MultiDiscrete, the values for Box. At an episode's first step
the previous-action part is all zeros. (POPGym's own wrappers send the null action 0 there plus an
"is first step" flag; an all-zero block carries the same information, since a real one-hot is never zero.)

The copies are stepped in a Python loop (each step costs microseconds); same-step autoreset as the
`VecEnv` contract says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from carrystate.config import ConfigError
from carrystate.envs.base import EnvError, EpisodeTracker, StepResult, check_actions

if TYPE_CHECKING:
    from carrystate.config import EnvConfig


def popgym_registry() -> dict[str, type]:
    """Every registered POPGym env class, under its class name and under its gymnasium id."""
    try:
        import popgym.envs
    except ImportError as err:
        raise ConfigError(f"env.name=popgym needs the popgym package (pip install popgym): {err}") from err
    names: dict[str, type] = {}
    for cls, info in popgym.envs.ALL.items():
        names[cls.__name__] = cls
        names[info["id"]] = cls
    return names


def action_encoding_size(space: gym.Space) -> int:
    """Entries the previous action takes in the observation."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"POPGym action space {space} is not supported (Discrete, MultiDiscrete or Box)")


def encode_actions(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """actions [rows, *action_shape] → [rows, action_encoding_size] float32 (one-hot for discrete parts)."""
    rows = actions.shape[0]
    out = np.zeros((rows, action_encoding_size(space)), np.float32)
    if isinstance(space, gym.spaces.Discrete):
        out[np.arange(rows), np.asarray(actions, np.int64) - space.start] = 1.0
    elif isinstance(space, gym.spaces.MultiDiscrete):
        offsets = np.concatenate([[0], np.cumsum(space.nvec.ravel())[:-1]])
        idx = np.asarray(actions, np.int64).reshape(rows, -1) + offsets  # [rows, parts]
        np.put_along_axis(out, idx, 1.0, axis=1)
    else:
        out[:] = np.asarray(actions, np.float32).reshape(rows, -1)
    return out


class PopGymVecEnv:
    """`num_envs` copies of one POPGym env; observation = flattened obs (+ previous action)."""

    def __init__(self, env_id: str, num_envs: int, previous_action: bool = True, seed: int = 0):
        registry = popgym_registry()
        if env_id not in registry:
            close = sorted({c.__name__ for k, c in registry.items() if env_id.lower()[:6] in k.lower()})[:6]
            raise ConfigError(
                f"env.popgym.id={env_id!r} is not a registered POPGym env"
                + (
                    f"; did you mean one of {close}?"
                    if close
                    else f"; known: {', '.join(sorted(c.__name__ for c in set(registry.values())))}"
                )
            )
        self.id = registry[env_id].__name__
        self.envs = [registry[env_id]() for _ in range(num_envs)]
        self.num_agents = num_envs
        self.previous_action = previous_action
        self._raw_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        obs_size = gym.spaces.utils.flatdim(self._raw_space)
        self.obs_size = obs_size
        extra = action_encoding_size(self.single_action_space) if previous_action else 0
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_size + extra,), np.float32)
        self.seed = seed
        self.tracker = EpisodeTracker(num_envs)
        self.obs = np.zeros((num_envs, obs_size + extra), np.float32)  # [agents, obs + previous action]

    def _flat(self, o) -> np.ndarray:
        return np.asarray(gym.spaces.utils.flatten(self._raw_space, o), np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        seed = self.seed if seed is None else seed
        self.obs[:] = 0.0
        for i, env in enumerate(self.envs):
            o, _ = env.reset(seed=seed + i)
            self.obs[i, : self.obs_size] = self._flat(o)
        self.tracker = EpisodeTracker(self.num_agents)
        return self.obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = check_actions(actions, self.single_action_space, self.num_agents)
        n = self.num_agents
        reward = np.zeros(n, np.float32)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        if self.previous_action:
            self.obs[:, self.obs_size :] = encode_actions(self.single_action_space, actions)
        discrete = isinstance(self.single_action_space, gym.spaces.Discrete)
        for i, env in enumerate(self.envs):
            try:
                o, r, term, trunc, _ = env.step(int(actions[i]) if discrete else actions[i])
            except Exception as err:
                raise EnvError(f"POPGym {self.id} copy {i} raised in step: {type(err).__name__}: {err}") from err
            self.obs[i, : self.obs_size] = self._flat(o)
            reward[i], terminated[i], truncated[i] = r, term, trunc
        done = terminated | truncated
        final_obs = self.obs.copy()
        for i in np.flatnonzero(done):  # same-step autoreset: first observation, previous action zeroed
            o, _ = self.envs[i].reset()
            self.obs[i] = 0.0
            self.obs[i, : self.obs_size] = self._flat(o)
        returns, lengths = self.tracker.update(reward, done)
        return StepResult(self.obs.copy(), reward, terminated, truncated, final_obs, returns, lengths)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def build(cfg: EnvConfig, num_envs: int, seed: int) -> PopGymVecEnv:
    """The registry's builder of env.name=popgym."""
    return PopGymVecEnv(cfg.popgym.id, num_envs, cfg.popgym.previous_action, seed=seed)
