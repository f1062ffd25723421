"""Env batches stepped in worker processes (`ProcessVecEnv`), and groups of batches that a rollout steps
in turn (`EnvBatches`, for double buffering).

`ProcessVecEnv` runs one sub-batch (any `VecEnv`, built by a factory inside the worker) per process and
talks to each over a pipe. It is a `VecEnv` whose rows are the workers' rows in order, plus `step_async`
(send the actions, return at once) and `step_wait` (collect the results). Where the observation space is a
Box, the workers write observations, final observations, rewards and episode-end flags into one block of
shared memory (`SharedResults`), the parent writes the actions there too (Discrete, MultiDiscrete and Box
actions), and the pipe carries only the commands and the few ended-episode numbers; the arrays `reset` and
`step_wait` return are views of that block, valid until the next `step_async` or `reset`.
Every wait has a deadline (`timeout`, the setting `env.worker_timeout`): a worker that dies is reported as
soon as it is seen dead, one that does not answer in time is reported when the deadline passes; either way
every worker is stopped and an `EnvWorkerError` names the worker, its process and the setting, so training
never hangs. An exception inside a worker's env comes back as an `EnvWorkerError` carrying the worker's
traceback.

`ProcessVecEnv.sharing` builds several batches on the same worker processes (`env.shared_workers`): each worker holds
one env per batch and steps the one a command names, and an answer read while another batch's is awaited is kept
for its batch.

`EnvBatches` holds several batches over consecutive row ranges; `Rollout` sees its `batches` attribute and
alternates them, computing one batch's actions while the other steps. Stepped as a plain `VecEnv`, it steps
every batch and concatenates the results.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from functools import partial

import gymnasium as gym
import numpy as np

from carrystate.envs.base import StepResult, VecEnv, check_step_type, env_label
from carrystate.errors import EnvWorkerError

WORKER_SEED_STRIDE = 100_003  # worker k of a batch resets with seed + k * stride
BATCH_SEED_STRIDE = 10_000_019  # batch b of a double-buffered env with seed + b * stride


class SharedResults:
    """One memory-mapped file holding every row's step result: `obs`, `final_obs` [rows, *obs_shape] in the
    space's dtype, `reward` [rows] float32, `terminated`, `truncated` [rows] bool; and, given an action layout,
    the actions the parent sends, `actions` [rows, *action_shape], so that a step command carries no array. The
    parent creates it in /dev/shm (where there is one), every worker maps it and writes its own rows, and the
    parent unlinks the name once all have mapped it, so nothing is left behind whatever way the processes end."""

    def __init__(
        self,
        path: str,
        rows: int,
        obs_shape: tuple[int, ...],
        obs_dtype: str,
        action_shape: tuple[int, ...] | None = None,
        action_dtype: str | None = None,
        create: bool = False,
    ):
        self.path, self.rows, self.obs_shape, self.obs_dtype = path, rows, tuple(obs_shape), obs_dtype
        self.action_shape = None if action_shape is None else tuple(action_shape)
        self.action_dtype = action_dtype
        fields = [
            ("obs", (rows, *obs_shape), obs_dtype),
            ("final_obs", (rows, *obs_shape), obs_dtype),
            ("reward", (rows,), "float32"),
            ("terminated", (rows,), "bool"),
            ("truncated", (rows,), "bool"),
        ]
        if action_dtype is not None:
            fields.append(("actions", (rows, *self.action_shape), action_dtype))
        offsets, size = [], 0
        for _, shape, dtype in fields:
            offsets.append(size)
            size += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64) * 64  # 64-byte aligned
        self.memory = np.memmap(path, np.uint8, "w+" if create else "r+", shape=(max(size, 1),))
        self.actions = None
        for (name, shape, dtype), offset in zip(fields, offsets):
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            setattr(self, name, self.memory[offset : offset + n].view(dtype).reshape(shape))

    @classmethod
    def create(cls, rows: int, space: gym.spaces.Box, action_space: gym.Space | None = None) -> SharedResults:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="carrystate-env-", dir=folder)
        os.close(fd)
        layout = action_layout(action_space)
        return cls(path, rows, space.shape, np.dtype(space.dtype).name, *layout, create=True)

    def spec(self) -> tuple:
        return self.path, self.rows, self.obs_shape, self.obs_dtype, self.action_shape, self.action_dtype

    def holds(self, actions: np.ndarray) -> bool:
        """Whether `actions` (all rows) fit the `actions` field as they are."""
        return self.actions is not None and actions.dtype == self.actions.dtype and actions.shape == self.actions.shape

    def write(self, rows: slice, res: StepResult) -> tuple:
        """Write a step result into `rows`; returns what the pipe still carries."""
        self.obs[rows], self.final_obs[rows], self.reward[rows] = res.obs, res.final_obs, res.reward
        self.terminated[rows], self.truncated[rows] = res.terminated, res.truncated
        return res.episode_returns, res.episode_lengths, res.success, res.valid

    def result(self, parts: list[tuple], bounds: np.ndarray) -> StepResult:
        """The step result of all rows: the shared arrays plus each worker's ended episodes, worker k's rows
        being `bounds[k]:bounds[k + 1]`."""
        valid = joined_valid([p[3] for p in parts], np.diff(bounds))
        return StepResult(
            self.obs,
            self.reward,
            self.terminated,
            self.truncated,
            self.final_obs,
            [x for p in parts for x in p[0]],
            [x for p in parts for x in p[1]],
            [x for p in parts for x in p[2]],
            valid,
        )


def action_layout(space: gym.Space | None) -> tuple[tuple[int, ...] | None, str | None]:
    """The shape and dtype of one row's actions as the rollout sends them: int64 for Discrete and MultiDiscrete,
    float32 for a Box; (None, None) for anything else, whose actions go through the pipe."""
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return tuple(space.shape), "int64"
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape), "float32"
    return None, None


def _spec(env: VecEnv) -> tuple:
    return env.num_agents, env.single_observation_space, env.single_action_space, getattr(env, "agents_per_env", 1)


def _worker_main(conn, factory: Callable[[], VecEnv | list[VecEnv]]) -> None:
    """Body of a worker process: build its env (or, for workers shared by batches, one env per batch: its
    slots), then answer commands until told to close (or until the parent process is gone). Every command
    and answer names the slot it is for."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it stops us by close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's graceful handler inherited by fork
    parent = os.getppid()
    try:
        built = factory()
        envs = built if isinstance(built, list) else [built]
        conn.send(("ok", None, [_spec(env) for env in envs]))
    except Exception:  # noqa: BLE001 - whatever the env raised goes to the parent, which names it
        conn.send(("error", None, traceback.format_exc()))
        return
    shared: list = [None] * len(envs)  # after "attach": a slot's results go to shared memory, rows `rows[slot]`
    rows: list = [None] * len(envs)
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:  # orphaned: nobody will ever ask again
                    return
            command, slot, arg = conn.recv()
        except (EOFError, OSError):  # the parent closed its end
            return
        try:
            if command == "step":
                env = envs[slot]  # arg None: the actions are in shared memory (a copy: the parent writes there next)
                res = env.step(shared[slot].actions[rows[slot]].copy() if arg is None else arg)
                check_step_type(res, env_label(env))  # here, where the result's fields are read first
                conn.send(("ok", slot, res if shared[slot] is None else shared[slot].write(rows[slot], res)))
            elif command == "reset":
                obs = envs[slot].reset(seed=arg)
                if shared[slot] is not None:
                    shared[slot].obs[rows[slot]] = obs
                conn.send(("ok", slot, obs if shared[slot] is None else None))
            elif command == "attach":
                spec, (start, stop) = arg
                shared[slot], rows[slot] = SharedResults(*spec), slice(start, stop)
                conn.send(("ok", slot, None))
            elif command == "close":
                for env in envs:
                    env.close()
                conn.send(("ok", slot, None))
                return
            else:
                conn.send(("error", slot, f"unknown command {command!r}"))
        except Exception:  # noqa: BLE001 - whatever the env raised goes to the parent, which names it
            conn.send(("error", slot, traceback.format_exc()))


