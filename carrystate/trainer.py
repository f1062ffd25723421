"""The training loop: rollout → advantages → learner → diagnostics → log → checkpoint, one iteration visible
at once. The Trainer wires the parts together; each phase lives in its own module."""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch

from carrystate import diagnostics, distributed, run_state
from carrystate.buffer import SegmentBuffer
from carrystate.checkpoint import load_checkpoint, remove_unfinished, save_checkpoint
from carrystate.config import Config, ConfigError, apply_overrides, check_layout, config_from_dict, dump_config
from carrystate.envs import make_env
from carrystate.learner import Learner
from carrystate.monitor import Monitor, Summary, wandb_problem
from carrystate.policy import Policy, kernels
from carrystate.rollout import Rollout
from carrystate.signals import GracefulStop
from carrystate.state import StateStore


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path | str | None = None, quiet: bool = False):
        self.dist = distributed.setup(cfg)  # under torchrun: this rank among world_size; else rank 0 of 1
        self.run_cfg, cfg = cfg, distributed.rank_config(cfg, self.dist.world_size)  # the run's / this rank's
        t = cfg.trainer
        seed = t.seed + self.dist.rank  # each rank its own episodes, action samples and minibatch plans
        self.cfg, self.device = cfg, self.dist.device(t.device)
        check_machine(cfg, self.device, run_dir if self.dist.is_main else None)  # before anything is built
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        # compiled now (once per machine), not inside a timed phase
        kernels.build(self.device, cfg.policy.core, cfg.policy.encoder)
        torch.manual_seed(seed)
        self.env = make_env(cfg.env, seed=seed)
        try:
            check_layout(t, self.env.num_agents)  # the env has counted its agents
        except ConfigError:
            self.env.close()
            raise
        self.policy = Policy(cfg.policy, self.env.single_observation_space, self.env.single_action_space)
        self.policy.to(self.device)
        self.dist.broadcast_parameters(self.policy)  # every rank starts from rank 0's weights
        self.store = StateStore(self.policy.state_shapes, self.device)
        self.rollout = Rollout(self.env, self.store, self.device, seed=seed, slow_env_warning_s=cfg.env.worker_timeout)
        self.buffer = SegmentBuffer.for_spaces(
            self.env.num_agents,
            self.env.single_observation_space,
            self.env.single_action_space,
            self.policy.initial_state(1, self.device),
            batch_size=t.batch_size,
            horizon=t.bptt_horizon,
            burn_in=t.burn_in,
            device=self.device,
        )
        self.learner = Learner(self.policy, self.buffer, t, self.dist, seed)
        self.diag_gen = torch.Generator().manual_seed(seed + 2)  # staleness samples
        self.sample_gen = torch.Generator(self.device).manual_seed(seed)  # action sampling
        self.iteration, self.global_step = 0, 0  # completed iterations and their agent-steps
        self.rollout_stats = None  # the statistics of the rollout in the buffer, until its update is done
        self.update_pending = False  # the buffer holds a whole rollout whose update a stop cut short
        self.num_iterations = -(-t.total_timesteps // (t.batch_size * self.dist.world_size))
        self.run_dir = self.dist.broadcast_object(Path(run_dir) if run_dir is not None else None)  # rank 0's
        self.quiet = quiet or not self.dist.is_main
        self.monitor = Monitor(self.num_iterations * t.batch_size * self.dist.world_size, self.quiet)
        self.history = self.monitor.history  # every iteration's logged scalars
        self.stop = GracefulStop(self.dist, self.quiet)  # the first SIGINT/SIGTERM stops at the next safe point
        self.last_checkpoint: Path | None = None
        self.resume_note: str | None = None

    def train(self, stop_after: int | None = None) -> Summary:
        """Run iterations until the budget is spent (or `stop_after` iterations of this call, or a signal)."""
        writes = self.run_dir is not None and self.dist.is_main  # rank 0 alone logs and writes the run folder
        if writes:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(_run_dir_problem(self.run_dir, self.cfg, f"{type(err).__name__}: {err}")) from None
            remove_unfinished(self.run_dir)  # left by a save that was killed
            (self.run_dir / "config.yaml").write_text(dump_config(self.run_cfg))
        self.monitor.open(self.run_dir if writes else None, self.run_cfg)
        start, steps_at_start, first_iteration = time.perf_counter(), self.global_step, self.iteration
        stop, batch_done = self.stop, lambda: stop_after is not None and self.iteration - first_iteration >= stop_after
        with stop.installed():
            while self.iteration < self.num_iterations and not stop() and not batch_done():
                self.learner.anneal(self.iteration / self.num_iterations)
                if not self.update_pending:  # else a stop cut the update short: its rollout is in the buffer
                    self.rollout_stats = self.rollout.collect(
                        self.policy, self.buffer, self.sample_gen, self.dist.every(32, stop), self.rollout_stats
                    )  # ranks agree every 32 steps
                    if self.rollout_stats.interrupted:  # the checkpoint keeps the steps taken; resume goes on
                        break
                    self.update_pending = True
                losses = self.update()
                if losses is None:  # a stop cut the update short: undone, the checkpoint redoes it on resume
                    break
                stats, self.rollout_stats, self.update_pending = self.rollout_stats, None, False
                self.dist.share_episodes(stats)
                self.iteration += 1  # the counters count completed iterations only
                self.global_step += self.buffer.steps * self.env.num_agents * self.dist.world_size
                sps = (self.global_step - steps_at_start) / (time.perf_counter() - start)
                lr = self.learner.optimizer.param_groups[0]["lr"]
                self.monitor.record(self.global_step, stats, losses, sps, lr, self.buffer)
                if self.run_dir and (
                    self.iteration % self.cfg.trainer.checkpoint_interval == 0
                    or self.iteration == self.num_iterations
                    or stop()
                    or batch_done()
                ):
                    self.save()
            # A stop in the middle of a rollout or an update, or one that arrived while the last checkpoint was
            # being written (after its meta was taken): write a checkpoint of where the run stands, marked.
            if self.run_dir and self.dist.any_rank(stop.signal is not None and stop.saved != stop.signal):
                self.save()
        self.monitor.close()
        summary = self.monitor.summary(
            self.iteration,
            self.global_step,
            self.global_step - steps_at_start,
            time.perf_counter() - start,
            self.run_dir,
            self.last_checkpoint,
            stop.signal,
        )
        if writes:
            (self.run_dir / "summary.json").write_text(
                json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2)
            )
            if self.cfg.logging.report:
                write_report(self.run_dir)
        return summary

    def update(self) -> dict[str, float] | None:
        """Advantages, the learner's epochs, and the staleness of carried state that the update caused. If a
        stop comes before the last optimizer step, everything the update changed (weights, optimizer, shuffling
        RNG, return scale) goes back to what it was before it and None is returned: the buffer still holds the
        whole rollout, so a checkpoint taken then lets the resumed run do this update from its start."""
        started = time.perf_counter()
        before = self.learner.snapshot()
        self.learner.compute_advantages()
        d = self.cfg.diagnostics
        rollout_policy = copy.deepcopy(self.policy) if d.staleness_segments else None
        losses = self.learner.learn(self.iteration + 1, self.stop)
        if losses is None:
            self.learner.rollback(before)
            return None
        self.policy.update_obs_norm(self.buffer.obs, self.buffer.valid, self.dist)  # for the next rollout
        losses["perf/learn_seconds"] = time.perf_counter() - started
        if rollout_policy is not None:
            losses.update(
                diagnostics.staleness(
                    rollout_policy, self.policy, self.buffer, d.staleness_segments, d.staleness_window, self.diag_gen
                )
            )
        return losses

    def save(self) -> Path | None:
        """Checkpoint everything that the next iteration depends on (`run_state`), atomically."""
        self.stop.saved = self.stop.signal
        state = run_state.capture(self)  # every rank's carried state, on rank 0
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(
                self.run_dir,
                self.iteration,
                model=state.model,
                tensors=state.tensors,
                optimizer=state.optimizer,
                meta=state.meta,
                config=self.run_cfg,
                keep=self.cfg.trainer.keep_checkpoints,
            )
        self.dist.barrier("writing a checkpoint")  # no rank goes on (or resumes) before it is complete
        return self.last_checkpoint

    @classmethod
    def resume(cls, run_dir: Path | str, overrides: list[str] = (), quiet: bool = False) -> Trainer:
        """A trainer that continues the run in `run_dir` from its newest intact checkpoint. Overrides may
        change e.g. trainer.total_timesteps; changes to the network or the agents are refused."""
        ckpt = load_checkpoint(Path(run_dir))
        cfg = config_from_dict(apply_overrides(ckpt["config"].model_dump(mode="json"), list(overrides)))
        trainer = cls(cfg, run_dir=run_dir, quiet=quiet)
        trainer.resume_note = run_state.restore(trainer, ckpt)
        return trainer


