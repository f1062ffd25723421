"""Built-in, batch-native memory tasks (numpy over all agents at once, no per-agent Python loop).

`TMaze`: passive T-maze. The cue (left or right) is visible only at the first step; the agent is then
carried along a corridor of `length` steps (drawn per episode from [length_min, length_max], so episodes
desynchronise) and at the junction chooses a turn: reward 1 for the cued side, 0 otherwise. A policy
without memory succeeds half the time.

`DelayedRecall`: a symbol out of `num_symbols` is shown at the first step, then `delay` blank steps, then a
query step at which the agent must name the symbol (reward 1 if right). Chance is 1 / num_symbols.

Both expose their full state through `state_dict`/`load_state_dict` so a run can resume exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from carrystate.envs.base import EpisodeTracker, StepResult, check_actions

if TYPE_CHECKING:
    from carrystate.config import EnvConfig


class _CueTask:
    """Shared mechanics: cue at t=0, blank steps, a decision step; autoreset in the same step."""

    num_cues: int
    obs_dim: int

    def __init__(self, num_envs: int, low: int, high: int, seed: int = 0):
        self.num_agents = num_envs
        self.low, self.high = low, high
        self.rng = np.random.default_rng(seed)
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (self.obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Discrete(self.num_cues)
        self.cue = np.zeros(num_envs, dtype=np.int64)  # [agents]
        self.length = np.zeros(num_envs, dtype=np.int64)  # [agents] blank steps this episode
        self.t = np.zeros(num_envs, dtype=np.int64)  # [agents] steps taken this episode
        self.tracker = EpisodeTracker(num_envs)

    def _new_episodes(self, rows: np.ndarray) -> None:
        self.cue[rows] = self.rng.integers(0, self.num_cues, size=rows.size)
        self.length[rows] = self.rng.integers(self.low, self.high + 1, size=rows.size)
        self.t[rows] = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._new_episodes(np.arange(self.num_agents))
        self.tracker = EpisodeTracker(self.num_agents)
        return self._observe()

    def _observe(self) -> np.ndarray:
        obs = np.zeros((self.num_agents, self.obs_dim), dtype=np.float32)  # [agents, obs_dim]
        first = self.t == 0
        obs[first, self.cue[first]] = 1.0
        decide = self.t == self.length + 1  # t=0 cue, t=1..length blank, t=length+1 decision
        obs[(self.t >= 1) & (self.t <= self.length), self.num_cues] = 1.0  # corridor / blank
        # after the decision (t = length + 2) the observation is all zeros: the terminal state
        obs[decide, self.num_cues + 1] = 1.0  # junction / query
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        actions = check_actions(actions, self.single_action_space, self.num_agents)
        at_decision = self.t == self.length + 1
        reward = np.where(at_decision & (actions == self.cue), 1.0, 0.0).astype(np.float32)
        terminated = at_decision.copy()
        truncated = np.zeros(self.num_agents, dtype=bool)
        self.t += 1
        final_obs = self._observe()
        returns, lengths = self.tracker.update(reward, terminated)
        success = reward[terminated].tolist()
        ended = np.flatnonzero(terminated)
        if ended.size:
            self._new_episodes(ended)
        return StepResult(self._observe(), reward, terminated, truncated, final_obs, returns, lengths, success)

    def close(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {
            "cue": self.cue.copy(),
            "length": self.length.copy(),
            "t": self.t.copy(),
            "returns": self.tracker.returns.copy(),
            "lengths": self.tracker.lengths.copy(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.cue[:], self.length[:], self.t[:] = state["cue"], state["length"], state["t"]
        self.tracker.returns[:], self.tracker.lengths[:] = state["returns"], state["lengths"]
        self.rng.bit_generator.state = state["rng"]


class TMaze(_CueTask):
    """Passive T-maze: obs = [cue_left, cue_right, corridor, junction]; actions 0=left, 1=right."""

    num_cues = 2
    obs_dim = 4

    def __init__(self, num_envs: int, length_min: int = 8, length_max: int = 24, seed: int = 0):
        super().__init__(num_envs, length_min, length_max, seed)


class DelayedRecall(_CueTask):
    """Delayed recall: obs = [one-hot symbol (num_symbols), blank, query]; action = the symbol."""

    def __init__(self, num_envs: int, num_symbols: int = 4, delay_min: int = 4, delay_max: int = 16, seed: int = 0):
        self.num_cues = num_symbols
        self.obs_dim = num_symbols + 2
        super().__init__(num_envs, delay_min, delay_max, seed)


def build_tmaze(cfg: EnvConfig, num_envs: int, seed: int) -> TMaze:
    """The registry's builder of env.name=tmaze."""
    return TMaze(num_envs, cfg.tmaze.length_min, cfg.tmaze.length_max, seed=seed)


def build_recall(cfg: EnvConfig, num_envs: int, seed: int) -> DelayedRecall:
    """The registry's builder of env.name=recall."""
    r = cfg.recall
    return DelayedRecall(num_envs, r.num_symbols, r.delay_min, r.delay_max, seed=seed)
