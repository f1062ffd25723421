"""Graceful stops: the first SIGINT/SIGTERM asks the run to stop at the next safe point (before the next env
step or optimizer step) and checkpoint where it stands, so that the resumed run goes on exactly (`run_state`);
a second stops at once (checkpoints are written atomically, so the last good one stays intact). Under torchrun
every rank agrees to stop at the same step."""

from __future__ import annotations

import signal
from contextlib import contextmanager

from carrystate.distributed import DistContext


class GracefulStop:
    def __init__(self, dist: DistContext, quiet: bool = False):
        self.dist, self.quiet = dist, quiet
        self.signal: str | None = None  # the first signal's name, once one arrived
        self.saved: str | None = None  # `signal` as the newest checkpoint recorded it

    def __call__(self) -> bool:
        """Whether a signal asked to stop; under torchrun all ranks agree (a signal to one stops all at the same
        step), so none waits in a collective that the others skipped."""
        if self.dist.any_rank(self.signal is not None) and self.signal is None:
            self.signal = "a signal to another rank"
        return self.signal is not None

    def request(self, name: str) -> None:
        """Ask the run to stop at the next safe point, as the signal `name` does (the handler calls this)."""
        self.signal = name
        if not self.quiet:
            print(
                f"\n{name}: finishing the current step and writing a checkpoint (signal again to stop at once)",
                flush=True,
            )

    @contextmanager
    def installed(self):
        """SIGINT and SIGTERM handled as above while the block runs (the previous handlers come back after)."""

        def handler(signum, frame):
            if self.signal is not None:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
            self.request(signal.Signals(signum).name)

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
