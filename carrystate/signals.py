"""Graceful stops: the first SIGINT/SIGTERM asks the run to stop at the next safe point (before the next env
step or optimizer step) and checkpoint where it stands, so that the resumed run goes on exactly (`run_state`);
a second stops at once (checkpoints are written atomically, so the last good one stays intact). Under torchrun
every rank agrees to stop at the same step. Outside a training loop, from process start to exit (`stop_at_once`,
which the command line installs first), a signal stops at once and is remembered for a loop that starts later."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import TYPE_CHECKING

from carrystate.errors import Interrupted

if TYPE_CHECKING:
    from carrystate.distributed import DistContext


RECEIVED: list[str] = []  # the signals this process received outside a training loop, by name


RETRY_S = 0.05  # how soon a stop that landed inside an import is tried again


def _importing(frame) -> bool:
    """Whether `frame` runs inside an import (an exception there would leave a module half made)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _outside_training(signum, frame):
    if signum != signal.SIGALRM:
        RECEIVED.append(signal.Signals(signum).name)
    if _importing(frame):  # raise once the import is done
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    raise Interrupted(RECEIVED[-1])


@contextmanager
def stop_at_once():
    """From process start to exit, outside a training loop: a SIGINT or SIGTERM raises `Interrupted` at once (or,
    when it lands inside an import, as soon as the import is done: raising there would leave a module half made),
    and is remembered, so that a training loop that starts afterwards (should the exception land in code that
    swallows it) stops at its first safe point instead of running on. Uses SIGALRM for the retry."""
    previous = {s: signal.signal(s, _outside_training) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in previous.items():
            signal.signal(s, h)


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
                raise Interrupted(f"a second {signal.Signals(signum).name}, at once")
            self.request(signal.Signals(signum).name)

        if RECEIVED and self.signal is None:  # one came before this loop: stop at its first safe point
            signal.setitimer(signal.ITIMER_REAL, 0)  # (a retry of `stop_at_once` still pending)
            self.request(RECEIVED[-1])
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
