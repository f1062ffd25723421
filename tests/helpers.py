"""Test doubles: a scripted env batch whose observations and episode ends are fixed in advance; child
processes that never outlive their test."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from carrystate import registry
from carrystate.buffer import SegmentBuffer
from carrystate.config import PolicyConfig
from carrystate.envs.base import EpisodeTracker, StepResult
from carrystate.policy import Policy
from carrystate.rollout import Rollout
from carrystate.state import StateStore

ROOT = Path(__file__).resolve().parents[1]
USER_CORE = "tests.user_core:LeakyRNN"  # a memory core of a user's own (the example of docs/custom.md)
# the invariant tests run over every one (invariant 8), and over the cores CARRYSTATE_TEST_CORES names
# (module:Class, comma-separated): how a user checks a core of their own against the same guarantees
ALL_CORES = [*registry.CORES, USER_CORE, *filter(None, os.environ.get("CARRYSTATE_TEST_CORES", "").split(","))]

PRECISIONS = ("fp32", "bf16")  # trainer.precision: the invariant tests run in both
# bf16 replay against the rollout: |replay - rollout| <= BF16_BOUND × max(1, largest |entry| compared), the bound
# README's invariants state (a few bf16 roundings, 2^-8 each, of the products behind an entry)
BF16_BOUND = 2**-6


def assert_replays(actual: torch.Tensor, expected: torch.Tensor, precision: str, atol: float) -> None:
    """Replay equals rollout: within `atol` in fp32, within the stated bound in bf16."""
    if precision == "fp32":
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
        return
    gap, scale = float((actual - expected).abs().max()), max(1.0, float(expected.abs().max()))
    assert gap <= BF16_BOUND * scale, f"bf16: |replay - rollout| {gap:.3g} > 2^-6 × {scale:.3g}"


# a small T-maze run: 8 agents, 512-step rollouts of 16-step segments, 2 epochs of 128-step minibatches
SMALL_TMAZE = [
    "env.num_envs=8",
    "trainer.batch_size=512",
    "trainer.bptt_horizon=16",
    "trainer.minibatch_size=128",
    "trainer.update_epochs=2",
    "env.tmaze.length_min=3",
    "env.tmaze.length_max=20",
]


class ScriptedEnv:
    """Observations come from a table (independent of actions); `ends[(agent, step)]` is 'term' or
    'trunc' for the step at which that agent's episode ends. `final_table[step]` is the final observation."""

    def __init__(
        self,
        num_agents: int,
        steps: int,
        obs_dim: int = 3,
        ends: dict | None = None,
        seed: int = 0,
        num_actions: int = 3,
    ):
        rng = np.random.default_rng(seed)
        self.num_agents = num_agents
        self.obs_table = rng.normal(size=(steps + 1, num_agents, obs_dim)).astype(np.float32)
        self.final_table = rng.normal(size=(steps + 1, num_agents, obs_dim)).astype(np.float32)
        self.reward_table = rng.normal(size=(steps, num_agents)).astype(np.float32)
        self.ends = dict(ends or {})
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Discrete(num_actions)
        self.t = 0
        self.tracker = EpisodeTracker(num_agents)

    def reset(self, seed=None):
        self.t = 0
        return self.obs_table[0].copy()

    def step(self, actions):
        t = self.t
        term = np.array([self.ends.get((a, t)) == "term" for a in range(self.num_agents)])
        trunc = np.array([self.ends.get((a, t)) == "trunc" for a in range(self.num_agents)])
        self.t += 1
        reward = self.reward_table[t]
        returns, lengths = self.tracker.update(reward, term | trunc)
        return StepResult(
            self.obs_table[t + 1].copy(), reward.copy(), term, trunc, self.final_table[t + 1].copy(), returns, lengths
        )

    def close(self):
        pass


def make_policy(
    core: str = "lstm",
    obs_dim: int = 3,
    num_actions: int = 3,
    hidden: int = 8,
    layers: int = 1,
    seed: int = 0,
    impl: str = "auto",
    precision: str = "fp32",
    **settings,
) -> Policy:
    """A small policy; `settings` are further PolicyConfig fields (critic, obs_norm, forget_bias, ...). A window
    core sees 5 steps unless told: fewer than the tests' segments, so that it both reads frames carried in from
    the segment before and forgets."""
    if core == "window":
        settings.setdefault("window", 5)
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        core=core, hidden_size=hidden, num_layers=layers, encoder_sizes=[16], sequence_impl=impl, **settings
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    return Policy(cfg, obs_space, gym.spaces.Discrete(num_actions), precision=precision)


