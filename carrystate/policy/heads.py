"""Action heads: the distribution of an action given core features, for Discrete, MultiDiscrete, Box.

Each head turns features into a flat parameter tensor (`forward`), samples from it with an explicit
torch.Generator (so runs are reproducible and resumable), and scores actions (`log_prob_entropy`). `act`
samples and scores in one go, the rollout's per-step call.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from carrystate import precision
from carrystate.policy.kernels import cpu


def orthogonal_linear(i: int, o: int, std: float) -> nn.Linear:
    """A linear layer (i → o: `precision.Linear`, an nn.Linear) with orthogonal weights of gain `std` and zero bias
    (the init of every linear layer here)."""
    layer = precision.Linear(i, o)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class CategoricalHead(nn.Module):
    """One or several independent categorical choices (Discrete is MultiDiscrete with one entry)."""

    def __init__(self, in_size: int, nvec: list[int], multi: bool):
        super().__init__()
        self.nvec, self.multi = list(nvec), multi
        self.linear = orthogonal_linear(in_size, sum(nvec), 0.01)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h)

    def frozen_call(self, bf16: bool):
        """`forward` without gradients in a `frozen` block: its layer's frozen call."""
        return self.linear.frozen_call(bf16)

    def _split(self, params: Tensor) -> list[Tensor]:
        return [torch.log_softmax(p, -1) for p in params.split(self.nvec, -1)]

    def act(self, params: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Sample actions and their log-probabilities. Gumbel-max: argmax(log p + Gumbel noise) is an exact
        sample of the categorical and cheaper than torch.multinomial at rollout batch sizes (BENCHMARKS.md).
        One choice of a [B, A] batch on the CPU takes the noise, argmax and pick in one C++ call."""
        uniform = torch.rand(params.shape, generator=generator, device=params.device)
        if len(self.nvec) == 1:  # one choice (Discrete): the loop below without its split and cat
            logp = torch.log_softmax(params, -1)
            if (picked := cpu.gumbel_max(logp, uniform)) is not None:
                a, logp_a = picked
                return (a.unsqueeze(-1) if self.multi else a), logp_a
            a = (logp - torch.log(-torch.log(uniform))).argmax(-1, keepdim=True)
            logp_a = logp.gather(-1, a).squeeze(-1)
            return (a if self.multi else a.squeeze(-1)), logp_a
        noise = -torch.log(-torch.log(uniform))
        picks, logp_sum = [], 0
        for logp, g in zip(self._split(params), noise.split(self.nvec, -1)):
            a = (logp + g).argmax(-1, keepdim=True)
            picks.append(a)
            logp_sum = logp_sum + logp.gather(-1, a).squeeze(-1)
        a = torch.cat(picks, -1)
        return (a if self.multi else a.squeeze(-1)), logp_sum

    def sample(self, params: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.act(params, generator)[0]

    def mode(self, params: Tensor) -> Tensor:
        a = torch.stack([p.argmax(-1) for p in params.split(self.nvec, -1)], -1)
        return a if self.multi else a.squeeze(-1)

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """KL(P ‖ Q) between the distributions that parameters p and q describe, summed over choices."""
        return sum((lp.exp() * (lp - lq)).sum(-1) for lp, lq in zip(self._split(p), self._split(q)))

    def log_prob_entropy(self, params: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        action = action.long() if self.multi else action.long().unsqueeze(-1)
        if len(self.nvec) == 1:  # one choice: the loop below without its split and running sums
            logp = torch.log_softmax(params, -1)
            return logp.gather(-1, action).squeeze(-1), -(logp.exp() * logp).sum(-1)
        logp_sum = torch.zeros(params.shape[:-1], device=params.device)
        ent_sum = torch.zeros_like(logp_sum)
        for i, logp in enumerate(self._split(params)):
            logp_sum = logp_sum + logp.gather(-1, action[..., i : i + 1]).squeeze(-1)
            ent_sum = ent_sum - (logp.exp() * logp).sum(-1)
        return logp_sum, ent_sum


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a learned, state-independent log standard deviation (actions unbounded;
    the trainer clips them to the Box only when sending them to the env)."""

    def __init__(self, in_size: int, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.dim = shape, int(np.prod(shape))
        self.mean = orthogonal_linear(in_size, self.dim, 0.01)
        self.log_std = nn.Parameter(torch.zeros(self.dim))

    def forward(self, h: Tensor) -> Tensor:
        mean = self.mean(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], -1)

    def sample(self, params: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, log_std = params.chunk(2, -1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return (mean + log_std.exp() * noise).view(*mean.shape[:-1], *self.shape)

    def act(self, params: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        action = self.sample(params, generator)
        return action, self.log_prob_entropy(params, action)[0]

    def mode(self, params: Tensor) -> Tensor:
        mean, _ = params.chunk(2, -1)
        return mean.view(*mean.shape[:-1], *self.shape)

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """KL(P ‖ Q) of two diagonal Gaussians given by their parameters."""
        mp, lp = p.chunk(2, -1)
        mq, lq = q.chunk(2, -1)
        return (lq - lp + ((2 * lp).exp() + (mp - mq) ** 2) / (2 * (2 * lq).exp()) - 0.5).sum(-1)

    def log_prob_entropy(self, params: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.chunk(2, -1)
        a = action.reshape(*mean.shape)
        z = (a - mean) / log_std.exp()
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)
        return logp, entropy


def make_head(in_size: int, space: gym.Space) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(in_size, [int(space.n)], multi=False)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return CategoricalHead(in_size, [int(n) for n in space.nvec.ravel()], multi=True)
    if isinstance(space, gym.spaces.Box):
        return GaussianHead(in_size, space.shape)
    raise ValueError(f"action space {space} is not supported (Discrete, MultiDiscrete or Box)")
