"""PettingZoo adapter: copies of any `ParallelEnv` as one `VecEnv`, every possible agent a row.

Rows. Copy e's agent i (in `possible_agents` order) is row `e * agents_per_env + i`, for the whole run.

Agents that leave early. The step at which an agent's episode ends (terminated or truncated in the
PettingZoo dicts) is reported on its row like any episode end, with its last observation in `final_obs`.
From then until its copy resets, the row is padding: `valid` False, zero observation, zero reward, no
episode end. A copy resets (same-step autoreset, as the `VecEnv` contract says) at the step where its last
agent leaves; every row of the copy then holds its next episode's first observation with `valid` True. The
`Rollout` starts a row's episode (zeroing its state) both after an episode end and where a padding row
becomes valid again, so a dropped agent's state is fresh exactly when its next episode begins. Agents
absent from the start of an episode (not in `agents` after reset) are padding until the next reset.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from carrystate.config import ConfigError
from carrystate.envs.base import EnvError, EpisodeTracker, StepResult, check_actions
from carrystate.structured import StructuredSpace

if TYPE_CHECKING:
    from carrystate.config import EnvConfig


def resolve_factory(spec: str) -> Callable[..., Any]:
    """`module` (its `parallel_env`) or `module:callable` → the callable that builds a ParallelEnv."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"env.pettingzoo.env={spec!r}: cannot import {module_name!r} ({err}); "
            "is the package installed (e.g. pip install 'pettingzoo[butterfly]')?"
        ) from err
    factory = getattr(module, attr or "parallel_env", None)
    if not callable(factory):
        raise ConfigError(
            f"env.pettingzoo.env={spec!r}: {module_name} has no callable "
            f"{attr or 'parallel_env'!r}; name one as module:callable"
        )
    return factory


def _row_space(space: gym.Space) -> gym.spaces.Box:
    """The Box a row's observation of `space` becomes: a Box as a float32 Box of its shape; anything else (Dict,
    Tuple, Discrete, ...) packed into a `StructuredSpace` record, each entry in its own dtype."""
    if isinstance(space, gym.spaces.Box):
        return gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)
    return StructuredSpace(space)


class PettingZooVecEnv:
    """`num_envs` copies of a ParallelEnv (built by `factory()`), agents flattened into rows."""

    def __init__(self, factory: Callable[[], Any], num_envs: int, seed: int = 0, name: str = "pettingzoo"):
        self.name = name
        self.envs = [factory() for _ in range(num_envs)]
        first = self.envs[0]
        self.agent_names: list = list(first.possible_agents)
        if not self.agent_names:
            raise ValueError(f"env.pettingzoo.env={name!r} has no possible_agents")
        self.agents_per_env = len(self.agent_names)
        self.num_envs = num_envs
        self.num_agents = num_envs * self.agents_per_env
        obs_space, act_space = first.observation_space(self.agent_names[0]), first.action_space(self.agent_names[0])
        for agent in self.agent_names[1:]:
            if first.observation_space(agent) != obs_space or first.action_space(agent) != act_space:
                raise ValueError(
                    f"env.pettingzoo.env={name!r}: agent {agent!r} has spaces {first.observation_space(agent)}, "
                    f"{first.action_space(agent)} but {self.agent_names[0]!r} has {obs_space}, {act_space}; "
                    "one policy needs the same spaces for every agent"
                )
        self._raw_obs_space = obs_space
        self.single_observation_space = _row_space(obs_space)
        self.single_action_space = act_space
        self.index = {agent: i for i, agent in enumerate(self.agent_names)}
        self.seed = seed
        obs_shape = self.single_observation_space.shape
        self.obs = np.zeros((self.num_agents, *obs_shape), self.single_observation_space.dtype)  # [agents, *obs_shape]
        self.valid = np.zeros(self.num_agents, bool)  # [agents] the row's agent is in its episode
        self.tracker = EpisodeTracker(self.num_agents)

    def _encode(self, observation) -> np.ndarray:
        if isinstance(self._raw_obs_space, gym.spaces.Box):
            return np.asarray(observation, dtype=np.float32)
        return self.single_observation_space.pack(observation)

    def _rows(self, e: int) -> slice:
        return slice(e * self.agents_per_env, (e + 1) * self.agents_per_env)

    def _reset_copy(self, e: int, seed: int | None) -> None:
        observations, _ = self.envs[e].reset(seed=seed)
        rows = self._rows(e)
        self.obs[rows] = 0.0
        self.valid[rows] = False
        base = e * self.agents_per_env
        for agent, o in observations.items():
            self.obs[base + self.index[agent]] = self._encode(o)
            self.valid[base + self.index[agent]] = True
        if not self.valid[rows].any():
            raise EnvError(f"{self.name} copy {e} reset with no agents")

    def reset(self, seed: int | None = None) -> np.ndarray:
        seed = self.seed if seed is None else seed
        for e in range(self.num_envs):
            self._reset_copy(e, seed + e)
        self.tracker = EpisodeTracker(self.num_agents)
        return self.obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = check_actions(actions, self.single_action_space, self.num_agents)
        discrete = isinstance(self.single_action_space, gym.spaces.Discrete)
        n = self.num_agents
        reward = np.zeros(n, np.float32)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        acted = self.valid.copy()  # [agents] rows that take part in this step
        final_obs = np.zeros_like(self.obs)
        for e, env in enumerate(self.envs):
            base = e * self.agents_per_env
            live = [a for a in self.agent_names if self.valid[base + self.index[a]]]
            act = {a: (int(actions[base + self.index[a]]) if discrete else actions[base + self.index[a]]) for a in live}
            try:
                observations, rewards, terms, truncs, _ = env.step(act)
            except Exception as err:
                raise EnvError(f"{self.name} copy {e} raised in step: {type(err).__name__}: {err}") from err
            for a in live:
                row = base + self.index[a]
                reward[row] = rewards.get(a, 0.0)
                terminated[row], truncated[row] = bool(terms.get(a, False)), bool(truncs.get(a, False))
                if a in observations:
                    self.obs[row] = self._encode(observations[a])
                elif not (terminated[row] or truncated[row]):
                    raise EnvError(
                        f"{self.name} copy {e}: agent {a!r} (row {row}) got no observation "
                        "but neither terminated nor truncated"
                    )
                if terminated[row] or truncated[row]:
                    final_obs[row] = self.obs[row]
                    self.obs[row] = 0.0  # padding until the copy resets
                    self.valid[row] = False
            rows = self._rows(e)
            if not self.valid[rows].any() or not env.agents:  # the last agent left: same-step autoreset
                self._reset_copy(e, None)
        returns, lengths = self.tracker.update(reward, terminated | truncated, acted)
        return StepResult(
            self.obs.copy(), reward, terminated, truncated, final_obs, returns, lengths, valid=self.valid.copy()
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_pettingzoo(spec: str, kwargs: dict, num_envs: int, seed: int = 0) -> PettingZooVecEnv:
    factory = resolve_factory(spec)
    return PettingZooVecEnv(lambda: factory(**kwargs), num_envs, seed=seed, name=spec)


def build(cfg: EnvConfig, num_envs: int, seed: int):
    """The registry's builder of env.name=pettingzoo."""
    return make_pettingzoo(cfg.pettingzoo.env, cfg.pettingzoo.kwargs, num_envs, seed=seed)
