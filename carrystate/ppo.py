"""Advantages and PPO losses: pure functions on tensors, no loops over training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    final_values: Tensor,
    last_value: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over agents' timelines.

    All inputs are [agents, steps] except `last_value` [agents] (value of the observation after the last
    step). A terminated step does not bootstrap; a truncated step bootstraps from `final_values` (the value
    of its final observation); in both cases the advantage does not flow back across the episode end.
    Returns (advantages, returns), both [agents, steps].
    """
    steps = rewards.shape[1]
    done = terminated | truncated
    next_values = torch.cat([values[:, 1:], last_value[:, None]], 1)
    next_values = torch.where(done, torch.where(truncated, final_values, 0.0), next_values)
    deltas = rewards + gamma * next_values - values
    carry = (~done).float() * gamma * lam
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        running = deltas[:, t] + carry[:, t] * running
        advantages[:, t] = running
    return advantages, advantages + values


@dataclass
class LossParts:
    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clipfrac: Tensor


def ppo_loss(
    new_logprobs: Tensor,
    entropy: Tensor,
    new_values: Tensor,
    old_logprobs: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    clip_coef: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool,
    norm_adv: bool,
    mask: Tensor | None = None,
    adv_stats: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]] | None = None,
) -> LossParts:
    """Clipped surrogate + (optionally clipped) value loss − entropy bonus, over any matching shapes.
    `mask` (bool, same shape) keeps only the valid steps: every mean, and the advantage statistics, are
    taken over those alone. `adv_stats(advantages, mask) -> (mean, std)` replaces the minibatch's own
    advantage statistics (data-parallel training passes `DistContext.mean_std`: over all ranks' minibatches)."""
    if mask is not None and bool(mask.all()):
        mask = None
    if mask is None:
        mean = torch.mean
    else:
        weight = mask.float()
        count = weight.sum().clamp(min=1.0)

        def mean(x: Tensor) -> Tensor:
            return (x * weight).sum() / count

    logratio = new_logprobs - old_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = mean((ratio - 1) - logratio)
        clipfrac = mean(((ratio - 1.0).abs() > clip_coef).float())
    if norm_adv:
        if adv_stats is None:
            mu = mean(advantages)
            std = (mean((advantages - mu) ** 2) * _bessel(advantages, mask)).sqrt()
        else:
            mu, std = adv_stats(advantages, mask)
        advantages = (advantages - mu) / (std + 1e-8)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    policy_loss = mean(torch.max(pg1, pg2))
    if clip_vloss:
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
        value_loss = 0.5 * mean(torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2))
    else:
        value_loss = 0.5 * mean((new_values - returns) ** 2)
    ent = mean(entropy)
    loss = policy_loss - ent_coef * ent + vf_coef * value_loss
    return LossParts(loss, policy_loss.detach(), value_loss.detach(), ent.detach(), approx_kl, clipfrac)


def _bessel(x: Tensor, mask: Tensor | None) -> Tensor:
    """n / (n - 1) for the unbiased standard deviation over the (valid) entries."""
    n = torch.tensor(float(x.numel())) if mask is None else mask.sum().float()
    return n / (n - 1).clamp(min=1.0)


def explained_variance(pred: Tensor, target: Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)
