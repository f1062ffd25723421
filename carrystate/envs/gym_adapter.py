"""Gymnasium adapter: any registered id as a `VecEnv`, in gymnasium 1.x same-step autoreset mode.

Same-step autoreset means the step that ends an episode already returns the next episode's first
observation, with the final observation in `info["final_obs"]`: no action is wasted on a reset step and
the final observation reaches the truncation bootstrap.

Observations that are not a Box (Dict, Tuple, Discrete, ...; MiniGrid's {image, direction, mission}) are packed
into one byte record per step by `PackedObservation` (structured.py), applied after the configured wrappers:
each entry keeps its dtype, and the policy gives each its own encoder. Box observations keep an integer dtype
(uint8 images stay uint8); float ones become float32.

Video (video.py): an evaluation that films makes the copies with `render_mode="rgb_array"` in a synchronous batch
(`rgb_array_settings`) and wraps copy 0 in `FilmedCopy`, which renders inside the copy, before the batch's
autoreset replaces an ended episode (`GymVecEnv.record_frames`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from carrystate.config import ConfigError
from carrystate.envs.base import EpisodeTracker, StepResult, check_actions, obs_dtype
from carrystate.envs.custom import make_wrappers
from carrystate.registry import import_module
from carrystate.structured import PackedObservation

if TYPE_CHECKING:
    from carrystate.config import EnvConfig, GymConfig
    from carrystate.video import EpisodeFrames

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


def render_modes(env_id: str) -> list[str]:
    """The render modes the env class of `env_id` declares (its metadata, as gymnasium.make reads them), without
    building one."""
    from gymnasium.envs.registration import load_env_creator

    spec = gym.spec(registered_id(env_id))
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    return list((getattr(creator, "metadata", None) or {}).get("render_modes") or [])


def rgb_array_settings(g: GymConfig) -> GymConfig:
    """`g` for an evaluation that films: the copies made with render_mode="rgb_array" and stepped in this process
    (vectorization=sync; envs.render_config). A ConfigError names the id where its env declares no rgb_array
    rendering."""
    modes = render_modes(g.id)
    if "rgb_array" not in modes:
        from carrystate.video import NEEDS

        raise ConfigError(
            f"{NEEDS}; env.gymnasium.id={g.id!r} declares render modes {modes or 'none'} (metadata['render_modes'])"
        )
    return g.model_copy(update={"kwargs": {**g.kwargs, "render_mode": "rgb_array"}, "vectorization": "sync"})


class FilmedCopy(gym.Wrapper):
    """One copy whose frames go into `frames` (video.EpisodeFrames): after its reset and after each step, rendered
    before the vector env's same-step autoreset, so an episode's last frame shows where it ended."""

    def __init__(self, env: gym.Env, frames: EpisodeFrames):
        super().__init__(env)
        self.frames = frames

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames.begin(self.env.render)
        return out

    def step(self, action):
        out = self.env.step(action)
        self.frames.step(self.env.render, bool(out[2] or out[3]))
        return out


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
        success_above: float | None = None,
    ):
        name = registered_id(env_id)
        self.name = f"env.gymnasium.id={env_id}"  # how errors name this env (`base.env_label`)
        chain = [lambda e: HideVelocity(e, name)] if hide_velocity else []
        chain += make_wrappers(list(wrappers))  # each called with the env alone, in the configured order
        self.env = self._make(env_id, num_envs, vectorization, chain, kwargs)
        if not isinstance(self.env.single_observation_space, gym.spaces.Box):  # Dict, Tuple, Discrete, ...
            self.env.close()
            self.env = self._make(env_id, num_envs, vectorization, [*chain, PackedObservation], kwargs)
        self.num_agents = num_envs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.seed = seed
        self.tracker = EpisodeTracker(num_envs)
        self._obs_shape = (num_envs, *self.single_observation_space.shape)
        self._obs_dtype = obs_dtype(self.single_observation_space)
        self.success_above = success_above

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
        success = [] if self.success_above is None else [float(r > self.success_above) for r in returns]
        return StepResult(obs, reward, terminated, truncated, final_obs, returns, lengths, success)

    def record_frames(self, frames: EpisodeFrames) -> None:
        """Film copy 0 into `frames` (`FilmedCopy`). Needs copies made with `rgb_array_settings`."""
        envs = getattr(self.env, "envs", None)  # a SyncVectorEnv's copies (an AsyncVectorEnv's live elsewhere)
        if envs is None or envs[0].render_mode != "rgb_array":
            raise ConfigError(
                f"--video: {self.name} was not made to render; it needs env.gymnasium.vectorization=sync and "
                "render_mode='rgb_array' (envs.make_env(..., render=True) sets both)"
            )
        frames.fps = float(envs[0].metadata.get("render_fps") or frames.fps)
        frames.source = self.name
        envs[0] = FilmedCopy(envs[0], frames)

    def _check_obs(self, obs) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.shape != self._obs_shape:
            raise ValueError(f"env returned observations of shape {obs.shape}, expected {self._obs_shape}")
        return obs.astype(self._obs_dtype, copy=False)

    def close(self) -> None:
        self.env.close()


def build(cfg: EnvConfig, num_envs: int, seed: int) -> GymVecEnv:
    """The registry's builder of env.name=gymnasium."""
    g = cfg.gymnasium
    return GymVecEnv(g.id, num_envs, g.hide_velocity, g.vectorization, seed, g.kwargs, g.wrappers, g.success_above)
