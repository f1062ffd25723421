"""Worker-process env batches (`ProcessVecEnv`) and the double-buffered rollout (`EnvBatches`)."""

from __future__ import annotations

import os
import signal
import time
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch

from carrystate.buffer import SegmentBuffer
from carrystate.config import ConfigError, load_config
from carrystate.envs import TMaze, make_env
from carrystate.envs.base import StepResult
from carrystate.envs.vector import EnvBatches, EnvWorkerError, ProcessVecEnv
from carrystate.rollout import Rollout
from carrystate.state import StateStore
from tests.helpers import HANG_S, make_policy


class HangingTMaze(TMaze):
    def step(self, actions):
        time.sleep(3600)


class FailingTMaze(TMaze):
    def step(self, actions):
        raise RuntimeError("boom in the env")


class TupleTMaze(TMaze):
    def step(self, actions):
        res = super().step(actions)
        return res.obs, res.reward, res.terminated, res.truncated, {}


class PaddedTMaze(TMaze):
    """A T-maze whose odd rows are padding on every other step (to carry `valid` through the workers)."""

    def step(self, actions):
        res = super().step(actions)
        self._t = getattr(self, "_t", 0) + 1
        res.valid = (np.arange(self.num_agents) % 2 == 0) | (self._t % 2 == 0)
        return res


@pytest.mark.parametrize("shared_memory", [True, False])
def test_worker_batch_equals_the_same_env_in_process(shared_memory):
    """Every field of every step result, through shared memory or the pipe, equals the in-process env's; the
    shared block's file is unlinked once the workers have mapped it."""
    remote = ProcessVecEnv(
        [lambda: PaddedTMaze(3, 2, 5, seed=3), lambda: TMaze(3, 2, 5, seed=3)],
        timeout=HANG_S,
        shared_memory=shared_memory,
    )
    try:
        assert remote.num_agents == 6
        assert (remote.shared is not None) == shared_memory
        if shared_memory:
            assert not os.path.exists(remote.shared.path)
        reference = [PaddedTMaze(3, 2, 5, seed=3), TMaze(3, 2, 5, seed=3)]
        obs = remote.reset()
        assert np.array_equal(obs, np.concatenate([e.reset() for e in reference]))
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(20):
            a = rng.integers(0, 2, 6)
            res = remote.step(a)
            ref = [reference[0].step(a[:3]), reference[1].step(a[3:])]
            for name in ("obs", "reward", "terminated", "truncated"):
                assert np.array_equal(getattr(res, name), np.concatenate([getattr(r, name) for r in ref])), name
            done = np.concatenate([r.terminated | r.truncated for r in ref])
            assert np.array_equal(res.final_obs[done], np.concatenate([r.final_obs for r in ref])[done])
            assert np.array_equal(res.valid, np.concatenate([ref[0].valid, np.ones(3, bool)]))
            assert res.episode_returns == ref[0].episode_returns + ref[1].episode_returns
            assert res.episode_lengths == ref[0].episode_lengths + ref[1].episode_lengths
            ended += int(done.sum())
        assert ended > 0
    finally:
        remote.close()


class EchoEnv:
    """Two agents whose observation is the action each was sent (flattened, as float32), for any action space."""

    def __init__(self, action_space):
        self.num_agents, self.single_action_space = 2, action_space
        width = int(np.prod(action_space.shape)) or 1
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)

    def reset(self, seed=None):
        return np.zeros((2, *self.single_observation_space.shape), np.float32)

    def step(self, actions):
        obs = np.asarray(actions, np.float32).reshape(2, -1)
        zero = np.zeros(2, bool)
        return StepResult(obs, np.zeros(2, np.float32), zero, zero, np.zeros_like(obs), [], [], [])

    def close(self):
        pass


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Discrete(5), gym.spaces.MultiDiscrete([3, 4]), gym.spaces.Box(-1, 1, (2, 3), np.float32)],
    ids=["discrete", "multidiscrete", "box"],
)
def test_actions_reach_the_worker_through_shared_memory_with_no_array_in_the_step_command(space):
    """With shared memory the step command carries no array and each worker's env gets its rows' actions as sent
    (echoed back as its observation); actions of another dtype than the shared field take the pipe."""
    remote = ProcessVecEnv([partial(EchoEnv, space), partial(EchoEnv, space)], timeout=HANG_S)
    sent = []
    send = remote.workers.send
    remote.workers.send = lambda k, message: (sent.append(message), send(k, message))[1]
    try:
        remote.reset()
        rng = np.random.default_rng(1)
        for _ in range(3):
            shape = (4, *space.shape)
            if isinstance(space, gym.spaces.Box):
                a = rng.uniform(-1, 1, shape).astype(np.float32)
            else:
                a = rng.integers(0, 3, shape)
            res = remote.step(a)
            assert np.array_equal(res.obs, a.reshape(4, -1).astype(np.float32))
        steps = [m for m in sent if m[0] == "step"]
        assert len(steps) == 6 and all(m[2] is None for m in steps)
        odd = rng.integers(0, 3, (4, *space.shape)).astype(np.int32)  # not the shared field's dtype
        assert np.array_equal(remote.step(odd).obs, odd.reshape(4, -1).astype(np.float32))
        assert isinstance(sent[-1][2], np.ndarray), "sent through the pipe"
    finally:
        remote.close()