def joined_valid(valids: list, sizes) -> np.ndarray | None:
    """The `valid` of consecutive row ranges of these sizes joined: None where every part is None (all valid),
    else one bool array with True for the rows of a None part."""
    if all(v is None for v in valids):
        return None
    return np.concatenate([np.ones(n, bool) if v is None else np.asarray(v, bool) for v, n in zip(valids, sizes)])


def concat_results(results: list[StepResult]) -> StepResult:
    """Step results of consecutive row ranges → one result over all rows."""
    cat = lambda name: np.concatenate([getattr(r, name) for r in results])  # noqa: E731
    valid = joined_valid([r.valid for r in results], [len(r.reward) for r in results])
    return StepResult(
        cat("obs"),
        cat("reward"),
        cat("terminated"),
        cat("truncated"),
        cat("final_obs"),
        [x for r in results for x in r.episode_returns],
        [x for r in results for x in r.episode_lengths],
        [x for r in results for x in r.success],
        valid,
    )


class _Workers:
    """The worker processes and their pipes, shared by the batches (`ProcessVecEnv`s) they step: each worker
    holds one env per batch (a slot). Answers come back in the order asked; one for another slot than the caller
    waits for is kept until that slot asks (`receive`)."""

    def __init__(
        self, factories: list[Callable[[], VecEnv | list[VecEnv]]], timeout: float, name: str, start_method=None
    ):
        self.timeout, self.name, self.closed, self.busy = timeout, name, False, False
        ctx = mp.get_context(start_method or ("fork" if sys.platform.startswith("linux") else "spawn"))
        self.conns, self.procs = [], []
        self.kept: dict[tuple[int, int], deque] = {}  # (worker, slot) -> answers read while waiting for another
        for k, factory in enumerate(factories):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, factory), daemon=True, name=f"carrystate-env-{k}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        deadline = time.monotonic() + timeout
        self.specs = [self.receive(k, None, deadline, "starting") for k in range(len(factories))]  # [worker][slot]

    def fail(self, message: str) -> EnvWorkerError:
        self.close(graceful=False)
        return EnvWorkerError(message)

    def receive(self, k: int, slot: int | None, deadline: float, doing: str):
        """Worker k's next answer for `slot` (None: its start), or EnvWorkerError by `deadline`."""
        kept = self.kept.get((k, slot))
        if kept:
            return kept.popleft()
        conn, proc = self.conns[k], self.procs[k]
        while True:
            remaining = deadline - time.monotonic()
            try:
                ready = conn.poll(max(0.0, min(0.05, remaining)))
            except (OSError, EOFError):
                ready = False
            if ready:
                try:
                    status, of, payload = conn.recv()
                except (EOFError, OSError):
                    proc.join(0.5)
                    raise self.fail(
                        f"{self.name} worker {k} (pid {proc.pid}) died while {doing} (exit code {proc.exitcode})"
                    ) from None
                if status == "error":
                    raise self.fail(f"{self.name} worker {k} (pid {proc.pid}) raised while {doing}:\n{payload}")
                if of != slot:  # another batch's answer: kept for it
                    self.kept.setdefault((k, of), deque()).append(payload)
                    continue
                return payload
            if not proc.is_alive():
                raise self.fail(
                    f"{self.name} worker {k} (pid {proc.pid}) died while {doing} (exit code {proc.exitcode})"
                )
            if remaining <= 0:
                raise self.fail(
                    f"{self.name} worker {k} (pid {proc.pid}) did not answer within "
                    f"env.worker_timeout={self.timeout:g}s while {doing}; all workers were stopped"
                )

    def send(self, k: int, message) -> None:
        try:
            self.conns[k].send(message)
        except (BrokenPipeError, EOFError, OSError):
            proc = self.procs[k]
            proc.join(0.5)
            raise self.fail(f"{self.name} worker {k} (pid {proc.pid}) died (exit code {proc.exitcode})") from None

    def close(self, graceful: bool = True) -> None:
        """Stop every worker: ask politely (graceful, when no step is outstanding), then terminate, then kill."""
        if self.closed:
            return
        self.closed = True
        if graceful and not self.busy:
            for conn, proc in zip(self.conns, self.procs):
                if proc.is_alive():
                    try:
                        conn.send(("close", None, None))
                    except (BrokenPipeError, OSError):
                        pass
            deadline = time.monotonic() + min(self.timeout, 5.0)
            for proc in self.procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for conn in self.conns:
            conn.close()


