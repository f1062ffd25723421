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
