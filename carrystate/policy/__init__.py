"""The policy network: observation encoder → recurrent core → actor head and critic.

It holds weights only; the per-agent recurrent state lives in `StateStore` and is passed in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from carrystate.normalize import ObsNorm
from carrystate.policy.core import RecurrentCore
from carrystate.policy.heads import make_head
from carrystate.state import State, zero_state

if TYPE_CHECKING:  # config builds its unroll choices from policy.unroll, so policy does not import config
    from carrystate.config import PolicyConfig


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

    @classmethod
    def from_config(cls, obs_shape: tuple[int, ...], cfg: PolicyConfig) -> MLPEncoder:
        return cls(obs_shape, cfg.encoder_sizes)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.flatten(-self.obs_ndim).float())


class TokenEncoder(nn.Module):
    """Token-list observations [..., tokens, 3] → features [..., out_size].

    Each token is three bytes (location, feature id, value), as MettaGrid emits them; a token whose location
    byte is 255 is empty. A token's (location, feature) pair picks two rows of one table: a presence row, added
    as it is, and a value row, scaled by value / 255. A row's features are ReLU of the sum over its present
    tokens, then an MLP: a linear layer on the dense [location, feature] grid of presence and value, computed
    by one `nn.EmbeddingBag` call over the present tokens without building the grid. The sum does not depend
    on the order of the tokens or on how many empty tokens pad the list, and it keeps which feature is where.
    """

    EMPTY = 255
    LOCATIONS = 256  # the location byte

    def __init__(self, obs_shape: tuple[int, ...], embed_size: int, sizes: list[int], features: int = 64):
        super().__init__()
        if len(obs_shape) != 2 or obs_shape[1] != 3:
            raise ValueError(
                f"policy.encoder=token needs observations of shape [tokens, 3], got {tuple(obs_shape)}; "
                "use policy.encoder=mlp for flat observations"
            )
        self.features = features
        self.table = nn.EmbeddingBag(2 * self.LOCATIONS * features, embed_size, mode="sum")
        nn.init.normal_(self.table.weight, std=0.1)  # ~30 present tokens sum to features of order 1
        self.mlp = MLPEncoder((embed_size,), sizes)
        self.out_size = self.mlp.out_size

    @classmethod
    def from_config(cls, obs_shape: tuple[int, ...], cfg: PolicyConfig) -> TokenEncoder:
        return cls(obs_shape, cfg.token_embed_size, cfg.encoder_sizes, cfg.token_features)

    def forward(self, obs: Tensor) -> Tensor:
        # Only the present tokens enter the bag (MettaGrid fills ~30 of 200 slots); their order in `flat` is
        # row-major, so each row's entries are contiguous and `offsets` marks where each row's bag starts.
        lead, slots = obs.shape[:-2], obs.shape[-2]
        flat = obs.reshape(-1, 3)  # [rows * slots, 3]
        rows = flat.shape[0] // slots
        present = flat[:, 0] != self.EMPTY
        loc, feat, value = flat[present].long().unbind(1)
        if not feat.is_cuda and feat.numel() and int(feat.max()) >= self.features:  # (no device sync on CUDA)
            raise ValueError(
                f"a token has feature id {int(feat.max())}, but policy.token_features={self.features}: "
                "raise policy.token_features above the largest feature id the env emits"
            )
        cell = loc * self.features + feat
        index = torch.stack([cell, cell + self.LOCATIONS * self.features], 1).reshape(-1)
        weight = torch.stack([torch.ones_like(value, dtype=torch.float32), value.float() / 255.0], 1).reshape(-1)
        count = present.view(rows, slots).sum(1)
        offsets = 2 * (torch.cumsum(count, 0) - count)
        pooled = self.table(index, offsets, per_sample_weights=weight.to(self.table.weight.dtype))
        return self.mlp(torch.relu(pooled)).reshape(*lead, -1)


ENCODERS = {"mlp": MLPEncoder, "token": TokenEncoder}


class Policy(nn.Module):
    """Weights only: the per-agent state is passed in and out. With `critic=separate` the state tuple holds the
    actor core's tensors, then the critic core's."""

    def __init__(self, cfg: PolicyConfig, obs_space: gym.Space, action_space: gym.Space):
        super().__init__()
        shape = tuple(obs_space.shape)
        self.obs_norm = ObsNorm(shape, cfg.obs_clip) if cfg.normalizes_obs else None
        self.encoder = ENCODERS[cfg.encoder].from_config(shape, cfg)
        self.core = self._core(cfg, self.encoder.out_size)
        self.actor = make_head(cfg.hidden_size, action_space)
        self.critic_encoder = self.critic_core = None
        if cfg.critic == "separate":  # its own encoder and recurrent core, and so its own carried state
            self.critic_encoder = ENCODERS[cfg.encoder].from_config(shape, cfg)
            self.critic_core = self._core(cfg, self.critic_encoder.out_size)
        self.critic = nn.Linear(cfg.hidden_size, 1)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)
        cores = [c for c in (self.core, self.critic_core) if c is not None]
        self.num_state_tensors = sum(c.num_state_tensors for c in cores)
        self.num_layers, self.hidden_size = cfg.num_layers, cfg.hidden_size

    @staticmethod
    def _core(cfg: PolicyConfig, in_size: int) -> RecurrentCore:
        return RecurrentCore(cfg.core, in_size, cfg.hidden_size, cfg.num_layers, cfg.sequence_impl, cfg.forget_bias)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.num_state_tensors, self.num_layers, batch, self.hidden_size, device)

    def _normalize(self, obs: Tensor) -> Tensor:
        return obs if self.obs_norm is None else self.obs_norm(obs)

    @torch.no_grad()
    def update_obs_norm(self, obs: Tensor, valid: Tensor | None = None, dist=None) -> None:
        """Add observations obs [..., *obs_shape] (a finished rollout's; where `valid` [...] is true) to the
        running statistics (every rank's under torchrun); nothing, not even the selection, without obs_norm."""
        if self.obs_norm is not None:
            self.obs_norm.stats.update(obs if valid is None else obs[valid], dist)

    def step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """obs [batch, *obs_shape], state (zero where an episode starts) → action params [batch, P], value
        [batch], new state."""
        x, n = self._normalize(obs), self.core.num_state_tensors
        y, actor_state = self.core.step(self.encoder(x), state[:n])
        if self.critic_core is None:
            return self.actor(y), self.critic(y).squeeze(-1), actor_state
        z, critic_state = self.critic_core.step(self.critic_encoder(x), state[n:])
        return self.actor(y), self.critic(z).squeeze(-1), actor_state + critic_state

    def sequence(
        self, obs: Tensor, state: State, resets: Tensor, end_state: bool = True
    ) -> tuple[Tensor, Tensor, State]:
        """obs [batch, T, *obs_shape], resets [batch, T] → params [batch, T, P], values [batch, T], end state
        (() if `end_state` is false and the unroll can skip computing it)."""
        x, n = self._normalize(obs), self.core.num_state_tensors
        y, actor_state = self.core.sequence(self.encoder(x), state[:n], resets, end_state)
        if self.critic_core is None:
            return self.actor(y), self.critic(y).squeeze(-1), actor_state
        z, critic_state = self.critic_core.sequence(self.critic_encoder(x), state[n:], resets, end_state)
        return self.actor(y), self.critic(z).squeeze(-1), (actor_state + critic_state) if end_state else ()

    def chain(self, obs: Tensor, state: State, resets: Tensor) -> tuple[Tensor, Tensor]:
        """Consecutive segments with gradients flowing across their boundaries: obs [n, C, H, *obs_shape],
        resets [n, C, H], the state at the first segment's start → params [n, C, H, P], values [n, C, H].

        Each segment runs under activation checkpointing: the forward keeps only each segment's inputs and
        start state, and the backward recomputes one segment at a time, so activation memory stays that of one
        segment plus one state per segment, whatever C is."""
        params, values = [], []
        for j in range(obs.shape[1]):
            p, v, *state = checkpoint(self._segment, obs[:, j], resets[:, j], *state, use_reentrant=False)
            params.append(p)
            values.append(v)
        return torch.stack(params, 1), torch.stack(values, 1)

    def _segment(self, obs: Tensor, resets: Tensor, *state: Tensor):
        p, v, end = self.sequence(obs, tuple(state), resets)
        return (p, v, *end)


__all__ = ["Policy", "RecurrentCore", "ENCODERS", "MLPEncoder", "TokenEncoder"]