class ProcessVecEnv:
    """Sub-batches stepped in worker processes (one per factory), as one `VecEnv` with async stepping.
    `ProcessVecEnv.sharing` builds several such batches whose workers are the same processes."""

    def __init__(
        self,
        factories: list[Callable[[], VecEnv]],
        timeout: float = 60.0,
        name: str = "env",
        start_method: str | None = None,
        shared_memory: bool = True,
        _workers: _Workers | None = None,
        _slot: int = 0,
    ):
        if not factories and _workers is None:
            raise ValueError("ProcessVecEnv needs at least one worker factory (env.workers >= 1)")
        self.timeout, self.name = timeout, name
        self.workers = _workers or _Workers(factories, timeout, name, start_method)
        self.slot, self.users = _slot, [self]  # users: the batches on these workers (closed together)
        self.shared: SharedResults | None = None
        self._pending = False
        self._closed = False
        specs = [spec[_slot] for spec in self.workers.specs]
        self.sizes = [s[0] for s in specs]  # [workers] rows per worker
        self.bounds = np.cumsum([0] + self.sizes)  # worker k owns rows bounds[k]:bounds[k+1]
        self.num_agents = int(self.bounds[-1])
        _, self.single_observation_space, self.single_action_space, self.agents_per_env = specs[0]
        for k, spec in enumerate(specs[1:], 1):
            if spec[1] != self.single_observation_space or spec[2] != self.single_action_space:
                self.close()
                raise EnvWorkerError(
                    f"worker {k} of {name} has spaces {spec[1]}, {spec[2]} but worker 0 has "
                    f"{self.single_observation_space}, {self.single_action_space}"
                )
        if shared_memory and isinstance(self.single_observation_space, gym.spaces.Box):
            self.shared = SharedResults.create(self.num_agents, self.single_observation_space, self.single_action_space)
            try:
                for k in range(len(self.procs)):
                    bounds = (self.bounds[k], self.bounds[k + 1])
                    self._send(k, ("attach", self.slot, (self.shared.spec(), bounds)))
                deadline = time.monotonic() + timeout
                for k in range(len(self.procs)):
                    self._receive(k, deadline, "mapping the shared results")
            finally:
                os.unlink(self.shared.path)  # every worker has it mapped (or has been stopped)

    @classmethod
    def sharing(
        cls, factories: list[list[Callable[[], VecEnv]]], timeout: float = 60.0, name: str = "env", **kwargs
    ) -> list[ProcessVecEnv]:
        """One batch per list of `factories` (batch b's worker k built by factories[b][k]), all stepped by the
        same worker processes: worker k holds each batch's k-th env. Every batch needs as many factories."""
        if not factories or len({len(f) for f in factories}) != 1 or not factories[0]:
            raise ValueError("ProcessVecEnv.sharing needs the same number (>= 1) of worker factories per batch")
        per_worker = [partial(_build_all, [batch[k] for batch in factories]) for k in range(len(factories[0]))]
        workers = _Workers(per_worker, timeout, name, kwargs.pop("start_method", None))
        batches: list[ProcessVecEnv] = []
        try:
            for b in range(len(factories)):
                batches.append(cls([], timeout, name, _workers=workers, _slot=b, **kwargs))
        except Exception:
            workers.close(graceful=False)
            raise
        for batch in batches:
            batch.users = batches
        return batches

    @property
    def procs(self) -> list:
        return self.workers.procs

    # ---- messages ---------------------------------------------------------------------------------
    def _fail(self, message: str) -> EnvWorkerError:
        return self.workers.fail(message)

    def _receive(self, k: int, deadline: float, doing: str):
        return self.workers.receive(k, self.slot, deadline, doing)

    def _send(self, k: int, message) -> None:
        self.workers.send(k, message)

    def _check_open(self) -> None:
        if self._closed or self.workers.closed:
            raise EnvWorkerError(f"{self.name}: the workers were stopped (after an error or close())")

    # ---- VecEnv ------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        self._check_open()
        if self._pending:
            self.step_wait()
        for k in range(len(self.procs)):
            self._send(k, ("reset", self.slot, None if seed is None else seed + k * WORKER_SEED_STRIDE))
        deadline = time.monotonic() + self.timeout
        obs = [self._receive(k, deadline, "resetting") for k in range(len(self.procs))]
        return self.shared.obs if self.shared is not None else np.concatenate([np.asarray(o) for o in obs])

    def step_async(self, actions: np.ndarray) -> None:
        """Send each worker its rows' actions and return at once."""
        self._check_open()
        if self._pending:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.asarray(actions)
        if actions.shape[0] != self.num_agents:
            raise ValueError(f"actions have {actions.shape[0]} rows, expected {self.num_agents} (agents)")
        in_shared = self.shared is not None and self.shared.holds(actions)
        if in_shared:  # the step commands carry no array
            self.shared.actions[:] = actions
        for k in range(len(self.procs)):
            self._send(k, ("step", self.slot, None if in_shared else actions[self.bounds[k] : self.bounds[k + 1]]))
        self._pending = True
        self._update_busy()

    def step_wait(self) -> StepResult:
        """The results of the last `step_async`, or EnvWorkerError within `timeout` seconds."""
        self._check_open()
        if not self._pending:
            raise RuntimeError("step_wait called without step_async")
        deadline = time.monotonic() + self.timeout
        results = [self._receive(k, deadline, "stepping") for k in range(len(self.procs))]
        self._pending = False
        self._update_busy()
        return concat_results(results) if self.shared is None else self.shared.result(results, self.bounds)

    def _update_busy(self) -> None:
        self.workers.busy = any(b._pending for b in self.users)

    def step(self, actions: np.ndarray) -> StepResult:
        self.step_async(actions)
        return self.step_wait()

    def close(self, graceful: bool = True) -> None:
        """Stop every worker once this batch and every other batch on them is closed (at once when not
        `graceful`): ask politely, then terminate, then kill what is left."""
        self._closed = True
        if not graceful or all(b._closed for b in self.users):
            self.workers.close(graceful)

    def __del__(self):
        try:
            self.close(graceful=False)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _build_all(factories: list[Callable[[], VecEnv]]) -> list[VecEnv]:
    """A shared worker's envs, one per batch (closing those built when a later one raises)."""
    envs: list[VecEnv] = []
    try:
        for factory in factories:
            envs.append(factory())
    except Exception:
        for env in envs:
            env.close()
        raise
    return envs


