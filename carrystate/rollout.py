"""One collection phase: the policy acts with frozen weights until the `SegmentBuffer` is full.

`Rollout` owns what must persist between phases besides the recurrent state: the env batch, its current
observation and which agents start an episode at that observation. The recurrent state itself lives in the
`StateStore` (slice key `slice_start`) and is carried into the next phase untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from carrystate.buffer import SegmentBuffer
from carrystate.envs.base import EnvError, VecEnv, check_step_result
from carrystate.policy import Policy
from carrystate.state import StateStore


@dataclass
class RolloutStats:
    steps: int = 0  # rollout steps taken (agent-steps = steps × agents)
    interrupted: bool = False
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)


class Rollout:
    def __init__(self, env: VecEnv, store: StateStore, device: torch.device | str = "cpu", slice_start: int = 0,
                 seed: int | None = None):
        self.env, self.store, self.slice_start = env, store, slice_start
        self.device = torch.device(device)
        if slice_start not in store.sizes:
            store.register(slice_start, env.num_agents)
        self.agents_per_env = getattr(env, "agents_per_env", 1)
        self.obs_shape = tuple(env.single_observation_space.shape)
        self.seed = seed
        self.new_episodes()
        space = env.single_action_space
        self._box = isinstance(space, gym.spaces.Box)
        self._low, self._high = (space.low, space.high) if self._box else (None, None)

    def new_episodes(self) -> None:
        """Reset the env batch and zero every agent's carried state (fresh episodes everywhere)."""
        self.obs = np.asarray(self.env.reset(seed=self.seed))  # [agents, *obs_shape]
        self.starts = np.ones(self.env.num_agents, dtype=bool)  # [agents] the current obs opens an episode
        self.valid = np.ones(self.env.num_agents, dtype=bool)  # [agents] the current obs is not padding
        if self.obs.shape != (self.env.num_agents, *self.obs_shape):
            raise EnvError(f"env.reset returned observations of shape {self.obs.shape}, "
                           f"expected {(self.env.num_agents, *self.obs_shape)}")
        self.store.reset(self.slice_start, torch.ones(self.env.num_agents, dtype=torch.bool))

    def _step_env(self, actions: np.ndarray):
        try:
            res = self.env.step(actions)
        except EnvError:
            raise
        except Exception as err:
            raise EnvError(f"{type(self.env).__name__}.step raised {type(err).__name__}: {err}") from err
        check_step_result(res, self.env.num_agents, self.obs_shape, self.agents_per_env)
        return res

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    def _env_actions(self, action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        return np.clip(a, self._low, self._high) if self._box else a

    @torch.no_grad()
    def collect(self, policy: Policy, buffer: SegmentBuffer, generator: torch.Generator,
                should_stop=lambda: False) -> RolloutStats:
        """Fill `buffer`; if `should_stop()` turns true, return early with `interrupted` set (the buffer is
        then incomplete and must not be trained on)."""
        stats = RolloutStats()
        key = self.slice_start
        for t in range(buffer.steps):
            if should_stop():
                stats.interrupted = True
                return stats
            obs, starts = self._tensor(self.obs), self._tensor(self.starts)
            state = self.store.get(key)  # already zero where starts: reset happened when the episode ended
            if t % buffer.horizon == 0:
                buffer.write_start_state(t, state)
            params, value, state = policy.step(obs, state, starts)
            action = policy.actor.sample(params, generator)
            logprob, _ = policy.actor.log_prob_entropy(params, action)
            res = self._step_env(self._env_actions(action))
            final_values = torch.zeros_like(value)
            if res.truncated.any():  # bootstrap a time-limit cut from the value of its final observation
                rows = self._tensor(np.flatnonzero(res.truncated))
                final_obs = self._tensor(res.final_obs)[rows]
                rows_state = tuple(s[:, rows] for s in state)
                _, v_final, _ = policy.step(final_obs, rows_state, torch.zeros_like(rows, dtype=torch.bool))
                final_values[rows] = v_final
            done = res.terminated | res.truncated
            self.store.set(key, state)
            self.store.reset(key, self._tensor(done))
            buffer.write(t, obs=obs, actions=action, logprobs=logprob, values=value, starts=starts,
                         valid=self._tensor(self.valid),
                         rewards=self._tensor(res.reward), terminated=self._tensor(res.terminated),
                         truncated=self._tensor(res.truncated), final_values=final_values)
            self.obs, self.starts = res.obs, done
            self.valid = np.ones(self.env.num_agents, dtype=bool) if res.valid is None else np.asarray(res.valid, bool)
            stats.episode_returns += res.episode_returns
            stats.episode_lengths += res.episode_lengths
            stats.success += res.success
            stats.steps += 1
        _, buffer.last_value[:], _ = policy.step(self._tensor(self.obs), self.store.get(key), self._tensor(self.starts))
        return stats


@torch.no_grad()
def evaluate(policy: Policy, env: VecEnv, episodes: int, deterministic: bool = False, seed: int = 0,
             device: torch.device | str = "cpu", max_steps: int = 1_000_000) -> RolloutStats:
    """Run the policy (weights frozen, state carried and reset exactly as in training) for `episodes`."""
    core = policy.core
    store = StateStore(core.num_state_tensors, core.num_layers, core.hidden_size, device)
    store.register(0, env.num_agents)
    generator = torch.Generator(device).manual_seed(seed)
    obs, starts = env.reset(seed=seed), np.ones(env.num_agents, dtype=bool)
    space = env.single_action_space
    stats = RolloutStats()
    for _ in range(max_steps):
        if len(stats.episode_returns) >= episodes:
            break
        params, _, state = policy.step(torch.as_tensor(obs, device=device), store.get(0),
                                       torch.as_tensor(starts, device=device))
        action = policy.actor.mode(params) if deterministic else policy.actor.sample(params, generator)
        a = action.cpu().numpy()
        if isinstance(space, gym.spaces.Box):
            a = np.clip(a, space.low, space.high)
        res = env.step(a)
        starts = res.terminated | res.truncated
        store.set(0, state)
        store.reset(0, torch.as_tensor(starts, device=device))
        obs = res.obs
        stats.episode_returns += res.episode_returns
        stats.episode_lengths += res.episode_lengths
        stats.success += res.success
    stats.episode_returns = stats.episode_returns[:episodes]
    stats.episode_lengths = stats.episode_lengths[:episodes]
    stats.success = stats.success[:episodes]
    return stats
