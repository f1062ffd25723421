"""Gymnasium adapter: any registered id as a `VecEnv`, in gymnasium 1.x same-step autoreset mode.

Same-step autoreset means the step that ends an episode already returns the next episode's first
observation, with the final observation in `info["final_obs"]`: no action is wasted on a reset step and
the final observation reaches the truncation bootstrap.

Observations that are not a Box (Dict, Tuple, Discrete, ...; MiniGrid's {image, direction, mission}) are
flattened into one float32 vector by `FlatObservation`, applied after the configured wrappers; image Boxes stay
images, and the MLP encoder reads them flattened.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from carrystate.config import ConfigError
from carrystate.envs.base import EpisodeTracker, StepResult, check_actions
from carrystate.envs.custom import import_module, make_wrappers

# Observation entries that are positions (not velocities) in well-known environments.
VELOCITY_FREE_INDICES: dict[str, list[int]] = {
    "CartPole-v0": [0, 2],
    "CartPole-v1": [0, 2],
    "Pendulum-v1": [0, 1],
    "MountainCar-v0": [0],
    "MountainCarContinuous-v0": [0],
    "Acrobot-v1": [0, 1, 2, 3],
    "LunarLander-v3": [0, 1, 4, 6, 7],
    "LunarLanderContinuous-v3": [0, 1, 4, 6, 7],
}


class HideVelocity(gym.ObservationWrapper):
    """Keep only the position entries of the observation: velocities must then be inferred from memory."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        if env_id not in VELOCITY_FREE_INDICES:
            raise ConfigError(
                f"env.gymnasium.hide_velocity is not defined for {env_id!r}; "
                f"known ids: {', '.join(sorted(VELOCITY_FREE_INDICES))}"
            )
        self.keep = np.array(VELOCITY_FREE_INDICES[env_id])
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation):
        return observation[self.keep]


def registered_id(env_id: str) -> str:
    """The registry name of `env_id` (`EnvId`, or `module:EnvId`, whose module is imported first so that it can
    register `EnvId`, as gymnasium.make does), or a ConfigError naming the module or the id that failed."""
    module, sep, name = env_id.rpartition(":")
    if sep:
        import_module(module, env_id, "env.gymnasium.id")
    if name not in gym.registry:
        close = [k for k in gym.registry if name.split("-")[0].lower() in k.lower()][:5]
        raise ConfigError(
            f"env.gymnasium.id={env_id!r}: {name!r} is not a registered gymnasium id"
            + (f" (after importing {module!r})" if sep else "")
            + (f"; did you mean one of {close}?" if close else "")
        )
    return name


def _flattens(space: gym.Space) -> bool:
    """Whether gymnasium can flatten `space` into numbers that mean something to a policy (text cannot)."""
    if isinstance(space, gym.spaces.Text):
        return False
    try:
        gym.spaces.flatdim(space)
    except NotImplementedError:
        return False
    return True


class FlatObservation(gym.ObservationWrapper):
    """A Dict, Tuple, Discrete, MultiDiscrete or MultiBinary observation as one flat Box (gymnasium's flatten:
    Box entries as they are, discrete ones one-hot), so that the MLP encoder reads it. Entries of a Dict that
    carry no numbers (text, such as MiniGrid's `mission`) are dropped; they are listed in `dropped`."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.dropped: list[str] = []
        if isinstance(space, gym.spaces.Dict):
            self.dropped = [k for k, sub in space.spaces.items() if not _flattens(sub)]
            space = gym.spaces.Dict({k: sub for k, sub in space.spaces.items() if k not in self.dropped})
            if not space.spaces:
                raise ConfigError(
                    f"env.gymnasium.id: Dict observations whose entries ({', '.join(self.dropped)}) hold no numbers "
                    "cannot be flattened for the policy; add a wrapper (env.gymnasium.wrappers) that makes a Box"
                )
        elif not _flattens(space):
            raise ConfigError(
                f"env.gymnasium.id: observations of {space} cannot be flattened for the policy; add a wrapper "
                "(env.gymnasium.wrappers) that makes a Box"
            )
        self.kept = space
        flat = gym.spaces.flatten_space(space)
        low, high = flat.low.astype(np.float32), flat.high.astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, flat.shape, np.float32)

    def observation(self, observation):
        if self.dropped:
            observation = {k: v for k, v in observation.items() if k not in self.dropped}
        return gym.spaces.flatten(self.kept, observation).astype(np.float32, copy=False)


class GymVecEnv:
    """`num_envs` copies of a gymnasium env as one batch of single-agent rows."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        hide_velocity: bool = False,
        vectorization: str = "sync",
        seed: int = 0,
        kwargs: dict[str, Any] | None = None,
        wrappers: list = (),
    ):
        name = registered_id(env_id)
        chain = [lambda e: HideVelocity(e, name)] if hide_velocity else []
        chain += make_wrappers(list(wrappers))  # each called with the env alone, in the configured order
        self.env = self._make(env_id, num_envs, vectorization, chain, kwargs)
        if not isinstance(self.env.single_observation_space, gym.spaces.Box):  # Dict, Tuple, Discrete, ...
            self.env.close()
            self.env = self._make(env_id, num_envs, vectorization, [*chain, FlatObservation], kwargs)
        self.num_agents = num_envs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.seed = seed
        self.tracker = EpisodeTracker(num_envs)
        self._obs_shape = (num_envs, *self.single_observation_space.shape)

    @staticmethod
    def _make(env_id: str, num_envs: int, vectorization: str, wrappers: list, kwargs: dict | None):
        return gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode=vectorization,
            wrappers=wrappers,
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **(kwargs or {}),
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self.tracker = EpisodeTracker(self.num_agents)
        return self._check_obs(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = check_actions(actions, self.single_action_space, self.num_agents)
        try:
            obs, reward, terminated, truncated, info = self.env.step(actions)
        except Exception as err:  # name the env and step that failed, keep the original traceback
            raise RuntimeError(
                f"gymnasium env {self.env.spec.id if self.env.spec else ''} raised in step: {err}"
            ) from err
        obs = self._check_obs(obs)
        reward = np.asarray(reward, dtype=np.float32)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        final_obs = obs.copy()
        if "_final_obs" in info:
            for row in np.flatnonzero(info["_final_obs"]):
                final_obs[row] = info["final_obs"][row]
        returns, lengths = self.tracker.update(reward, terminated | truncated)
        return StepResult(obs, reward, terminated, truncated, final_obs, returns, lengths)

    def _check_obs(self, obs) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.shape != self._obs_shape:
            raise ValueError(f"env returned observations of shape {obs.shape}, expected {self._obs_shape}")
        return obs.astype(np.float32, copy=False)

    def close(self) -> None:
        self.env.close()
