"""Progress reporting: TensorBoard scalars (CleanRL's metric names), a live console line, a final summary."""

from __future__ import annotations

import sys
import time

from rich.console import Console


class Monitor:
    def __init__(self, log_dir, total_steps: int, quiet: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir)) if log_dir is not None else None
        self.console = Console(stderr=False, highlight=False)
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.total = total_steps
        self.start = time.perf_counter()
        self.last_print = 0.0

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def progress(self, step: int, sps: float, losses: dict[str, float], returns, success) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if not self.live and now - self.last_print < 5.0 and step < self.total:
            return
        self.last_print = now
        left = (self.total - step) / sps if sps > 0 else float("nan")
        ret = f"{sum(returns) / len(returns):7.3f}" if returns else "    n/a"
        succ = f" success {sum(success) / len(success):5.1%}" if success else ""
        line = (f"step {step:>9,}/{self.total:,}  SPS {sps:7,.0f}  return {ret}{succ}  "
                f"pg {losses.get('losses/policy_loss', 0):+.3f}  v {losses.get('losses/value_loss', 0):.3f}  "
                f"ent {losses.get('losses/entropy', 0):.3f}  kl {losses.get('losses/approx_kl', 0):.4f}  "
                f"{self._split(losses)}left {left:5.0f}s")
        if self.live:
            sys.stdout.write("\r" + line + "\x1b[K")
            sys.stdout.flush()
        else:
            print(line, flush=True)

    @staticmethod
    def _split(values: dict[str, float]) -> str:
        """Where the last iteration's time went: env, policy (rollout inference), learner."""
        parts = [values.get(k, 0.0) for k in ("perf/env_seconds", "perf/policy_seconds", "perf/learn_seconds")]
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
