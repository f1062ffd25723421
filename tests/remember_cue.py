import gymnasium as gym
import numpy as np

from carrystate.envs.base import EpisodeTracker, StepResult


class RememberCue:
    """A cue (-1 or +1) shows at an episode's first step, then `delay` blank steps; at the last step (flagged in
    the observation) action 1 for +1 or 0 for -1 earns reward 1. Every row is one agent; all numpy."""

    def __init__(self, num_envs: int, seed: int, delay: int = 3):
        self.num_agents, self.delay, self.rng = num_envs, delay, np.random.default_rng(seed)
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)  # [cue, last step]
        self.single_action_space = gym.spaces.Discrete(2)

    def _obs(self) -> np.ndarray:  # [agents, 2]
        return np.stack([np.where(self.t == 0, self.cue, 0.0), self.t == self.delay], 1).astype(np.float32)

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.rng = np.random.default_rng(seed) if seed is not None else self.rng
        self.t, self.tracker = np.zeros(self.num_agents, int), EpisodeTracker(self.num_agents)
        self.cue = self.rng.choice([-1.0, 1.0], self.num_agents)
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        done = self.t == self.delay
        reward = (done & ((actions == 1) == (self.cue > 0))).astype(np.float32)
        final_obs = self._obs()  # the last observation of the episodes that end here
        self.t = np.where(done, 0, self.t + 1)
        self.cue = np.where(done, self.rng.choice([-1.0, 1.0], self.num_agents), self.cue)
        returns, lengths = self.tracker.update(reward, done)
        no_truncation = np.zeros(self.num_agents, bool)
        return StepResult(self._obs(), reward, done, no_truncation, final_obs, returns, lengths, success=returns)

    def close(self) -> None:
        pass