def test_killed_worker_is_reported_dead_without_waiting_for_the_timeout():
    """With a timeout far beyond the test's run, the error says the worker died (not that it did not answer):
    death is seen at once, not when the timeout passes. No clock is read."""
    env = ProcessVecEnv([lambda: TMaze(2), lambda: TMaze(2)], timeout=HANG_S)
    try:
        env.reset()
        os.kill(env.procs[1].pid, signal.SIGKILL)
        env.procs[1].join()
        with pytest.raises(EnvWorkerError, match=r"worker 1 \(pid \d+\) died"):
            env.step(np.zeros(4, np.int64))
        assert not any(p.is_alive() for p in env.procs), "every worker is stopped after the failure"
    finally:
        env.close()


def test_hanging_worker_raises_a_timeout_error_naming_the_setting():
    """The claim is a bound: the worker sleeps an hour and the error comes after env.worker_timeout=0.5s, checked
    with a margin of 60 s that a loaded machine keeps."""
    env = ProcessVecEnv([lambda: TMaze(2), lambda: HangingTMaze(2)], timeout=0.5)
    try:
        env.reset()
        start = time.monotonic()
        with pytest.raises(EnvWorkerError, match=r"worker 1 .*did not answer within env.worker_timeout=0.5s"):
            env.step(np.zeros(4, np.int64))
        assert 0.5 <= time.monotonic() - start < 60
        assert not any(p.is_alive() for p in env.procs)
    finally:
        env.close()


def test_env_exception_in_worker_carries_its_traceback():
    env = ProcessVecEnv([lambda: FailingTMaze(2)], timeout=HANG_S)
    try:
        env.reset()
        with pytest.raises(EnvWorkerError, match="(?s)worker 0 .*raised while stepping.*boom in the env"):
            env.step(np.zeros(2, np.int64))
    finally:
        env.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_env_in_a_worker_returning_a_tuple_gets_an_error_naming_it_and_what_step_returns(shared_memory):
    env = ProcessVecEnv([lambda: TupleTMaze(2)], timeout=HANG_S, shared_memory=shared_memory)
    try:
        env.reset()
        with pytest.raises(
            EnvWorkerError, match="(?s)worker 0 .*raised while stepping.*TupleTMaze: step returned a tuple.*StepResult"
        ):
            env.step(np.zeros(2, np.int64))
    finally:
        env.close()


def _rollout(env, double_buffer: bool, steps=24, horizon=8, seed=0):
    policy = make_policy(obs_dim=4, num_actions=2)
    store = StateStore(policy.state_shapes)
    rollout = Rollout(env, store, seed=5, double_buffer=double_buffer)
    buf = SegmentBuffer.for_spaces(
        env.num_agents,
        env.single_observation_space,
        env.single_action_space,
        policy.initial_state(1),
        batch_size=env.num_agents * steps,
        horizon=horizon,
    )
    stats = rollout.collect(policy, buf, torch.Generator().manual_seed(seed))
    return policy, store, buf, stats


