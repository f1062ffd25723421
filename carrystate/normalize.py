"""Running normalisation: per-feature observation statistics (`ObsNorm`, part of the policy, so rollout,
replay and evaluation normalise identically and checkpoints carry it) and the running scale of the
discounted return that divides rewards (`ReturnScale`, part of the learner).

Both are updated from a finished rollout only, never inside an update: the rollout and the replay of its
segments see the same statistics, so replay still reproduces the rollout. Under torchrun every rank adds
every rank's data (sums of counts, values and squares), so the statistics stay identical across ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # the policy imports this module, and config imports the policy's unroll registry
    from carrystate.distributed import DistContext


class RunningMeanStd(nn.Module):
    """Mean and variance of everything seen so far (float64 buffers, merged batch by batch as in Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor, dist: DistContext | None = None) -> None:
        """Add the rows of `x` [n, *shape] (every rank's, when `dist` runs several)."""
        x = x.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        sums = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0).flatten(), (x * x).sum(0).flatten()])
        if dist is not None:
            sums = dist.sum(sums, "normalisation statistics")
        n, k = sums[0], self.mean.numel()
        if n == 0:
            return
        mean = sums[1 : 1 + k].view_as(self.mean) / n
        var = (sums[1 + k :].view_as(self.mean) / n - mean * mean).clamp(min=0.0)
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta * delta * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObsNorm(nn.Module):
    """obs → (obs − mean) / sqrt(var + eps), clipped to ±clip, in float32."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.stats = RunningMeanStd(shape)
        self.clip, self.eps = clip, eps

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.stats.mean.to(torch.float32)
        std = (self.stats.var + self.eps).sqrt().to(torch.float32)
        return ((obs.float() - mean) / std).clamp(-self.clip, self.clip)

    def update(self, obs: Tensor, dist: DistContext | None = None) -> None:
        """Add observations obs [n, *shape] to the statistics."""
        self.stats.update(obs, dist)


class FieldNorm(nn.Module):
    """`ObsNorm` for some fields of a structured observation ({name: tensor}; `shapes` names them), the others
    passed through as they are."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], clip: float = 10.0):
        super().__init__()
        self.norms = nn.ModuleDict({name: ObsNorm(shape, clip) for name, shape in shapes.items()})

    def forward(self, fields: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.norms[name](x) if name in self.norms else x for name, x in fields.items()}

    def update(self, fields: dict[str, Tensor], dist: DistContext | None = None) -> None:
        """Add the rows of each normalised field ({name: [n, *shape]}), in a fixed order (one sum per field)."""
        for name, norm in self.norms.items():
            norm.update(fields[name], dist)


class ReturnScale(nn.Module):
    """Rewards divided by the running standard deviation of the discounted return (as sb3's VecNormalize and
    CleanRL's wrappers do), clipped to ±clip. The discounted return runs on per agent across rollouts and
    restarts after every episode end."""

    def __init__(self, num_agents: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.stats = RunningMeanStd()
        self.register_buffer("running", torch.zeros(num_agents, dtype=torch.float64))  # [agents]
        self.gamma, self.clip, self.eps = gamma, clip, eps

    @torch.no_grad()
    def __call__(self, rewards: Tensor, done: Tensor, valid: Tensor, dist: DistContext | None = None) -> Tensor:
        """rewards, done (episode ended at that step), valid [agents, steps] → scaled rewards [agents, steps];
        first adds this rollout's discounted returns (at valid steps) to the statistics."""
        returns = torch.empty_like(rewards, dtype=torch.float64)  # [agents, steps]
        running = self.running.to(rewards.device)
        for t in range(rewards.shape[1]):
            running = running * self.gamma + rewards[:, t].double()
            returns[:, t] = running
            running = running * (~done[:, t]).double()
        self.running.copy_(running)
        self.stats.update(returns[valid], dist)
        scale = (self.stats.var + self.eps).sqrt().to(rewards.dtype)
        return (rewards / scale).clamp(-self.clip, self.clip)
