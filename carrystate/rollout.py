"""One collection phase: the policy acts with frozen weights until the `SegmentBuffer` is full.

`Rollout` owns what must persist between phases besides the recurrent state: the env batch, its current
observation, which agents start an episode at that observation, and which rows are padding. The recurrent
state itself lives in the `StateStore` (one slice per env batch, keyed by `slice_start` + the batch's first
row) and is carried into the next phase untouched.

When an episode starts. A row's next observation opens an episode where its previous step ended one
(terminated or truncated) and also where the row was padding and becomes valid again (an agent that left its
episode early and rejoins when its env copy resets). In both cases its state is zeroed right after the step,
before the policy sees that observation, and the step is flagged in `buffer.starts` so training replays the
same reset.

Double buffering. An env with `batches` (`envs.vector.EnvBatches`) is stepped as alternating lanes: while
one batch's env step runs (in worker processes, via `step_async`/`step_wait`), the policy computes the next
batch's actions. Each lane writes only its own agents' rows of the buffer, at the same step index, so the
buffer layout is the one the single-batch path fills.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from carrystate.buffer import SegmentBuffer
from carrystate.envs.base import EnvError, StepResult, VecEnv, check_finite, check_step_result, env_label
from carrystate.policy import Policy
from carrystate.precision import frozen
from carrystate.state import StateStore


@dataclass
class RolloutStats:
    steps: int = 0  # rollout steps taken (agent-steps = steps × agents)
    env_seconds: float = 0.0  # wall time spent waiting for env steps (the rest of the phase is the policy)
    seconds: float = 0.0  # wall time of the whole phase
    interrupted: bool = False
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    videos: list = field(default_factory=list)  # an evaluation's filmed episodes (video.Video), in order

    def episodes(self) -> dict[str, list]:
        """The episodes that ended, as plain lists (a checkpoint's JSON)."""
        return {"returns": self.episode_returns, "lengths": self.episode_lengths, "success": self.success}


@dataclass
class _Step:
    """One lane's step between sending its actions and recording what the env answered."""

    t: int
    obs: torch.Tensor
    starts: torch.Tensor
    valid: np.ndarray
    action: torch.Tensor
    logprob: torch.Tensor | None
    value: torch.Tensor
    state: tuple
    res: StepResult | None  # the env's answer; None until received from an asynchronous env
    final_values: torch.Tensor | None = None  # at truncated rows: the value of the final observation


@dataclass
class _Lane:
    """One env batch that the rollout steps: its rows of the whole batch and its `StateStore` key."""

    env: VecEnv
    rows: slice  # rows of the whole batch (= agents of the buffer) this batch owns
    key: int  # StateStore slice key
    pending: _Step | None = None  # the step sent to the env and not yet finished


class _CallStopped(BaseException):
    """Raised by the watch in the thread whose env call outlived env.max_slow_warnings; a BaseException, so that an
    env's own `except Exception` does not swallow it."""


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Have `thread` raise `exc` at its next Python instruction (None: withdraw one that it has not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None if exc is None else ctypes.py_object(exc))


@dataclass(slots=True, eq=False)
class _Call:
    """An env call in progress, as the watch sees it."""

    what: str  # "<env>: <method>"
    bound: float  # env.worker_timeout
    limit: int | None  # env.max_slow_warnings (None: one warning, then wait)
    thread: int  # the calling thread, where the watch raises _CallStopped
    deadline: float  # when the watch next acts on this call
    warned: int = 0
    stopped: bool = False  # _CallStopped was sent to `thread`

    def stop_message(self) -> str:
        return (
            f"{self.what} did not return within {self.bound * (self.limit + 1):g}s (env.worker_timeout="
            f"{self.bound:g}s × (env.max_slow_warnings={self.limit} + 1))"
        )


class _SlowCallWatch:
    """One daemon thread for the process that watches env calls running past their bound: an env stepped in this
    process has no deadline of its own (worker processes do), so a hang there would otherwise be silent. It warns
    once per call; with a limit (env.max_slow_warnings) every bound, and past the limit it raises `_CallStopped` in
    the calling thread (the call turns it into an EnvError) or, where that thread does not get back to Python
    within one more bound (stuck in native code), ends the process. Registering a call is a dict insertion, ending
    it a lock and a dict removal; the thread starts on first use."""

    def __init__(self):
        self.calls: dict[int, _Call] = {}  # id → call
        self.started = False
        self.lock = threading.Lock()

    def begin(self, what: str, bound: float, limit: int | None = None) -> _Call:
        call = _Call(what, bound, limit, threading.get_ident(), time.monotonic() + bound)
        self.calls[id(call)] = call
        if not self.started:
            with self.lock:
                if not self.started:
                    threading.Thread(target=self._run, name="carrystate-env-watch", daemon=True).start()
                    self.started = True
        return call

    def end(self, call: _Call) -> None:
        with self.lock:  # after this the watch raises nothing in the call's thread
            self.calls.pop(id(call), None)
            if call.stopped:  # sent, and perhaps not raised yet: it must not be raised after the call
                _raise_in(call.thread, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            for call in list(self.calls.values()):
                if call.deadline <= now:
                    with self.lock:
                        if id(call) in self.calls:
                            self._act(call)

    def _act(self, call: _Call) -> None:
        """The call's deadline passed: warn, stop it, or (stopped and still running) end the process."""
        if call.stopped:
            print(
                f"carrystate: training stopped: {call.stop_message()}, nor gave control back within a further "
                f"{call.bound:g}s; the process exits, and the last good checkpoint is left as it was",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)
        if call.limit is not None and call.warned >= call.limit:
            call.stopped, call.deadline = True, call.deadline + call.bound
            _raise_in(call.thread, _CallStopped)
            return
        call.warned += 1
        call.deadline = float("inf") if call.limit is None else call.deadline + call.bound
        then = (
            "still waiting. An env stepped in the training process has no deadline: with env.workers > 0 a step "
            "that hangs stops training with an error after env.worker_timeout, and env.max_slow_warnings stops "
            "it here after that many warnings"
            if call.limit is None
            else f"still waiting; training stops after {call.bound * (call.limit + 1):g}s (env.max_slow_warnings)"
        )
        warnings.warn(
            f"{call.what} has not returned after {call.bound * call.warned:g}s (env.worker_timeout); {then}",
            RuntimeWarning,
            stacklevel=1,
        )


_slow_calls = _SlowCallWatch()


class Rollout:
    def __init__(
        self,
        env: VecEnv,
        store: StateStore,
        device: torch.device | str = "cpu",
        slice_start: int = 0,
        seed: int | None = None,
        double_buffer: bool | None = None,
        slow_env_warning_s: float | None = None,
        max_slow_warnings: int | None = None,
    ):
        """`double_buffer`: alternate the env's `batches` (default: whenever the env has them); False steps
        the env as one batch. `slow_env_warning_s` (the trainer passes env.worker_timeout): warn, naming the
        env, when an env stepped in this process has not returned a call after so many seconds; with
        `max_slow_warnings` (env.max_slow_warnings) every so many seconds, and after that many warnings stop the
        call with an EnvError (`_SlowCallWatch`)."""
        self.env, self.store, self.slice_start = env, store, slice_start
        self.slow_env_warning_s, self.max_slow_warnings = slow_env_warning_s, max_slow_warnings
        self.device = torch.device(device)
        self.double_buffer = bool(getattr(env, "batches", None)) if double_buffer is None else double_buffer
        self.lanes = [
            _Lane(sub, slice(start, start + sub.num_agents), slice_start + start)
            for start, sub in lane_slices(env, self.double_buffer)
        ]
        for lane in self.lanes:
            if lane.key not in store.sizes:
                store.register(lane.key, lane.env.num_agents)
        self.agents_per_env = getattr(env, "agents_per_env", 1)
        self.obs_shape = tuple(env.single_observation_space.shape)
        self.seed = seed
        self.stats = RolloutStats()  # the statistics of the rollout in progress (or last collected)
        self.new_episodes()
        space = env.single_action_space
        self._box = isinstance(space, gym.spaces.Box)
        self._low, self._high = (space.low, space.high) if self._box else (None, None)

    def state_dict(self) -> dict:
        """What the next step depends on besides the carried state: the current observation, which agents start
        an episode there, which rows are padding (tensors), and the episodes the rollout in progress has seen."""
        return {
            "obs": torch.from_numpy(np.ascontiguousarray(self.obs)),
            "starts": torch.from_numpy(self.starts.copy()),
            "valid": torch.from_numpy(self.valid.copy()),
            "episodes": self.stats.episodes(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.obs, self.starts = state["obs"].numpy().copy(), state["starts"].numpy().copy()
        self.valid = state["valid"].numpy().copy() if "valid" in state else np.ones(len(self.obs), bool)  # format 1
        episodes = state["episodes"]
        self.stats = RolloutStats(
            episode_returns=list(episodes["returns"]),
            episode_lengths=list(episodes["lengths"]),
            success=list(episodes["success"]),
        )

    def new_episodes(self) -> None:
        """Reset the env batch and zero every agent's carried state (fresh episodes everywhere)."""
        self.obs = np.array(self.env.reset(seed=self.seed))  # [agents, *obs_shape]
        self.starts = np.ones(self.env.num_agents, dtype=bool)  # [agents] the current obs opens an episode
        self.valid = np.ones(self.env.num_agents, dtype=bool)  # [agents] the current obs is not padding
        if self.obs.shape != (self.env.num_agents, *self.obs_shape):
            raise EnvError(
                f"{env_label(self.env)}: reset returned observations of shape {self.obs.shape}, "
                f"expected {(self.env.num_agents, *self.obs_shape)}"
            )
        space = self.env.single_observation_space
        check_finite("obs from reset", self.obs, env_label(self.env), self.agents_per_env, space=space)
        for lane in self.lanes:
            lane.pending = None
            self.store.reset(lane.key, torch.ones(lane.env.num_agents, dtype=torch.bool))

    def _env_call(self, env: VecEnv, method: str, *args):
        """Call `env.<method>(*args)`, counting its wall time as env time and naming the env and method
        in an EnvError if it raises."""
        t0 = time.perf_counter()
        call = None
        if self.slow_env_warning_s is not None and not hasattr(env, "step_async"):  # workers have deadlines
            call = _slow_calls.begin(f"{env_label(env)}: {method}", self.slow_env_warning_s, self.max_slow_warnings)
        try:
            try:
                return getattr(env, method)(*args)
            finally:  # inside the outer try: a _CallStopped raised until the call is ended is caught below
                if call is not None:
                    _slow_calls.end(call)
        except _CallStopped:
            _slow_calls.end(call)  # in case it was raised inside the first `end`, before the call was removed
            raise EnvError(call.stop_message()) from None
        except EnvError:
            raise
        except Exception as err:
            raise EnvError(f"{env_label(env)}: {method} raised {type(err).__name__}: {err}") from err
        finally:
            self._env_seconds += time.perf_counter() - t0

    def _send(self, lane: _Lane, actions: np.ndarray) -> StepResult | None:
        """Start the env step of one lane: asynchronously where the env can, else step it now."""
        if hasattr(lane.env, "step_async"):
            self._env_call(lane.env, "step_async", actions)
            return None
        return self._env_call(lane.env, "step", actions)

    def _receive(self, lane: _Lane, res: StepResult | None) -> StepResult:
        if res is None:
            res = self._env_call(lane.env, "step_wait")
        check_step_result(
            res,
            lane.env.num_agents,
            self.obs_shape,
            self.agents_per_env,
            env_label(lane.env),
            lane.rows.start,
            self.env.single_observation_space,
        )
        return res

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device)

    def _env_actions(self, action: torch.Tensor) -> np.ndarray:
        a = action.cpu().numpy()
        return np.clip(a, self._low, self._high) if self._box else a

    def _act(
        self, lane: _Lane, t: int, policy: Policy, generator: torch.Generator, deterministic: bool = False
    ) -> None:
        """Step t of one lane up to sending its actions to the env: the one policy step that collection
        and evaluation share (sampled actions, or the most likely ones when `deterministic`)."""
        rows = lane.rows
        obs, starts = self._tensor(self.obs[rows]), self._tensor(self.starts[rows])
        valid = self.valid[rows].copy()
        state = self.store.get(lane.key)  # already zero where starts: reset happened when the episode ended
        params, value, state = policy.step(obs, state)
        if deterministic:
            action, logprob = policy.actor.mode(params), None
        else:
            action, logprob = policy.actor.act(params, generator)
        res = self._send(lane, self._env_actions(action))
        lane.pending = _Step(t, obs, starts, valid, action, logprob, value, state, res)

    def _finish(self, lane: _Lane, policy: Policy, stats: RolloutStats, buffer: SegmentBuffer | None = None) -> None:
        """Collect the lane's pending env step, carry its state (zeroed where an episode ended), write the step
        into `buffer` (collection; then also the value of the final observation where a time limit cut an
        episode, which training bootstraps from) and move on to the next observation."""
        step, lane.pending = lane.pending, None
        res = step.res = self._receive(lane, step.res)
        if buffer is not None and res.truncated.any():
            rows = self._tensor(np.flatnonzero(res.truncated))
            final_obs = self._tensor(res.final_obs)[rows]
            _, v_final, _ = policy.step(final_obs, tuple(s[:, rows] for s in step.state))
            step.final_values = torch.zeros_like(step.value)
            step.final_values[rows] = v_final
        starts_next, valid_next = episode_starts(res, step.valid)
        self.store.set(lane.key, step.state)
        if starts_next.any():
            self.store.reset(lane.key, self._tensor(starts_next))
        if buffer is not None:  # before the next observation overwrites the arrays step.obs and step.starts view
            self._record(lane, step, buffer)
        self.obs[lane.rows], self.starts[lane.rows], self.valid[lane.rows] = res.obs, starts_next, valid_next
        stats.episode_returns += res.episode_returns
        stats.episode_lengths += res.episode_lengths
        stats.success += res.success

    def _record(self, lane: _Lane, step: _Step, buffer: SegmentBuffer) -> None:
        """Write a finished step into the lane's rows of the buffer."""
        res = step.res
        if step.final_values is not None:  # elsewhere zero (begin_rollout)
            buffer.write(step.t, agents=lane.rows, final_values=step.final_values)
        buffer.write(
            step.t,
            agents=lane.rows,
            obs=step.obs,
            actions=step.action,
            logprobs=step.logprob,
            values=step.value,
            starts=step.starts,
            valid=step.valid,
            rewards=res.reward,
            terminated=res.terminated,
            truncated=res.truncated,
        )

    @torch.no_grad()
    def collect(
        self,
        policy: Policy,
        buffer: SegmentBuffer,
        generator: torch.Generator,
        should_stop=lambda: False,
    ) -> RolloutStats:
        """Fill `buffer`: from its first step, or, where a stop cut its rollout short (0 < buffer.position <
        steps), from `buffer.position` on, adding to `self.stats` (that rollout's statistics so far). `should_stop()`
        is asked before every step; once it turns true, collection returns with `interrupted` set and
        `buffer.position` at the first step not taken (steps already sent to the env are always finished, so
        the buffer, the carried state and the env all stand at that step, and a later call continues exactly).

        Order per step t, lane by lane: finish the lane's step t-1 (wait for its env), then compute and send
        its actions for step t. With two lanes, lane 1's env steps while lane 0 is finished and acted on."""
        if not 0 < buffer.position < buffer.steps:
            self.stats = RolloutStats()
            buffer.begin_rollout()
        stats = self.stats
        stats.interrupted = False
        self._env_seconds, started = 0.0, time.perf_counter()
        t = buffer.position
        # one autocast region for the whole rollout, whose weights are frozen: under bf16 each weight is cast once
        with frozen(policy.precision, next(policy.parameters()).device):
            try:
                for t in range(buffer.position, buffer.steps + 1):
                    if t == buffer.steps or should_stop():
                        break
                    for lane in self.lanes:
                        if lane.pending is not None:
                            self._finish(lane, policy, stats, buffer)
                        state = self.store.get(lane.key)
                        if t % buffer.horizon == 0:
                            buffer.write_start_state(t, state, agents=lane.rows)
                        if buffer.burn_in and t % buffer.horizon == buffer.horizon - buffer.burn_in:
                            buffer.write_burn_in_state(t, state, agents=lane.rows)
                        self._act(lane, t, policy, generator)
                for lane in self.lanes:
                    if lane.pending is not None:
                        self._finish(lane, policy, stats, buffer)
            finally:
                for lane in self.lanes:  # after an error the pending step is lost; never finish it twice
                    lane.pending = None
        buffer.position = stats.steps = t
        stats.interrupted = t < buffer.steps
        stats.env_seconds += self._env_seconds
        stats.seconds += time.perf_counter() - started
        if stats.interrupted:
            return stats
        for lane in self.lanes:
            _, buffer.last_value[lane.rows], _ = policy.step(
                self._tensor(self.obs[lane.rows]), self.store.get(lane.key)
            )
        return stats

    @torch.no_grad()
    def run_episodes(
        self,
        policy: Policy,
        episodes: int,
        generator: torch.Generator,
        deterministic: bool = False,
        max_steps: int = 1_000_000,
        until: Callable[[], bool] | None = None,
    ) -> RolloutStats:
        """Step the policy (weights frozen, state carried and reset exactly as in collection, through the same
        step) until `episodes` episodes have ended, and `until()` is true where given (a video waiting for its
        copy's episodes, video.py: the statistics still hold the first `episodes`), or `max_steps` steps have
        passed; nothing is recorded."""
        stats = RolloutStats()
        self._env_seconds, started = 0.0, time.perf_counter()
        for t in range(max_steps):
            if len(stats.episode_returns) >= episodes and (until is None or until()):
                break
            for lane in self.lanes:
                self._act(lane, t, policy, generator, deterministic)
                self._finish(lane, policy, stats)
            stats.steps = t + 1
        stats.env_seconds, stats.seconds = self._env_seconds, time.perf_counter() - started
        for name in ("episode_returns", "episode_lengths", "success"):
            setattr(stats, name, getattr(stats, name)[:episodes])
        return stats


def lane_slices(env: VecEnv, double_buffer: bool | None = None) -> list[tuple[int, VecEnv]]:
    """The env batches a rollout steps in turn, each with the first row it owns: the env's `batches` when
    double buffered (by default whenever it has them), else the env as one batch at row 0."""
    batches = getattr(env, "batches", None)
    if double_buffer is None:
        double_buffer = bool(batches)
    if double_buffer and not batches:
        raise ValueError(
            f"a double-buffered rollout needs an env with batches (env.double_buffer=true "
            f"builds one); {type(env).__name__} has none"
        )
    return list(batches) if double_buffer else [(0, env)]


def episode_starts(res: StepResult, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of `res.obs` open an episode (their state must be zero before it is read), and which are
    valid: an episode starts after an episode end, and where a padding row becomes valid again (an agent
    rejoining when its env copy resets). `valid` [agents] is the validity of the previous observation."""
    valid_next = np.ones(len(valid), dtype=bool) if res.valid is None else np.asarray(res.valid, bool)
    return res.terminated | res.truncated | (valid_next & ~valid), valid_next
