"""Progress reporting: every iteration's scalars (CleanRL's metric names) to TensorBoard, optionally to Weights &
Biases (the same dict of scalars, and the resolved config), and to the run's history; a live console line, the
recent episodes' results, and the run's final `Summary`."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from carrystate.metrics import TIME_SPLIT


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
        lines = (
            [
                f"stopped by {self.interrupted}: checkpoint written, resume with "
                f"`carrystate train --resume {self.run_dir}`"
            ]
            if self.interrupted
            else []
        )
        lines += [
            f"trained {self.global_step:,} agent-steps in {self.iterations} iterations, "
            f"{self.wall_time:.0f}s ({self.sps:,.0f} SPS)",
            f"final mean episode return (last 200 episodes): {self.mean_return:.3f}",
        ]
        if self.success_rate is not None:
            lines.append(f"final success rate (last 200 episodes): {self.success_rate:.1%}")
        if self.run_dir is not None:
            lines.append(f"logs: {self.run_dir}  (tensorboard --logdir {self.run_dir.parent})")
        if self.checkpoint is not None:
            lines.append(f"checkpoint: {self.checkpoint}  (carrystate eval {self.checkpoint})")
        return "\n".join(lines)


def wandb_problem() -> str | None:
    """Why logging.wandb=true cannot work here (wandb not installed), or None."""
    if importlib.util.find_spec("wandb") is None:
        return 'logging.wandb=true needs the wandb package: pip install -e ".[wandb]" (or pip install wandb)'
    return None


def wandb_mode(setting: str) -> str:
    """logging.wandb_mode resolved: `auto` is WANDB_MODE if set, else online with WANDB_API_KEY, else offline."""
    if setting != "auto":
        return setting
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def open_wandb(cfg, run_dir: Path):
    """A W&B run named after `run_dir`, holding the resolved config, kept in WANDB_DIR or else in `run_dir`."""
    import wandb

    log = cfg.logging
    return wandb.init(
        project=log.wandb_project,
        entity=log.wandb_entity,
        name=run_dir.name,
        dir=os.environ.get("WANDB_DIR") or str(run_dir),
        config=cfg.model_dump(mode="json"),
        mode=wandb_mode(log.wandb_mode),
        reinit="create_new",
    )


class Monitor:
    def __init__(self, total_steps: int, quiet: bool = False):
        self.console = Console(stderr=False, highlight=False)
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.total = total_steps
        self.writer = None
        self.wandb = None  # the W&B run, with logging.wandb
        self.last_print = 0.0
        self.returns: deque[float] = deque(maxlen=200)  # the last 200 episodes, for progress and summary
        self.success: deque[float] = deque(maxlen=200)
        self.history: list[dict[str, float]] = []  # every iteration's logged scalars, for experiments

    def state_dict(self) -> dict:
        """The recent episodes that progress and the summary average over."""
        return {"returns": list(self.returns), "success": list(self.success)}

    def load_state_dict(self, state: dict) -> None:
        self.returns.extend(state["returns"])
        self.success.extend(state["success"])

    def open(self, run_dir: Path | None, cfg=None) -> None:
        """Start writing TensorBoard events to `run_dir`/tb (None: no events), and with cfg.logging.wandb, the
        same scalars to a W&B run."""
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
            if cfg is not None and cfg.logging.wandb:
                self.wandb = open_wandb(cfg, run_dir)

    def record(self, step: int, stats, scalars: dict[str, float]) -> None:
        """One completed iteration: its rollout's `stats` (episodes for progress and the summary) and every
        metric of it (`carrystate.metrics`), written to the history, TensorBoard, W&B and the progress line."""
        self.returns.extend(stats.episode_returns)
        self.success.extend(stats.success)
        self.history.append({"step": step, **scalars})
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()  # readable now, by `carrystate report` on a running run
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        self.progress(step, scalars["charts/SPS"], scalars)

    def progress(self, step: int, sps: float, values: dict[str, float]) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if not self.live and now - self.last_print < 5.0 and step < self.total:
            return
        self.last_print = now
        left = (self.total - step) / sps if sps > 0 else float("nan")
        returns, success = self.returns, self.success
        ret = f"{sum(returns) / len(returns):7.3f}" if returns else "    n/a"
        succ = f" success {sum(success) / len(success):5.1%}" if success else ""
        line = (
            f"step {step:>9,}/{self.total:,}  SPS {sps:7,.0f}  return {ret}{succ}  "
            f"pg {values.get('losses/policy_loss', 0):+.3f}  v {values.get('losses/value_loss', 0):.3f}  "
            f"ent {values.get('losses/entropy', 0):.3f}  kl {values.get('losses/approx_kl', 0):.4f}  "
            f"{self._split(values)}left {left:5.0f}s"
        )
        if self.live:
            sys.stdout.write("\r" + line + "\x1b[K")
            sys.stdout.flush()
        else:
            print(line, flush=True)

    @staticmethod
    def _split(values: dict[str, float]) -> str:
        """Where the last iteration's time went: env, policy (rollout inference), learner."""
        parts = [values.get(k, 0.0) for k in TIME_SPLIT]
        total = sum(parts)
        if total <= 0:
            return ""
        env, pol, learn = (100 * p / total for p in parts)
        return f"time env {env:2.0f}% policy {pol:2.0f}% learn {learn:2.0f}%  "

    def close(self) -> None:
        if self.live:
            sys.stdout.write("\n")
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def summary(
        self,
        iterations: int,
        global_step: int,
        steps: int,
        wall: float,
        run_dir: Path | None,
        checkpoint: Path | None,
        interrupted: str | None,
    ) -> Summary:
        """The run's summary: `steps` agent-steps of this call took `wall` seconds."""
        returns, success = list(self.returns), list(self.success)
        return Summary(
            iterations,
            global_step,
            float(np.mean(returns)) if returns else float("nan"),
            float(np.mean(success)) if success else None,
            steps / max(wall, 1e-9),
            wall,
            run_dir,
            checkpoint,
            interrupted,
        )
