"""The error classes every layer raises and the CLI catches. Each one's message names the setting, file or input
at fault; the CLI prints it as one line. This module imports nothing of the package."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting (or combination of settings) that cannot work; the message says which and why."""


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the run it is loaded into."""


class EnvError(RuntimeError):
    """An environment misbehaved: raised inside step, or returned data that breaks the VecEnv contract."""


class EnvWorkerError(EnvError):
    """A worker process died, did not answer within the timeout, or its env raised."""


class NumericalError(RuntimeError):
    """A non-finite loss or gradient: training stops and the last good checkpoint is left as it is."""


class DistributedError(RuntimeError):
    """Another rank stopped, or did not answer within trainer.dist_timeout_s."""


class ReportError(ValueError):
    """The folder is not a run folder (no TensorBoard events), or its events cannot be read."""


class KernelLockTimeout(RuntimeError):
    """Another process held a kernel folder's build lock for longer than the wait allowed."""


class Interrupted(BaseException):
    """A SIGINT or SIGTERM stopped the process at once (outside training's graceful stop, or a second signal).
    Not a KeyboardInterrupt: Python kills itself with SIGINT on exit after some KeyboardInterrupts even when they
    were caught, which would hide the exit code 130."""


# what the CLI reports as one line (a KernelLockTimeout surfaces as a ConfigError naming the setting)
USER_ERRORS = (ConfigError, CheckpointError, EnvError, NumericalError, DistributedError, ReportError)