@pytest.mark.parametrize("workers", [False, True])
def test_double_buffered_rollout_fills_the_same_buffer_as_one_batch(workers):
    """T-maze observations do not depend on actions, so two halves stepped in turn and the same halves
    stepped as one batch must give the same observations, starts, values and start states (actions are
    sampled in another order, so only their consistency with the stored log-probs is compared)."""

    def halves():
        if workers:
            return [
                ProcessVecEnv([lambda: TMaze(3, 2, 6, seed=1)], timeout=HANG_S),
                ProcessVecEnv([lambda: TMaze(3, 2, 6, seed=2)], timeout=HANG_S),
            ]
        return [TMaze(3, 2, 6, seed=1), TMaze(3, 2, 6, seed=2)]

    pair, single = EnvBatches(halves()), EnvBatches(halves())
    try:
        policy, store_d, double, stats_d = _rollout(pair, double_buffer=True)
        _, store_s, one, stats_s = _rollout(single, double_buffer=False)
    finally:
        pair.close()
        single.close()
    assert sorted(store_d.sizes.items()) == [(0, 3), (3, 3)] and list(store_s.sizes.items()) == [(0, 6)]
    for name in ("obs", "starts", "terminated", "truncated", "valid"):
        assert torch.equal(getattr(double, name), getattr(one, name)), name
    for name in ("values", "final_values", "last_value"):
        assert torch.allclose(getattr(double, name), getattr(one, name), atol=1e-6), name
    for a, b in zip(double.start_state, one.start_state):
        assert torch.allclose(a, b, atol=1e-6)
    assert stats_d.steps == stats_s.steps == 24
    assert sorted(stats_d.episode_lengths) == sorted(stats_s.episode_lengths)
    # the carried state after the rollout is the same, slice by slice
    for k in range(len(store_s.get(0))):
        joined = torch.cat([store_d.get(0)[k], store_d.get(3)[k]], dim=1)
        assert torch.allclose(joined, store_s.get(0)[k], atol=1e-6)
    # stored log-probs belong to the stored actions
    with torch.no_grad():
        params, _, _ = policy.sequence(double.obs, double.start_state, double.starts)
        logp, _ = policy.actor.log_prob_entropy(params, double.actions)
    assert torch.allclose(logp, double.logprobs, atol=1e-5)


def test_config_builds_double_buffered_worker_batches():
    cfg = load_config(
        overrides=[
            "env.num_envs=4",
            "env.workers=2",
            "env.double_buffer=true",
            "trainer.batch_size=256",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=128",
        ]
    )
    env = make_env(cfg.env, seed=0)
    try:
        assert isinstance(env, EnvBatches) and env.num_agents == 4
        assert [start for start, _ in env.batches] == [0, 2]
        assert all(isinstance(sub, ProcessVecEnv) and len(sub.procs) == 2 for _, sub in env.batches)
        policy = make_policy(obs_dim=4, num_actions=2)
        _, _, buf, stats = _rollout_env(env, policy)
        assert stats.steps == 16 and buf.timeline(buf.starts)[:, 0].all()
    finally:
        env.close()


def _rollout_env(env, policy):
    store = StateStore(policy.state_shapes)
    rollout = Rollout(env, store)
    buf = SegmentBuffer.for_spaces(
        env.num_agents,
        env.single_observation_space,
        env.single_action_space,
        policy.initial_state(1),
        batch_size=env.num_agents * 16,
        horizon=16,
    )
    return rollout, store, buf, rollout.collect(policy, buf, torch.Generator().manual_seed(0))


def test_vector_settings_are_validated():
    with pytest.raises(ConfigError, match="env.double_buffer=true splits env.num_envs=3"):
        load_config(overrides=["env.num_envs=3", "env.double_buffer=true"])
    with pytest.raises(ConfigError, match="env.workers=3 cannot split evenly"):
        load_config(overrides=["env.num_envs=8", "env.workers=3"])


def _shared_and_apart(workers: int = 2):
    over = [f"env.workers={workers}", "env.num_envs=8", "env.double_buffer=true", "trainer.batch_size=128"]
    over += ["trainer.bptt_horizon=16", "trainer.minibatch_size=64"]
    return [make_env(load_config(overrides=[*over, f"env.shared_workers={s}"]).env, seed=3) for s in ("true", "false")]


