"""A trained policy as an agent for your own loop: `initial_state()`, then `act(obs, state)` every step, with the
recurrent state in the caller's hands (what the training loop's `StateStore` does for it: carried from step to
step, zeroed when an episode ends).

    agent = carrystate.load("runs/<run>")
    state = agent.initial_state()              # one agent; initial_state(n) for a batch of n
    action, state = agent.act(obs, state)      # obs [*obs_shape] -> one action; [n, *obs_shape] -> n actions
    state = agent.reset(state, done)           # a batch: zero the rows whose episode ended ([n] bool)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from carrystate.config import Config
from carrystate.policy import Policy
from carrystate.state import State, mask_state
from carrystate.structured import StructuredSpace


class Agent:
    """`policy` (weights only) and `cfg` (the config it was trained with), acting on observations of
    `observation_space` with actions of `action_space`; `act` samples with its own seeded generator."""

    def __init__(
        self,
        policy: Policy,
        cfg: Config,
        observation_space: gym.Space,
        action_space: gym.Space,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.policy, self.cfg, self.device = policy.eval(), cfg, torch.device(device)
        self.observation_space, self.action_space = observation_space, action_space
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def initial_state(self, batch: int = 1) -> State:
        """The state at an episode's first step, for `batch` agents (zeros)."""
        return self.policy.initial_state(batch, self.device)

    @torch.no_grad()
    def act(self, obs, state: State, deterministic: bool = False) -> tuple[np.ndarray, State]:
        """One step: the action for `obs` (one observation, or a batch with a leading agent dimension) given the
        state before it, and the state after it. Sampled, or the most likely action when `deterministic`;
        Box actions are clipped to the space, as in training. For an env whose observations are a Dict (or Tuple, ...),
        `obs` is the env's own observation (one, or a batch with a leading agent dimension on every entry), packed
        here as the training env packs it."""
        if isinstance(self.observation_space, StructuredSpace) and not isinstance(obs, np.ndarray | torch.Tensor):
            obs = self.observation_space.pack_any(obs)
        obs = np.asarray(obs)
        single = obs.shape == tuple(self.observation_space.shape)
        batch = obs[None] if single else obs
        if batch.dtype.kind == "f":
            batch = batch.astype(np.float32, copy=False)
        params, _, state = self.policy.step(torch.as_tensor(batch, device=self.device), state)
        head = self.policy.actor
        action = head.mode(params) if deterministic else head.sample(params, self.generator)
        action = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return (action[0] if single else action), state

    def reset(self, state: State, done) -> State:
        """`state` with the rows of agents whose episode ended (`done` [batch] bool) zeroed."""
        return mask_state(state, torch.as_tensor(np.asarray(done, bool), device=self.device))

    def __iter__(self) -> Iterator:
        """Unpacks as `policy, cfg = carrystate.load(path)`, what load returned before it returned an Agent."""
        return iter((self.policy, self.cfg))


def load(path, device: torch.device | str = "cpu", seed: int = 0) -> Agent:
    """The agent of a checkpoint (a checkpoint folder, or a run folder for its newest intact checkpoint), after
    `checkpoint_checks.check` found the whole checkpoint sound (what a resume would refuse, this refuses too)."""
    from carrystate.checkpoint import load_checkpoint
    from carrystate.checkpoint_checks import check
    from carrystate.distributed import rank_config
    from carrystate.envs import make_env
    from carrystate.errors import CheckpointError

    ckpt = load_checkpoint(Path(path))
    cfg = ckpt["config"]
    world_size = ckpt["meta"].get("world_size", 1)
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise CheckpointError(
            f"checkpoint {ckpt['path']} is not usable: meta.json world_size is {world_size!r}, expected an integer >= 1"
        )
    env = make_env(rank_config(cfg, world_size).env, seed=cfg.trainer.seed)
    try:
        spaces = env.single_observation_space, env.single_action_space
        policy = Policy(cfg.policy, *spaces, precision=cfg.trainer.precision)
        check(ckpt, policy, env)
    finally:
        env.close()
    policy.load_state_dict(ckpt["model"])
    return Agent(policy.to(device), cfg, *spaces, seed=seed, device=device)
