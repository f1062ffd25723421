"""Test doubles for custom environments named by import path: a gymnasium env registered when this module is
imported (`tests.custom_envs:CarrystateCount-v0`), observation wrappers whose order shows, and factories that
return something that is not a VecEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CountEnv(gym.Env):
    """Observation [0.5] at reset, then [steps taken]; terminates after `length` steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 5):
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.5], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= self.length, False, {}


gym.register("CarrystateCount-v0", entry_point=CountEnv)


class TimesTen(gym.ObservationWrapper):
    def observation(self, observation):
        return observation * 10


class PlusOne(gym.ObservationWrapper):
    def observation(self, observation):
        return observation + 1


class DictObsEnv(gym.Env):
    """Dict observations {flag: Discrete(3), pos: Box(2), note: Text}: flag = steps % 3, pos = [steps, -steps] / 10;
    never ends by itself."""

    observation_space = gym.spaces.Dict(
        {"flag": gym.spaces.Discrete(3), "pos": gym.spaces.Box(-1, 1, (2,), np.float32), "note": gym.spaces.Text(8)}
    )
    action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return {"flag": self.t % 3, "pos": np.array([self.t, -self.t], np.float32) / 10, "note": "hi"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, {}


gym.register("CarrystateDictObs-v0", entry_point=DictObsEnv, max_episode_steps=20)


class NaNDictObsEnv(DictObsEnv):
    """DictObsEnv whose pos entry turns NaN at its third step."""

    def _obs(self):
        obs = super()._obs()
        if self.t == 3:
            obs["pos"][0] = np.nan
        return obs


gym.register("CarrystateNaNDictObs-v0", entry_point=NaNDictObsEnv, max_episode_steps=20)

NOT_A_CLASS = 3


def missing_step(num_envs: int, seed: int):
    """A factory whose result lacks step and single_action_space."""

    class Half:
        num_agents = num_envs
        single_observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def reset(self, seed=None):
            return np.zeros((num_envs, 2), np.float32)

        def close(self):
            pass

    return Half()