def test_shared_workers_step_both_batches_in_the_same_processes_as_the_batches_apart_do():
    """env.shared_workers: the two batches' copies live in env.workers processes (not twice as many), and a
    double-buffered rollout fills the same buffer, bit for bit, as with each batch on workers of its own."""
    shared, apart = _shared_and_apart()
    try:
        (_, first), (_, second) = shared.batches
        assert first.procs is second.procs and len(first.procs) == 2
        assert len({p.pid for _, b in apart.batches for p in b.procs}) == 4
        policy = make_policy(obs_dim=4, num_actions=2)
        (_, store_s, buf_s, stats_s), (_, store_a, buf_a, stats_a) = (_rollout_env(e, policy) for e in (shared, apart))
    finally:
        shared.close()
        apart.close()
    for name in ("obs", "actions", "logprobs", "values", "rewards", "starts", "terminated", "truncated"):
        assert torch.equal(getattr(buf_s, name), getattr(buf_a, name)), name
    assert stats_s.episode_returns == stats_a.episode_returns and stats_s.steps == stats_a.steps == 16
    assert not any(p.is_alive() for _, b in shared.batches for p in b.procs), "closing the env stops its workers"


def test_shared_workers_without_worker_processes_or_double_buffering_change_nothing():
    base = ["env.num_envs=8", "env.shared_workers=true"]
    in_process = make_env(load_config(overrides=[*base, "env.double_buffer=true"]).env, seed=0)
    one_batch = make_env(load_config(overrides=[*base, "env.workers=2"]).env, seed=0)
    try:
        assert all(isinstance(b, TMaze) for _, b in in_process.batches)
        assert isinstance(one_batch, ProcessVecEnv) and len(one_batch.procs) == 2
    finally:
        in_process.close()
        one_batch.close()


def test_shared_workers_keep_each_batchs_answers_apart_in_any_order():
    """An answer read while another batch's is awaited is kept for its batch: batch 1 steps while batch 0
    resets and steps, and each gets its own results (a batch's observations after reset are its own env's)."""
    shared, apart = _shared_and_apart(workers=1)
    try:
        (_, a0), (_, a1) = shared.batches
        (_, b0), (_, b1) = apart.batches
        for x, y in ((a0, b0), (a1, b1)):
            assert np.array_equal(x.reset(seed=7).copy(), y.reset(seed=7))
        a1.step_async(np.ones(4, np.int64))
        b1.step_async(np.ones(4, np.int64))
        assert np.array_equal(a0.reset(seed=9).copy(), b0.reset(seed=9))  # its answer comes after batch 1's
        got0, want0 = a0.step(np.zeros(4, np.int64)), b0.step(np.zeros(4, np.int64))
        got1, want1 = a1.step_wait(), b1.step_wait()
        for got, want in ((got0, want0), (got1, want1)):
            assert np.array_equal(got.obs, want.obs) and np.array_equal(got.reward, want.reward)
    finally:
        shared.close()
        apart.close()


def test_a_shared_worker_that_dies_stops_both_batches_with_an_error_naming_it():
    shared, apart = _shared_and_apart()
    apart.close()
    try:
        (_, first), (_, second) = shared.batches
        shared.reset(seed=0)
        os.kill(first.procs[1].pid, signal.SIGKILL)
        first.procs[1].join()
        with pytest.raises(EnvWorkerError, match=r"worker 1 \(pid \d+\) died"):
            first.step(np.zeros(4, np.int64))
        with pytest.raises(EnvWorkerError, match="the workers were stopped"):
            second.step(np.zeros(4, np.int64))
        assert not any(p.is_alive() for p in first.procs), "every worker is stopped after the failure"
    finally:
        shared.close()


def test_training_runs_with_workers_and_double_buffer(tmp_path):
    from carrystate.trainer import Trainer

    cfg = load_config(
        overrides=[
            "env.num_envs=8",
            "env.workers=2",
            "env.double_buffer=true",
            "trainer.batch_size=512",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=256",
            "trainer.total_timesteps=1024",
            "trainer.update_epochs=1",
        ]
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "run", quiet=True)
    try:
        trainer.train()
        assert trainer.global_step == 1024
        assert sorted(trainer.store.sizes) == [0, 4]
    finally:
        trainer.env.close()
