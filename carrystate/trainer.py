"""The training loop: rollout → advantages → learner → log → checkpoint, one iteration visible at once."""

from __future__ import annotations

import copy
import json
from collections import deque
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carrystate import diagnostics, distributed, ppo, replay
from carrystate.buffer import SegmentBuffer
from carrystate.checkpoint import CheckpointError, config_differences, load_checkpoint, save_checkpoint
from carrystate.config import Config, ConfigError, check_layout, config_from_dict, dump_config, parse_override
from carrystate.envs import make_env
from carrystate.monitor import Monitor
from carrystate.learner import Learner
from carrystate.policy import Policy
from carrystate.rollout import Rollout
from carrystate.state import State, StateStore


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
    interrupted: str | None = None  # the signal's name when a signal stopped the run

    def text(self) -> str:
        lines = [f"stopped by {self.interrupted}: checkpoint written, resume with "
                 f"`carrystate train --resume {self.run_dir}`"] if self.interrupted else []
        lines += [f"trained {self.global_step:,} agent-steps in {self.iterations} iterations, "
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
        self.dist = distributed.setup(cfg)  # under torchrun: this rank among world_size; else rank 0 of 1
        self.run_cfg, cfg = cfg, distributed.rank_config(cfg, self.dist.world_size)  # the run's / this rank's
        t = cfg.trainer
        seed = t.seed + self.dist.rank  # each rank its own episodes, action samples and minibatch plans
        self.cfg, self.device = cfg, self.dist.device(t.device)
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        torch.manual_seed(seed)
        self.env = make_env(cfg.env, seed=seed)
        try:
            check_layout(t, self.env.num_agents)
        except ConfigError:
            self.env.close()
            raise
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        self.policy = Policy(cfg.policy, obs_space, act_space).to(self.device)
        self.dist.broadcast_parameters(self.policy)  # every rank starts from rank 0's weights
        core = self.policy.core
        self.store = StateStore(core.num_state_tensors, core.num_layers, core.hidden_size, self.device)
        self.rollout = Rollout(self.env, self.store, self.device, seed=seed)
        action_shape, action_dtype = _action_layout(act_space)
        self.buffer = SegmentBuffer(self.env.num_agents, t.batch_size, t.bptt_horizon, obs_space.shape,
                                    torch.float32, action_shape, action_dtype,
                                    self.policy.initial_state(1, self.device), self.device, burn_in=t.burn_in)
        self.learner = Learner(self.policy, self.buffer, t, self.dist, seed)
        self.diag_gen = torch.Generator().manual_seed(seed + 2)  # staleness samples
        self.sample_gen = torch.Generator(self.device).manual_seed(seed)  # action sampling
        self.iteration, self.global_step = 0, 0
        self.num_iterations = -(-t.total_timesteps // (t.batch_size * self.dist.world_size))
        self.run_dir = self.dist.broadcast_object(Path(run_dir) if run_dir is not None else None)  # rank 0's
        self.quiet = quiet or not self.dist.is_main
        self.last_checkpoint: Path | None = None
        self.stop_signal: str | None = None  # set by the first SIGINT/SIGTERM
        self._saved_signal: str | None = None  # stop_signal as the newest checkpoint recorded it
        self.returns: deque[float] = deque(maxlen=200)  # the last 200 episodes, for progress and summary
        self.success: deque[float] = deque(maxlen=200)
        self.history: list[dict[str, float]] = []  # every iteration's logged scalars, for experiments

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, stop_after: int | None = None) -> Summary:
        """Run iterations until the budget is spent (or `stop_after` iterations of this call, or a signal)."""
        main = self.dist.is_main  # rank 0 alone logs and writes the run folder
        monitor = Monitor(self.run_dir / "tb" if self.run_dir and main else None,
                          self.num_iterations * self.cfg.trainer.batch_size * self.dist.world_size, self.quiet)
        if self.run_dir and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(self.run_cfg))
        start, steps_at_start, first_iteration = time.perf_counter(), self.global_step, self.iteration
        stop = self.stop_requested
        with self.signals_stop_gracefully():
            while self.iteration < self.num_iterations and not stop():
                if stop_after is not None and self.iteration - first_iteration >= stop_after:
                    break
                self.learner.anneal(self.iteration / self.num_iterations)
                rollout_stats = self.rollout.collect(self.policy, self.buffer, self.sample_gen,
                                                     self.dist.every(32, stop))  # ranks agree every 32 steps
                self.dist.share_episodes(rollout_stats)
                losses, learn_started = {}, time.perf_counter()
                if not rollout_stats.interrupted:
                    self.learner.compute_advantages()
                    rollout_policy = copy.deepcopy(self.policy) if self.cfg.diagnostics.staleness_segments else None
                    losses = self.learner.learn(self.iteration + 1, stop)
                    losses["perf/learn_seconds"] = time.perf_counter() - learn_started
                    if rollout_policy is not None:
                        d = self.cfg.diagnostics
                        losses.update(diagnostics.staleness(rollout_policy, self.policy, self.buffer,
                                                            d.staleness_segments, d.staleness_window, self.diag_gen))
                self.iteration += 1
                self.global_step += rollout_stats.steps * self.env.num_agents * self.dist.world_size
                sps = (self.global_step - steps_at_start) / (time.perf_counter() - start)
                self.log(monitor, rollout_stats, losses, sps)
                if self.run_dir and (self.iteration % self.cfg.trainer.checkpoint_interval == 0
                                     or self.iteration == self.num_iterations or stop()
                                     or (stop_after is not None and self.iteration - first_iteration >= stop_after)):
                    self.save()
            # A signal that arrived while the last checkpoint was being written (after its meta was taken)
            # stopped the loop without a checkpoint that says so: write that iteration's again, marked.
            if self.run_dir and self.dist.any_rank(self.stop_signal is not None
                                                   and self._saved_signal != self.stop_signal):
                self.save()
        monitor.close()
        wall = time.perf_counter() - start
        returns, success = list(self.returns), list(self.success)
        summary = Summary(self.iteration, self.global_step, float(np.mean(returns)) if returns else float("nan"),
                          float(np.mean(success)) if success else None,
                          (self.global_step - steps_at_start) / max(wall, 1e-9), wall, self.run_dir, self.last_checkpoint,
                          self.stop_signal)
        if self.run_dir and main:
            (self.run_dir / "summary.json").write_text(json.dumps(
                {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2))
        return summary

    # ---- phases ---------------------------------------------------------------------------------
    def log(self, monitor: Monitor, rollout_stats, losses: dict[str, float], sps: float) -> None:
        self.returns.extend(rollout_stats.episode_returns)
        self.success.extend(rollout_stats.success)
        scalars = dict(losses)
        scalars["charts/SPS"] = sps
        scalars["perf/env_seconds"] = rollout_stats.env_seconds
        scalars["perf/policy_seconds"] = rollout_stats.seconds - rollout_stats.env_seconds
        scalars["charts/learning_rate"] = self.learner.optimizer.param_groups[0]["lr"]
        if not rollout_stats.interrupted:  # mean reward per present agent-step of this rollout
            valid = self.buffer.valid
            scalars["charts/reward_per_agent_step"] = float((self.buffer.rewards * valid).sum() / valid.sum().clamp(min=1))
        if rollout_stats.episode_returns:
            scalars["charts/episodic_return"] = float(np.mean(rollout_stats.episode_returns))
            scalars["charts/episodic_length"] = float(np.mean(rollout_stats.episode_lengths))
        if rollout_stats.success:
            scalars["charts/success_rate"] = float(np.mean(rollout_stats.success))
        self.history.append({"step": self.global_step, **scalars})
        if self.stop_signal is None:
            monitor.scalars(self.global_step, scalars)
        monitor.progress(self.global_step, sps, {**losses, **scalars}, self.returns, self.success)

    # ---- interruption ---------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """Whether a signal asked to stop; under torchrun all ranks agree (a signal to one stops all at the same
        step), so none waits in a collective that the others skipped."""
        if self.dist.any_rank(self.stop_signal is not None) and self.stop_signal is None:
            self.stop_signal = "a signal to another rank"
        return self.stop_signal is not None

    @contextmanager
    def signals_stop_gracefully(self):
        """First SIGINT/SIGTERM: finish the current optimizer (or env) step, checkpoint, stop. Second: stop
        at once (checkpoints are written atomically, so the last good one stays intact)."""
        def handler(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
            self.stop_signal = signal.Signals(signum).name
            if not self.quiet:
                print(f"\n{self.stop_signal}: finishing the current step and writing a checkpoint "
                      "(signal again to stop at once)", flush=True)

        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self) -> Path:
        """Checkpoint everything that the next iteration depends on."""
        tensors = {f"store.{k}": v for k, v in self.store.state_dict().items()}
        tensors["rng.sample"] = self.sample_gen.get_state()
        tensors["rng.shuffle"] = self.learner.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rollout.obs"] = torch.from_numpy(np.ascontiguousarray(self.rollout.obs))
        tensors["rollout.starts"] = torch.from_numpy(self.rollout.starts.copy())
        self._saved_signal = self.stop_signal
        meta = {"global_step": self.global_step, "interrupted": self.stop_signal,
                "recent_returns": list(self.returns), "recent_success": list(self.success),
                "env_state": None}
        if hasattr(self.env, "state_dict"):
            env_state = self.env.state_dict()
            tensors.update({f"env.{k}": torch.from_numpy(np.asarray(v)) for k, v in env_state.items()
                            if isinstance(v, np.ndarray)})
            meta["env_state"] = {k: v for k, v in env_state.items() if not isinstance(v, np.ndarray)}
        if self.dist.enabled:  # one checkpoint holds every rank's carried state (the weights are the same)
            states = self.dist.gather_to_main((tensors, meta), "gathering the ranks' state for a checkpoint")
            if self.dist.is_main:
                tensors, meta = distributed.merge_rank_states(states)
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(
                self.run_dir, self.iteration, model=self.policy.state_dict(), tensors=tensors,
                optimizer=self.learner.optimizer.state_dict(), meta=meta, config=self.run_cfg,
                keep=self.cfg.trainer.keep_checkpoints)
        self.dist.barrier("writing a checkpoint")  # no rank goes on (or resumes) before it is complete
        return self.last_checkpoint

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint exactly (built-in envs) or with fresh episodes (envs that cannot be saved)."""
        diffs = config_differences(ckpt["config"], self.run_cfg)
        if diffs:
            raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this run:\n  " + "\n  ".join(diffs))
        self.dist.check_agree("the checkpoint to resume from", ckpt["path"].name)
        tensors, meta = distributed.rank_view(ckpt["tensors"], ckpt["meta"], self.dist, ckpt["path"])
        self.policy.load_state_dict(ckpt["model"])
        self.learner.optimizer.load_state_dict(ckpt["optimizer"])
        self.store.load_state_dict({k[len("store."):]: v for k, v in tensors.items() if k.startswith("store.")})
        self.sample_gen.set_state(tensors["rng.sample"])
        self.learner.generator.set_state(tensors["rng.shuffle"])
        torch.set_rng_state(tensors["rng.torch"])
        self.iteration, self.global_step = meta["iteration"], meta["global_step"]
        self.returns.extend(meta["recent_returns"])
        self.success.extend(meta["recent_success"])
        if meta["env_state"] is not None and hasattr(self.env, "load_state_dict"):
            env_state = dict(meta["env_state"])
            env_state.update({k[len("env."):]: v.numpy() for k, v in tensors.items() if k.startswith("env.")})
            self.env.load_state_dict(env_state)
            self.rollout.obs = tensors["rollout.obs"].numpy().copy()
            self.rollout.starts = tensors["rollout.starts"].numpy().copy()
        else:
            self.rollout.new_episodes()
            self.resume_note = (f"{type(self.env).__name__} cannot save its state: the resumed run starts new "
                                "episodes everywhere, with zeroed recurrent state")
            warnings.warn(self.resume_note, stacklevel=2)
        self.last_checkpoint = ckpt["path"]

    @classmethod
    def resume(cls, run_dir: Path | str, overrides: list[str] = (), quiet: bool = False) -> "Trainer":
        """A trainer that continues the run in `run_dir` from its newest intact checkpoint. Overrides may
        change e.g. trainer.total_timesteps; changes to the network or the agents are refused."""
        ckpt = load_checkpoint(Path(run_dir))
        data = ckpt["config"].model_dump(mode="json")
        for item in overrides:
            path, value = parse_override(item)
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        cfg = config_from_dict(data)
        trainer = cls(cfg, run_dir=run_dir, quiet=quiet)
        trainer.restore(ckpt)
        return trainer


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