def write_report(run_dir: Path) -> None:
    """runs/<run>/report.html; a failure to plot is a warning, never a failed run."""
    from carrystate import report

    try:
        report.write(run_dir)
    except Exception as err:  # noqa: BLE001 (the run itself is done and saved)
        warnings.warn(f"could not write {run_dir / report.REPORT_NAME}: {type(err).__name__}: {err}", stacklevel=2)


def check_machine(cfg: Config, device: torch.device, run_dir: Path | str | None = None) -> None:
    """The settings that are valid in themselves but may not work on this machine: the device is present, the
    configured unroll runs on it, the run folder can be created. Raises ConfigError naming the setting."""
    t = cfg.trainer
    if device.type == "cuda" and not (
        torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    ):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ConfigError(f"trainer.device={t.device!r}: this machine has {found}; use trainer.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={t.device!r}: MPS is not available here; use trainer.device=cpu")
    if cfg.policy.sequence_impl == "triton":
        from carrystate.policy.kernels import triton_scan

        why = triton_scan.why_unavailable(device, cfg.policy.hidden_size)
        if why:
            raise ConfigError(f"policy.sequence_impl=triton cannot run here: {why}")
    if cfg.logging.wandb and run_dir is not None and (why := wandb_problem()):
        raise ConfigError(why)
    if run_dir is not None:
        existing = Path(run_dir).absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(_run_dir_problem(run_dir, cfg, f"{existing} is a file, not a folder"))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(_run_dir_problem(run_dir, cfg, f"{existing} is not writable"))


def _run_dir_problem(run_dir: Path | str, cfg: Config, why: str) -> str:
    return f"cannot create the run folder {run_dir} (trainer.runs_dir={cfg.trainer.runs_dir!r}): {why}"


def default_run_dir(cfg: Config) -> Path:
    name = cfg.trainer.run_name or (
        f"{cfg.env.name}-{cfg.policy.core}-s{cfg.trainer.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(cfg.trainer.runs_dir) / name
