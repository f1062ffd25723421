"""The policy network: observation encoder → recurrent core → actor head and critic.

It holds weights only; the per-agent recurrent state lives in `StateStore` and is passed in and out.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from carrystate.config import PolicyConfig
from carrystate.policy.core import RecurrentCore, State, mask_state
from carrystate.policy.heads import make_head


class MLPEncoder(nn.Module):
    """Flat vector observations → features [..., out_size]."""

    def __init__(self, obs_shape: tuple[int, ...], sizes: list[int]):
        super().__init__()
        layers, width = [], int(np.prod(obs_shape))
        self.obs_ndim = len(obs_shape)
        for size in sizes:
            linear = nn.Linear(width, size)
            nn.init.orthogonal_(linear.weight, np.sqrt(2))
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers)
        self.out_size = width

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.flatten(-self.obs_ndim).float())


ENCODERS = {"mlp": MLPEncoder}


class Policy(nn.Module):
    def __init__(self, cfg: PolicyConfig, obs_space: gym.Space, action_space: gym.Space):
        super().__init__()
        self.encoder = ENCODERS[cfg.encoder](obs_space.shape, cfg.encoder_sizes)
        self.core = RecurrentCore(cfg.core, self.encoder.out_size, cfg.hidden_size, cfg.num_layers, cfg.sequence_impl)
        self.actor = make_head(cfg.hidden_size, action_space)
        self.critic = nn.Linear(cfg.hidden_size, 1)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return self.core.initial_state(batch, device)

    def step(self, obs: Tensor, state: State, reset: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [batch, *obs_shape], reset [batch] → action params [batch, P], value [batch], new state."""
        y, state = self.core.step(self.encoder(obs), state, reset)
        return self.actor(y), self.critic(y).squeeze(-1), state

    def sequence(self, obs: Tensor, state: State, resets: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [batch, T, *obs_shape], resets [batch, T] → params [batch, T, P], values [batch, T], end state."""
        y, state = self.core.sequence(self.encoder(obs), state, resets)
        return self.actor(y), self.critic(y).squeeze(-1), state


__all__ = ["Policy", "RecurrentCore", "State", "mask_state", "ENCODERS"]
