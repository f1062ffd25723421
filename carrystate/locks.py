"""Locks that die with their holder: one writer per run folder (`hold_run_folder`), and the primitive under it.

`PidLock` is an `fcntl.flock` on a file into which its holder writes its pid. The kernel frees an flock when the
file that holds it is closed, so the lock goes with its holder however that ends (release, exit, kill -9, OOM):
nothing stale is ever left to clean up, and a refused process can name the pid in its way. (A child forked while
the lock is held shares its file, and so holds it until it exits too.) The kernel build lock of
policy/kernels/cpu.py is one too.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from carrystate.errors import ConfigError

RUN_LOCK = "run.lock"  # in the run folder


class PidLock:
    """An exclusive lock on the file `path`, taken without waiting (`acquire`); a context manager that releases it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._close = None  # the finalizer that closes the held file: on release, or when this object is dropped

    def acquire(self) -> str | None:
        """Take the lock if it is free (or already ours): None once held, else the pid of the process that holds it
        (as its file says; 'unknown' in the moment before a new holder has written it)."""
        if self._close is not None:
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self.path.read_text().strip() or "unknown"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._close = weakref.finalize(self, os.close, fd)
        return None

    def release(self) -> None:
        """Free the lock (closing its file); nothing if it is not held."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> PidLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_run_folder(run_dir: Path | str) -> PidLock:
    """The writer lock of the existing folder `run_dir`, held by this process until released or the process ends.
    Raises ConfigError, one line naming the folder and the pid that holds it, while another writer holds it."""
    lock = PidLock(Path(run_dir) / RUN_LOCK)
    try:
        holder = lock.acquire()
    except OSError as err:
        raise ConfigError(f"cannot lock the run folder {run_dir} ({type(err).__name__}: {err})") from None
    if holder is not None:
        this = " (this process: a trainer of it that has not finished)" if holder == str(os.getpid()) else ""
        raise ConfigError(
            f"the run folder {run_dir} is being written by pid {holder}{this}; a run folder has one writer: let "
            "that process finish or stop it (its lock goes with it), or write to another folder (trainer.run_name)"
        )
    return lock