def collect(policy: Policy, env, batch_size: int, horizon: int, rollouts: int = 1, seed: int = 0, **options):
    """Run `rollouts` collection phases (`options`: further Rollout arguments); returns (rollout, store,
    [buffer per phase])."""
    store = StateStore(policy.state_shapes)
    rollout = Rollout(env, store, **options)
    gen = torch.Generator().manual_seed(seed)
    buffers = []
    for _ in range(rollouts):
        buf = SegmentBuffer.for_spaces(
            env.num_agents,
            env.single_observation_space,
            env.single_action_space,
            policy.initial_state(1),
            batch_size=batch_size,
            horizon=horizon,
        )
        rollout.collect(policy, buf, gen)
        buffers.append(buf)
    return rollout, store, buffers


def manual_states(policy: Policy, obs: np.ndarray, done: np.ndarray):
    """Independent reference: step one agent through `obs` [T, obs_dim] with plain Python, zeroing its
    state after every step where done[t]. Returns the state held *before* each step and the values."""
    state = policy.initial_state(1)
    before, values = [], []
    with torch.no_grad():
        for t in range(len(obs)):
            before.append(tuple(s.clone() for s in state))
            _, v, state = policy.step(torch.as_tensor(obs[t : t + 1]), state)
            values.append(float(v))
            if done[t]:
                state = tuple(torch.zeros_like(s) for s in state)
    return before, values


def outputs_and_gradients(core, x, state, resets, unroll=None) -> list[torch.Tensor]:
    """y, the end state, and the gradients of x, the start state and the weights of one unroll of `core`
    (`unroll(x, state, resets)`, by default `core.sequence`). The loss weights every output differently,
    so each gradient path (y, h_T, c_T) is checked on its own."""
    y, end = (unroll or core.sequence)(x, state, resets)
    weight = torch.linspace(-1, 1, y.shape[-1], device=y.device)
    loss = (y * weight).square().sum() + (end[0] ** 3).sum() - (2 * end[1]).sum()
    return [y, *end, *torch.autograd.grad(loss, [x, *state, *core.parameters()])]


def stop_at(tr, phase: str, iteration: int, index: int) -> None:
    """Ask `tr` to stop, as a SIGINT does, just before rollout step `index` (phase collect) or optimizer step
    `index` (phase update) of the iteration that follows `iteration` completed ones: the seam is the
    `should_stop` that each phase asks before every step."""

    def stopping(should_stop):
        calls = itertools.count()

        def ask() -> bool:
            if tr.iteration == iteration and next(calls) == index:
                tr.stop.request("SIGINT")
            return should_stop()

        return ask

    if phase == "collect":
        collect = tr.rollout.collect
        tr.rollout.collect = lambda policy, buffer, gen, should_stop: collect(
            policy, buffer, gen, stopping(should_stop)
        )
    else:
        learn = tr.learner.learn
        tr.learner.learn = lambda number, should_stop: learn(number, stopping(should_stop))


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str] | None = None, **popen) -> Iterator[subprocess.Popen]:
    """`python *args` in a session of its own (default env: this one with the checkout first on PYTHONPATH),
    stdout and stderr piped as text. On the way out, pass or fail, its whole process group (the child and what
    it started: env workers, torchrun's ranks, a compiler) is killed and reaped, so no test leaves one behind."""
    if env is None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group that `proc` leads (started with start_new_session) and reap `proc`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


# The longest any test waits for an event before it calls the wait a hang: far beyond what a loaded machine needs
# (a test waits for the event, not for this bound; it only keeps a hang from lasting for ever).
HANG_S = 600


def wait_for(event: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Return once `event()` is true; fail if `proc` exits first (with its output) or after HANG_S."""
    deadline = time.monotonic() + HANG_S
    while not event():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {HANG_S}s: taken for a hang")
        time.sleep(0.05)
