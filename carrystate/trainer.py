"""The training loop: rollout → advantages → learner → log → checkpoint, one iteration visible at once."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carrystate import ppo
from carrystate.buffer import SegmentBuffer
from carrystate.checkpoint import load_checkpoint, save_checkpoint
from carrystate.config import Config, ConfigError, dump_config
from carrystate.envs import make_env
from carrystate.monitor import Monitor
from carrystate.optim import make_optimizer, set_lr_fraction
from carrystate.policy import Policy
from carrystate.rollout import Rollout
from carrystate.state import StateStore


@dataclass
class Summary:
    iterations: int
    global_step: int
    mean_return: float
    success_rate: float | None
    sps: float
    wall_time: float
    run_dir: Path | None
    checkpoint: Path | None

    def text(self) -> str:
        lines = [f"trained {self.global_step:,} agent-steps in {self.iterations} iterations, "
                 f"{self.wall_time:.0f}s ({self.sps:,.0f} SPS)",
                 f"final mean episode return (last 200 episodes): {self.mean_return:.3f}"]
        if self.success_rate is not None:
            lines.append(f"final success rate (last 200 episodes): {self.success_rate:.1%}")
        if self.run_dir is not None:
            lines.append(f"logs: {self.run_dir}  (tensorboard --logdir {self.run_dir.parent})")
        if self.checkpoint is not None:
            lines.append(f"checkpoint: {self.checkpoint}  (carrystate eval {self.checkpoint})")
        return "\n".join(lines)


def _action_layout(space) -> tuple[tuple[int, ...], torch.dtype]:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return (), torch.long
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (int(np.prod(space.shape)),), torch.long
    return tuple(space.shape), torch.float32


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path | str | None = None, quiet: bool = False):
        t = cfg.trainer
        self.cfg, self.device = cfg, torch.device(t.device)
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        torch.manual_seed(t.seed)
        self.env = make_env(cfg.env, seed=t.seed)
        if self.env.num_agents != cfg.env.num_agents:
            raise ConfigError(f"env has {self.env.num_agents} agents but the config assumed {cfg.env.num_agents}")
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = Policy(cfg.policy, obs_space, act_space).to(self.device)
        self.optimizer = make_optimizer(self.policy, t)
        core = self.policy.core
        self.store = StateStore(core.num_state_tensors, core.num_layers, core.hidden_size, self.device)
        self.rollout = Rollout(self.env, self.store, self.device, seed=t.seed)
        action_shape, action_dtype = _action_layout(act_space)
        self.buffer = SegmentBuffer(self.env.num_agents, t.batch_size, t.bptt_horizon, obs_space.shape,
                                    torch.float32, action_shape, action_dtype,
                                    self.policy.initial_state(1, self.device), self.device)
        self.sample_gen = torch.Generator(self.device).manual_seed(t.seed)  # action sampling
        self.shuffle_gen = torch.Generator().manual_seed(t.seed + 1)  # minibatch plans
        self.iteration, self.global_step = 0, 0
        self.num_iterations = -(-t.total_timesteps // t.batch_size)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.quiet = quiet
        self.last_checkpoint: Path | None = None

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> Summary:
        monitor = Monitor(self.run_dir / "tb" if self.run_dir else None, self.num_iterations * self.cfg.trainer.batch_size, self.quiet)
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        start, steps_at_start = time.perf_counter(), self.global_step
        while self.iteration < self.num_iterations:
            self.anneal_learning_rate()
            rollout_stats = self.rollout.collect(self.policy, self.buffer, self.sample_gen)
            self.compute_advantages()
            losses = self.learn()
            self.iteration += 1
            self.global_step += self.cfg.trainer.batch_size
            sps = (self.global_step - steps_at_start) / (time.perf_counter() - start)
            self.log(monitor, rollout_stats, losses, sps)
            if self.run_dir and (self.iteration % self.cfg.trainer.checkpoint_interval == 0
                                 or self.iteration == self.num_iterations):
                self.save()
        monitor.close()
        wall = time.perf_counter() - start
        returns, success = list(monitor.returns), list(monitor.success)
        summary = Summary(self.iteration, self.global_step, float(np.mean(returns)) if returns else float("nan"),
                          float(np.mean(success)) if success else None,
                          (self.global_step - steps_at_start) / max(wall, 1e-9), wall, self.run_dir, self.last_checkpoint)
        if self.run_dir:
            (self.run_dir / "summary.json").write_text(json.dumps(
                {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2))
        return summary

    # ---- phases ---------------------------------------------------------------------------------
    def anneal_learning_rate(self) -> None:
        if self.cfg.trainer.anneal_lr:
            set_lr_fraction(self.optimizer, 1.0 - self.iteration / self.num_iterations)

    def compute_advantages(self) -> None:
        b, t = self.buffer, self.cfg.trainer
        adv, ret = ppo.gae(b.timeline(b.rewards), b.timeline(b.values), b.timeline(b.terminated),
                           b.timeline(b.truncated), b.timeline(b.final_values), b.last_value, t.gamma, t.gae_lambda)
        b.timeline(b.advantages)[:] = adv
        b.timeline(b.returns)[:] = ret

    def learn(self) -> dict[str, float]:
        """`update_epochs` passes; each shuffles all segments into minibatches, one optimizer step each."""
        t, policy = self.cfg.trainer, self.policy
        mb_segments = t.minibatch_size // t.bptt_horizon
        totals: dict[str, list[float]] = {}
        for _epoch in range(t.update_epochs):
            for idx in self.buffer.minibatch_plan(mb_segments, self.shuffle_gen):
                mb = self.buffer.minibatch(idx)
                params, values, _ = policy.sequence(mb["obs"], mb["start_state"], mb["starts"])
                logprobs, entropy = policy.actor.log_prob_entropy(params, mb["actions"])
                parts = ppo.ppo_loss(logprobs, entropy, values, mb["logprobs"], mb["values"], mb["advantages"],
                                     mb["returns"], t.clip_coef, t.vf_coef, t.ent_coef, t.clip_vloss, t.norm_adv)
                self.optimizer.zero_grad()
                parts.loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), t.max_grad_norm)
                self.optimizer.step()
                for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
                    totals.setdefault(name, []).append(float(getattr(parts, name)))
            if t.target_kl is not None and np.mean(totals["approx_kl"][-len(idx):]) > t.target_kl:
                break
        out = {f"losses/{k}": float(np.mean(v)) for k, v in totals.items()}
        out["losses/explained_variance"] = ppo.explained_variance(self.buffer.values.flatten(), self.buffer.returns.flatten())
        return out

    def log(self, monitor: Monitor, rollout_stats, losses: dict[str, float], sps: float) -> None:
        monitor.returns.extend(rollout_stats.episode_returns)
        monitor.success.extend(rollout_stats.success)
        scalars = dict(losses)
        scalars["charts/SPS"] = sps
        scalars["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if rollout_stats.episode_returns:
            scalars["charts/episodic_return"] = float(np.mean(rollout_stats.episode_returns))
            scalars["charts/episodic_length"] = float(np.mean(rollout_stats.episode_lengths))
        if rollout_stats.success:
            scalars["charts/success_rate"] = float(np.mean(rollout_stats.success))
        monitor.scalars(self.global_step, scalars)
        monitor.progress(self.global_step, sps, losses)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self) -> Path:
        meta = {"global_step": self.global_step}
        self.last_checkpoint = save_checkpoint(self.run_dir, self.iteration, policy=self.policy,
                                               optimizer=self.optimizer, state=self.store.state_dict(),
                                               meta=meta, config=self.cfg)
        return self.last_checkpoint


def default_run_dir(cfg: Config) -> Path:
    name = cfg.trainer.run_name or (
        f"{cfg.env.name}-{cfg.policy.core}-s{cfg.trainer.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return Path(cfg.trainer.runs_dir) / name


def load_policy(path: Path | str, device: str = "cpu") -> tuple[Policy, Config]:
    """The policy of a checkpoint (folder or run folder) and the config it was trained with."""
    ckpt = load_checkpoint(Path(path))
    cfg = ckpt["config"]
    env = make_env(cfg.env, seed=cfg.trainer.seed)
    policy = Policy(cfg.policy, env.single_observation_space, env.single_action_space)
    env.close()
    policy.load_state_dict(ckpt["model"])
    return policy.to(device), cfg
