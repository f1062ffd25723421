"""The learner: advantages over each agent's timeline, then `update_epochs` passes that shuffle the segments
into minibatches; each minibatch is replayed (`replay`), scored by the PPO loss (`ppo`) and followed by one
optimizer step. Numerical checks stop a run at the first non-finite loss or gradient."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from carrystate import ppo, replay
from carrystate.buffer import SegmentBuffer
from carrystate.config import TrainerConfig
from carrystate.distributed import DistContext
from carrystate.errors import NumericalError
from carrystate.normalize import ReturnScale
from carrystate.optim import make_optimizer, set_lr_fraction
from carrystate.policy import Policy


class Learner:
    """Owns the optimizer and the minibatch shuffling; trains `policy` on what `buffer` holds."""

    def __init__(
        self, policy: Policy, buffer: SegmentBuffer, cfg: TrainerConfig, dist: DistContext, generator: torch.Generator
    ):
        self.policy, self.buffer, self.cfg, self.dist = policy, buffer, cfg, dist
        self.optimizer = make_optimizer(policy, cfg)
        self.generator = generator  # minibatch plans
        self.chain = cfg.chain_length(buffer.rows_per_agent)  # segments per gradient chain
        self.clip_coef, self.ent_coef = cfg.clip_coef, cfg.ent_coef  # as scheduled for this iteration
        self.return_scale = (
            ReturnScale(buffer.num_agents, cfg.gamma, cfg.reward_clip).to(buffer.rewards.device)
            if cfg.norm_reward
            else None
        )

    def anneal(self, fraction_done: float) -> None:
        """Set the schedules for this point of the run: the learning rate decays linearly to zero
        (trainer.anneal_lr), clip_coef and ent_coef move linearly to their `_final` values where set."""
        t = self.cfg
        if t.anneal_lr:
            set_lr_fraction(self.optimizer, 1.0 - fraction_done)
        if t.clip_coef_final is not None:
            self.clip_coef = t.clip_coef + (t.clip_coef_final - t.clip_coef) * fraction_done
        if t.ent_coef_final is not None:
            self.ent_coef = t.ent_coef + (t.ent_coef_final - t.ent_coef) * fraction_done

    def compute_advantages(self) -> None:
        """GAE over each agent's whole timeline of the buffer (continuous across segment ends), on rewards
        scaled by the running return scale when trainer.norm_reward is on (the buffer keeps the raw ones)."""
        b, t = self.buffer, self.cfg
        rewards = b.timeline(b.rewards)
        if self.return_scale is not None:
            done = b.timeline(b.terminated) | b.timeline(b.truncated)
            rewards = self.return_scale(rewards, done, b.timeline(b.valid), self.dist)
        adv, ret = ppo.gae(
            rewards,
            b.timeline(b.values),
            b.timeline(b.terminated),
            b.timeline(b.truncated),
            b.timeline(b.final_values),
            b.last_value,
            t.gamma,
            t.gae_lambda,
        )
        b.timeline(b.advantages)[:] = adv
        b.timeline(b.returns)[:] = ret

    def learn(self, iteration: int, should_stop=lambda: False) -> dict[str, float] | None:
        """`update_epochs` passes; each shuffles all segments into minibatches, one optimizer step each.
        `should_stop()` is asked before every optimizer step; once it turns true, the update is left unfinished
        and None is returned (`snapshot`/`rollback` undo what it did). `iteration` names the place in error
        messages."""
        t, policy, buffer = self.cfg, self.policy, self.buffer
        mb_segments = t.minibatch_size // t.bptt_horizon
        totals: dict[str, list[float]] = {}
        for epoch in range(t.update_epochs):
            start_states = replay.start_states(t.start_state, policy, buffer)
            plan = (
                buffer.minibatch_plan(mb_segments, self.generator)
                if self.chain == 1
                else buffer.chain_plan(self.chain, mb_segments, self.generator)
            )
            for m, idx in enumerate(plan):
                if should_stop():
                    return None
                mb = buffer.minibatch(idx.flatten())
                params, values = replay.replay(policy, buffer, idx, start_states, mb["obs"], mb["starts"])
                logprobs, entropy = policy.actor.log_prob_entropy(params, mb["actions"])
                parts = ppo.ppo_loss(
                    logprobs,
                    entropy,
                    values,
                    mb["logprobs"],
                    mb["values"],
                    mb["advantages"],
                    mb["returns"],
                    self.clip_coef,
                    t.vf_coef,
                    self.ent_coef,
                    t.clip_vloss,
                    t.norm_adv,
                    mask=mb["valid"],
                    adv_stats=self.dist.mean_std if self.dist.enabled else None,
                )
                self._step(parts, f"iteration {iteration}, epoch {epoch + 1}, minibatch {m + 1}")
                for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
                    totals.setdefault(name, []).append(float(getattr(parts, name)))
            if t.target_kl is not None and totals:  # the epoch's mean KL, agreed by all ranks
                if self.dist.mean(np.mean(totals["approx_kl"][-(m + 1) :])) > t.target_kl:
                    break
        out = {f"losses/{k}": float(np.mean(v)) for k, v in totals.items()}
        out["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if t.clip_coef_final is not None:
            out["charts/clip_coef"] = self.clip_coef
        if t.ent_coef_final is not None:
            out["charts/ent_coef"] = self.ent_coef
        out["losses/explained_variance"] = ppo.explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        return out

    def snapshot(self) -> dict:
        """Copies of everything an update changes: the weights, the optimizer state, the shuffling RNG, the
        return scale and torch's global RNG (one copy of the weights and of the optimizer state per update)."""
        return {
            "model": {k: v.clone() for k, v in self.policy.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "shuffle": self.generator.get_state(),
            "torch": torch.get_rng_state(),
            "return_scale": (
                None if self.return_scale is None else {k: v.clone() for k, v in self.return_scale.state_dict().items()}
            ),
        }

    @contextmanager
    def weights(self, model: dict[str, Tensor]):
        """The policy with `model`'s weights (a snapshot's) for the duration of the block: the tensors are swapped
        in and back, not copied; `model` holds its own tensors again afterwards."""
        live = {**dict(self.policy.named_parameters()), **dict(self.policy.named_buffers())}
        live = {name: live[name] for name in model}

        def swap():
            for name, t in live.items():
                t.data, model[name] = model[name], t.data

        swap()
        try:
            yield self.policy
        finally:
            swap()

    def rollback(self, snapshot: dict) -> None:
        """Back to the `snapshot` taken before an update that a stop cut short, bit for bit, so that the
        update can be done again from its start."""
        self.policy.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.generator.set_state(snapshot["shuffle"])
        torch.set_rng_state(snapshot["torch"])
        if self.return_scale is not None:
            self.return_scale.load_state_dict(snapshot["return_scale"])

    def _step(self, parts: ppo.LossParts, where: str) -> None:
        """One optimizer step on `parts.loss`, gradients averaged over ranks and clipped; a non-finite loss
        or gradient raises NumericalError naming `where` (and the parameters whose gradient is bad)."""
        policy = self.policy
        if not torch.isfinite(parts.loss):
            raise NumericalError(
                f"non-finite loss at {where}: policy {float(parts.policy_loss)}, "
                f"value {float(parts.value_loss)}, entropy {float(parts.entropy)}"
            )
        self.optimizer.zero_grad()
        parts.loss.backward()
        self.dist.average_gradients(policy.parameters())
        norm = nn.utils.clip_grad_norm_(policy.parameters(), self.cfg.max_grad_norm)
        if not torch.isfinite(norm):
            bad = [n for n, p in policy.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise NumericalError(f"non-finite gradient at {where} in {', '.join(bad)}")
        self.optimizer.step()