class EnvBatches:
    """Batches over consecutive row ranges (`batches`: list of (first row, VecEnv)), stepped in turn by a
    double-buffered `Rollout`, or all at once through the plain `VecEnv` methods."""

    def __init__(self, envs: list[VecEnv]):
        if len(envs) < 2:
            raise ValueError("EnvBatches needs at least two batches")
        starts = np.cumsum([0] + [e.num_agents for e in envs])
        self.batches: list[tuple[int, VecEnv]] = [(int(s), e) for s, e in zip(starts, envs)]
        self.num_agents = int(starts[-1])
        self.single_observation_space = envs[0].single_observation_space
        self.single_action_space = envs[0].single_action_space
        self.agents_per_env = getattr(envs[0], "agents_per_env", 1)
        for b, e in enumerate(envs[1:], 1):
            if (
                e.single_observation_space != self.single_observation_space
                or e.single_action_space != self.single_action_space
            ):
                raise ValueError(f"batch {b} has other spaces than batch 0")

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(env.reset(seed=None if seed is None else seed + b * BATCH_SEED_STRIDE))
                for b, (_, env) in enumerate(self.batches)
            ]
        )

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        parts = [actions[start : start + env.num_agents] for start, env in self.batches]
        for (_, env), part in zip(self.batches, parts):
            if hasattr(env, "step_async"):
                env.step_async(part)
        return concat_results(
            [
                env.step_wait() if hasattr(env, "step_async") else env.step(part)
                for (_, env), part in zip(self.batches, parts)
            ]
        )

    def close(self) -> None:
        for _, env in self.batches:
            env.close()
