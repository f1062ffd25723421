"""PPO loss pieces against direct formulas; masking equals dropping the padded steps."""

from __future__ import annotations

import torch

from carrystate.ppo import ppo_loss


def _inputs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(n, generator=g)  # noqa: E731
    return dict(
        new_logprobs=r() * 0.3 - 1,
        entropy=r().abs(),
        new_values=r(),
        old_logprobs=r() * 0.3 - 1,
        old_values=r(),
        advantages=r(),
        returns=r(),
    )


def test_loss_matches_direct_formula():
    x = _inputs()
    kw = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, clip_vloss=False, norm_adv=True)
    parts = ppo_loss(**x, **kw)
    ratio = (x["new_logprobs"] - x["old_logprobs"]).exp()
    adv = (x["advantages"] - x["advantages"].mean()) / (x["advantages"].std() + 1e-8)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    v = 0.5 * ((x["new_values"] - x["returns"]) ** 2).mean()
    torch.testing.assert_close(parts.policy_loss, pg)
    torch.testing.assert_close(parts.value_loss, v)
    torch.testing.assert_close(parts.loss, pg - 0.01 * x["entropy"].mean() + 0.5 * v)


def test_mask_equals_dropping_padded_steps():
    x = _inputs()
    mask = torch.rand(40, generator=torch.Generator().manual_seed(1)) < 0.7
    kw = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, clip_vloss=True, norm_adv=True)
    masked = ppo_loss(**x, **kw, mask=mask)
    dropped = ppo_loss(**{k: v[mask] for k, v in x.items()}, **kw)
    for name in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        torch.testing.assert_close(getattr(masked, name), getattr(dropped, name))
