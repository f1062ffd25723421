"""The training loop: rollout → advantages → learner → diagnostics → log → checkpoint, one iteration visible
at once. The Trainer wires the parts together; each phase lives in its own module."""

from __future__ import annotations

import ctypes
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from carrystate import diagnostics, distributed, run_state
from carrystate.checkpoint import load_checkpoint, remove_unfinished, save_checkpoint
from carrystate.checkpoint_checks import check_resume
from carrystate.config import Config, ConfigError, apply_overrides, check_layout, config_from_dict, dump_config
from carrystate.envs import make_env
from carrystate.locks import PidLock, hold_run_folder
from carrystate.metrics import rollout_metrics
from carrystate.monitor import Monitor, Summary
from carrystate.policy import Policy, kernels
from carrystate.rollout import RolloutStats
from carrystate.signals import GracefulStop
from carrystate.wiring import build_parts, check_machine, run_dir_problem


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
        if t.keep_freed_memory:
            keep_freed_memory()
        kernels.build(self.device, cfg.policy.core, cfg.policy.encoder)  # compiled now, not in a timed phase
        torch.manual_seed(seed)
        self.env = make_env(cfg.env, seed=seed)
        try:
            check_layout(t, self.env.num_agents)  # the env has counted its agents
        except ConfigError:
            self.env.close()
            raise
        spaces = (self.env.single_observation_space, self.env.single_action_space)
        self.policy = Policy(cfg.policy, *spaces, precision=cfg.trainer.precision)
        self.policy.to(self.device)
        self.dist.broadcast_parameters(self.policy)  # every rank starts from rank 0's weights
        self.parts = build_parts(cfg, self.env, self.policy, seed, self.device, self.dist)
        self.store, self.rollout, self.buffer, self.learner = (
            self.parts.store,
            self.parts.rollout,
            self.parts.buffer,
            self.parts.learner,
        )
        self.iteration, self.global_step = 0, 0  # completed iterations and their agent-steps
        self.num_iterations = -(-t.total_timesteps // (t.batch_size * self.dist.world_size))
        self.run_dir = self.dist.broadcast_object(Path(run_dir) if run_dir is not None else None)  # rank 0's
        self.quiet = quiet or not self.dist.is_main
        self.monitor = Monitor(self.num_iterations * t.batch_size * self.dist.world_size, self.quiet)
        self.history = self.monitor.history  # every iteration's logged scalars
        self.stop = GracefulStop(self.dist, self.quiet)  # the first SIGINT/SIGTERM stops at the next safe point
        self.last_checkpoint: Path | None = None
        self.resume_note: str | None = None

    def train(self, stop_after: int | None = None, after_iteration: Callable[[Trainer], bool] | None = None) -> Summary:
        """Run iterations until the budget is spent (or `stop_after` iterations of this call, or a signal, or
        `after_iteration(trainer)`, called after each iteration is logged, returns True: a sweep's pruner)."""
        writes = self.run_dir is not None and self.dist.is_main  # rank 0 alone logs and writes the run folder
        if writes:
            self._open_run_dir()
        self.monitor.open(self.run_dir if writes else None, self.run_cfg)
        start, steps_at_start, first_iteration = time.perf_counter(), self.global_step, self.iteration
        stop, caller_done = self.stop, False

        def batch_done() -> bool:
            return caller_done or stop_after is not None and self.iteration - first_iteration >= stop_after

        with stop.installed():
            while self.iteration < self.num_iterations and not stop() and not batch_done():
                began = time.perf_counter()
                self.learner.anneal(self.iteration / self.num_iterations)
                if not self.buffer.update_pending:  # else a stop cut the update short: its rollout is in the buffer
                    should_stop = self.dist.every(32, stop)  # ranks agree every 32 steps
                    stats = self.rollout.collect(self.policy, self.buffer, self.parts.generators.sample, should_stop)
                    if stats.interrupted:  # the checkpoint keeps the steps taken; resume goes on
                        break
                metrics = self.update()
                if metrics is None:  # a stop cut the update short: undone, the checkpoint redoes it on resume
                    break
                stats, self.rollout.stats = self.rollout.stats, RolloutStats()
                self.dist.share_episodes(stats)
                self.iteration += 1  # the counters count completed iterations only
                self.global_step += self.buffer.steps * self.env.num_agents * self.dist.world_size
                metrics["perf/iteration_seconds"] = seconds = time.perf_counter() - began
                metrics["perf/policy_seconds"] = max(0.0, seconds - stats.env_seconds - metrics["perf/learn_seconds"])
                metrics["charts/SPS"] = (self.global_step - steps_at_start) / (time.perf_counter() - start)
                self.monitor.record(self.global_step, stats, {**rollout_metrics(stats, self.buffer), **metrics})
                caller_done = after_iteration is not None and bool(after_iteration(self))
                if self.run_dir and (self.iteration % self.cfg.trainer.checkpoint_interval == 0 or stop() or
                                     self.iteration == self.num_iterations or batch_done()):  # fmt: skip
                    self.save()
            # A stop in the middle of a rollout or an update, or one that arrived while the last checkpoint was
            # being written (after its meta was taken): write a checkpoint of where the run stands, marked.
            if self.run_dir and self.dist.any_rank(stop.signal is not None and stop.saved != stop.signal):
                self.save()
        return self._finish(time.perf_counter() - start, self.global_step - steps_at_start, writes)

    def update(self) -> dict[str, float] | None:
        """Advantages, the learner's epochs, and the staleness of carried state that the update caused. If a
        stop comes before the last optimizer step, everything the update changed (weights, optimizer, shuffling
        RNG, return scale) goes back to what it was before it and None is returned: the buffer still holds the
        whole rollout, so a checkpoint taken then lets the resumed run do this update from its start."""
        started = time.perf_counter()
        before = self.learner.snapshot()
        self.learner.compute_advantages()
        metrics = self.learner.learn(self.iteration + 1, self.stop)
        if metrics is None:
            self.learner.rollback(before)
            return None
        self.buffer.trained = True
        self.policy.update_obs_norm(self.buffer.obs, self.buffer.valid, self.dist)  # for the next rollout
        d = self.cfg.diagnostics
        if d.staleness_segments:  # the rollout's weights are the snapshot's
            rollout_weights = lambda: self.learner.weights(before["model"])  # noqa: E731
            samples, window, gen = d.staleness_segments, d.staleness_window, self.parts.generators.staleness
            metrics.update(diagnostics.staleness(self.policy, rollout_weights, self.buffer, samples, window, gen))
        metrics["perf/learn_seconds"] = time.perf_counter() - started
        return metrics

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
        run_dir, lock = Path(run_dir), None
        if distributed.env_rank() == 0 and run_dir.is_dir():  # the writer: refused while another process writes it
            lock = hold_run_folder(run_dir)  # held from here on, by the trainer once it is built
            remove_unfinished(run_dir)  # before reading: a killed save or prune may have left a folder
        ckpt = load_checkpoint(run_dir)
        cfg = config_from_dict(apply_overrides(ckpt["config"].model_dump(mode="json"), list(overrides)))
        trainer = cls(cfg, run_dir=run_dir, quiet=quiet)
        trainer._run_lock = lock
        check_resume(ckpt, trainer.run_cfg, trainer.policy, trainer.env, trainer.dist)
        trainer.resume_note = run_state.restore(trainer, ckpt)
        return trainer

    _run_lock: PidLock | None = None  # the run folder's writer lock, held by rank 0 from _open_run_dir to _finish

    def _open_run_dir(self) -> None:
        """Make the run folder and take its writer lock (ConfigError while another process holds it), then clear
        what a killed save or prune left there and write the config."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(run_dir_problem(self.run_dir, self.cfg, f"{type(err).__name__}: {err}")) from None
        self._run_lock = self._run_lock or hold_run_folder(self.run_dir)  # before anything in the folder is removed
        remove_unfinished(self.run_dir)
        (self.run_dir / "config.yaml").write_text(dump_config(self.run_cfg))

    def _finish(self, wall: float, steps: int, writes: bool) -> Summary:
        self.monitor.close()
        summary = self.monitor.summary(
            self.iteration, self.global_step, steps, wall, self.run_dir, self.last_checkpoint, self.stop.signal
        )
        if writes:
            (self.run_dir / "summary.json").write_text(
                json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}, indent=2)
            )
            if self.cfg.logging.report:
                write_report(self.run_dir)
            self._run_lock.release()  # the folder is free for the next writer
            self._run_lock = None
        return summary


def write_report(run_dir: Path) -> None:
    """runs/<run>/report.html; a failure to plot is a warning, never a failed run."""
    from carrystate import report

    try:
        report.write(run_dir)
    except Exception as err:  # noqa: BLE001 (the run itself is done and saved)
        warnings.warn(f"could not write {run_dir / report.REPORT_NAME}: {type(err).__name__}: {err}", stacklevel=2)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_CEILING = 32 << 20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def keep_freed_memory() -> bool:
    """`trainer.keep_freed_memory`: glibc's malloc serves blocks up to 32 MiB from its heap and never trims the heap,
    so memory freed by one minibatch is reused by the next without new page faults. Returns whether it was set
    (false where the C library is not glibc)."""
    try:
        libc = ctypes.CDLL(None)  # this process's symbols, the C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: another libc's mallopt takes other parameters
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, _MMAP_CEILING)
    trimmed = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(mapped and trimmed)
