"""The policy network: observation encoder → core (the memory) → actor head and critic.

It holds weights only; the per-agent recurrent state lives in `StateStore` and is passed in and out.

The rollout plan. Inside a `precision.frozen` block (the rollout) without gradients, `step` runs a plan made once
per block: each part's `frozen_call`, a plain function over copies of its frozen weights that computes what its
module computes there, with the same kernels in the same order (so the same values, bit for bit: tests/
test_precision.py), and without the per-call work of the modules, autocast and the precision checks around them.
The MLP and token encoders, the LSTM core, the categorical head and `precision.Linear` have one; a policy
with any other part (a GRU, a separate critic, a user's core), or where the CPU kernels do not apply, runs its
modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from carrystate import precision
from carrystate.normalize import FieldNorm, ObsNorm
from carrystate.policy.cores import make_core
from carrystate.policy.encoders import make_encoder, module_key, vector_fields
from carrystate.policy.heads import make_head, orthogonal_linear
from carrystate.precision import autocast, to_fp32
from carrystate.state import Shapes, State, zero_state
from carrystate.structured import StructuredSpace

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


class Policy(nn.Module):
    """Weights only: the per-agent state is passed in and out. With `critic=separate` the state tuple holds the
    actor core's tensors, then the critic core's. `precision` (`trainer.precision`): `step` and `sequence` run
    their matrix products in bf16 under `carrystate.precision.autocast` and return fp32 outputs and states."""

    def __init__(self, cfg: PolicyConfig, obs_space: gym.Space, action_space: gym.Space, precision: str = "fp32"):
        super().__init__()
        self.precision = precision
        self.rollout_plan = True  # step runs the rollout plan where it can (false: the modules, to compare)
        # a StructuredSpace's records are unpacked into fields before normalisation and encoding
        self.structured = obs_space if isinstance(obs_space, StructuredSpace) else None
        self.obs_norm = self._obs_norm(cfg, obs_space)
        self.encoder = make_encoder(obs_space, cfg)
        self.core = make_core(cfg, self.encoder.out_size)
        self.actor = make_head(self.core.out_size, action_space)
        self.critic_encoder = self.critic_core = None
        if cfg.critic == "separate":  # its own encoder and recurrent core, and so its own carried state
            self.critic_encoder = make_encoder(obs_space, cfg)
            self.critic_core = make_core(cfg, self.critic_encoder.out_size)
        self.critic = orthogonal_linear((self.core if self.critic_core is None else self.critic_core).out_size, 1, 1.0)
        cores = [c for c in (self.core, self.critic_core) if c is not None]
        self.state_shapes: Shapes = sum((c.state_shapes for c in cores), ())  # the actor core's, then the critic's
        self.num_state_tensors = len(self.state_shapes)
        self.actor_state_tensors = len(self.core.state_shapes)  # the first entries of a state tuple

    @staticmethod
    def _obs_norm(cfg: PolicyConfig, space: gym.Space) -> ObsNorm | FieldNorm | None:
        if not cfg.normalizes_obs:
            return None
        if isinstance(space, StructuredSpace):  # the vector fields only: images and discrete values are not
            shapes = {module_key(f.name): f.shape for f in vector_fields(space)}
            return FieldNorm(shapes, cfg.obs_clip) if shapes else None
        return ObsNorm(tuple(space.shape), cfg.obs_clip)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.state_shapes, batch, device)

    def _fields(self, obs: Tensor) -> Tensor | dict[str, Tensor]:
        """obs as the normaliser and the encoder read it: records of a StructuredSpace unpacked into fields."""
        if self.structured is None:
            return obs
        return {module_key(name): value for name, value in self.structured.unpack(obs).items()}

    def _normalize(self, obs: Tensor) -> Tensor | dict[str, Tensor]:
        x = self._fields(obs)
        return x if self.obs_norm is None else self.obs_norm(x)

    @torch.no_grad()
    def update_obs_norm(self, obs: Tensor, valid: Tensor | None = None, dist=None) -> None:
        """Add observations obs [..., *obs_shape] (a finished rollout's; where `valid` [...] is true) to the
        running statistics (every rank's under torchrun); nothing, not even the selection, without obs_norm."""
        if self.obs_norm is not None:
            self.obs_norm.update(self._fields(obs if valid is None else obs[valid]), dist)

    def step(self, obs: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """obs [batch, *obs_shape], state (zero where an episode starts) → action params [batch, P], value
        [batch], new state. In a rollout, through its plan where the policy has one (the module docstring)."""
        if (plan := self._rollout_plan()) is not None:
            encode, core, actor, critic = plan
            y, state = core(encode(self._normalize(obs)), state)
            return self._fp32(actor(y), critic(y).squeeze(-1), state)
        x, n = self._normalize(obs), self.actor_state_tensors
        with autocast(self.precision, obs.device):
            y, actor_state = self.core.step(self.encoder(x), state[:n])
            if self.critic_core is None:
                return self._fp32(self.actor(y), self.critic(y).squeeze(-1), actor_state)
            z, critic_state = self.critic_core.step(self.critic_encoder(x), state[n:])
            return self._fp32(self.actor(y), self.critic(z).squeeze(-1), actor_state + critic_state)

    def sequence(
        self, obs: Tensor, state: State, resets: Tensor, end_state: bool = True
    ) -> tuple[Tensor, Tensor, State]:
        """obs [batch, T, *obs_shape], resets [batch, T] → params [batch, T, P], values [batch, T], end state
        (() if `end_state` is false and the unroll can skip computing it)."""
        x, n = self._normalize(obs), self.actor_state_tensors
        with autocast(self.precision, obs.device):
            y, actor_state = self.core.sequence(self.encoder(x), state[:n], resets, end_state)
            if self.critic_core is None:
                return self._fp32(self.actor(y), self.critic(y).squeeze(-1), actor_state)
            z, critic_state = self.critic_core.sequence(self.critic_encoder(x), state[n:], resets, end_state)
            end = (actor_state + critic_state) if end_state else ()
            return self._fp32(self.actor(y), self.critic(z).squeeze(-1), end)

    def _rollout_plan(self) -> tuple | None:
        """The plan of the `frozen` block running now (made on its first step), or None: outside one, with
        gradients, or where a part has no frozen call."""
        kept = precision.frozen_kept()
        if kept is None or not self.rollout_plan or torch.is_grad_enabled():
            return None
        key = ("plan", id(self))
        if key not in kept:
            kept[key] = self._make_plan()
        return kept[key]

    def _make_plan(self) -> tuple | None:
        if self.critic_core is not None:
            return None
        bf16 = self.precision == "bf16"
        parts = (self.encoder, self.core, self.actor, self.critic)
        calls = tuple(getattr(part, "frozen_call", lambda _: None)(bf16) for part in parts)
        return None if any(call is None for call in calls) else calls

    @staticmethod
    def _fp32(params: Tensor, values: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """What leaves the policy is fp32 (a no-op in fp32): a core of a user's own may return bf16 under bf16."""
        return to_fp32(params), to_fp32(values), tuple(to_fp32(s) for s in state)

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
