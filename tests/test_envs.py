"""Built-in memory tasks and the gymnasium adapter honour the VecEnv contract (same-step autoreset)."""

from __future__ import annotations

import numpy as np
import pytest

from carrystate.envs import DelayedRecall, GymVecEnv, TMaze


def _play(env, policy_fn, steps):
    obs = env.reset(seed=3)
    log = []
    for _ in range(steps):
        a = policy_fn(obs)
        res = env.step(a)
        log.append((obs, a, res))
        obs = res.obs
    return log


def test_tmaze_cue_only_at_first_step_and_reward_for_cued_turn():
    env = TMaze(16, length_min=3, length_max=7, seed=0)
    memory = np.zeros(16, dtype=np.int64)
    started = np.ones(16, dtype=bool)
    lengths, successes = [], []
    obs = env.reset(seed=1)
    for _ in range(200):
        cue_visible = obs[:, :2].sum(1) == 1
        assert np.array_equal(cue_visible, started), "the cue shows exactly at an episode's first step"
        memory[started] = obs[started, :2].argmax(1)
        res = env.step(memory)  # a perfect-memory policy
        lengths += res.episode_lengths
        successes += res.success
        assert np.all(res.reward[res.terminated] == 1.0) and np.all(res.reward[~res.terminated] == 0.0)
        assert np.all(res.final_obs[res.terminated] == 0.0), "the terminal observation is blank"
        started, obs = res.terminated, res.obs
    assert set(lengths) == {L + 2 for L in range(3, 8)}, "corridor lengths cover the whole range"
    assert successes and all(s == 1.0 for s in successes)


def test_tmaze_without_memory_is_at_chance():
    env = TMaze(256, 4, 4, seed=0)
    succ = []
    for _, _, res in _play(env, lambda o: np.zeros(256, dtype=np.int64), 60):
        succ += res.success
    assert 0.4 < np.mean(succ) < 0.6


def test_recall_rewards_naming_the_shown_symbol():
    env = DelayedRecall(32, num_symbols=5, delay_min=2, delay_max=4, seed=0)
    obs = env.reset()
    memory = obs[:, :5].argmax(1)
    rewards = []
    for _ in range(100):
        res = env.step(memory.copy())
        rewards += res.success
        memory = np.where(res.terminated, res.obs[:, :5].argmax(1), memory)
        assert np.all(res.final_obs[res.terminated] == 0.0), "the terminal observation is blank"
    assert rewards and all(r == 1.0 for r in rewards)


def test_builtin_env_rejects_bad_actions():
    env = TMaze(4)
    env.reset()
    with pytest.raises(ValueError, match="outside Discrete"):
        env.step(np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        env.step(np.array([0, 1]))


def test_builtin_env_state_roundtrip_reproduces_future():
    a, b = TMaze(8, 2, 9, seed=0), TMaze(8, 2, 9, seed=99)
    a.reset()
    for _ in range(5):
        a.step(np.zeros(8, dtype=np.int64))
    b.reset()
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        ra, rb = a.step(np.ones(8, dtype=np.int64)), b.step(np.ones(8, dtype=np.int64))
        assert np.array_equal(ra.obs, rb.obs) and np.array_equal(ra.reward, rb.reward)


def test_gym_same_step_autoreset_delivers_final_obs_and_wastes_no_action():
    env = GymVecEnv("CartPole-v1", 3, seed=0)
    obs = env.reset(seed=0)
    ended = 0
    for _ in range(300):
        res = env.step(np.zeros(3, dtype=np.int64))  # always push left: episodes end in ~10 steps
        done = res.terminated | res.truncated
        for row in np.flatnonzero(done):
            ended += 1
            assert not np.array_equal(res.final_obs[row], res.obs[row])
            assert abs(res.final_obs[row][2]) > 0.2 or abs(res.final_obs[row][0]) > 2.4, "final obs is terminal"
            assert np.all(np.abs(res.obs[row]) <= 0.05), "next obs is a fresh reset state"
        # every step advanced every env: no step with an ignored action
        assert np.all(np.abs(res.obs[~done] - obs[~done]).sum(1) > 0)
        obs = res.obs
    assert ended > 20


def test_hide_velocity_keeps_position_and_angle():
    full, hidden = GymVecEnv("CartPole-v1", 2, seed=5), GymVecEnv("CartPole-v1", 2, hide_velocity=True, seed=5)
    o_full, o_hid = full.reset(), hidden.reset()
    assert o_hid.shape == (2, 2) and np.array_equal(o_hid, o_full[:, [0, 2]])
    for _ in range(5):
        a = np.array([1, 0])
        assert np.array_equal(hidden.step(a).obs, full.step(a).obs[:, [0, 2]])


def test_gym_adapter_errors_name_the_cause():
    with pytest.raises(ValueError, match="not a registered gymnasium id"):
        GymVecEnv("CartPol-v1", 2)
    with pytest.raises(ValueError, match="hide_velocity is not defined for 'Blackjack-v1'"):
        GymVecEnv("Blackjack-v1", 2, hide_velocity=True)
