"""ARCHITECTURE.md invariants 1-6, each on segments that contain episode ends, several agents, and more
segments than agents (every agent fills several consecutive rows); 1-3 over every registered core and a user's
own (invariant 8), in both precisions (`trainer.precision`: bf16 within its stated bound, `assert_replays`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carrystate import ppo, registry
from carrystate.config import load_config
from carrystate.trainer import Trainer
from tests.helpers import ALL_CORES, PRECISIONS, ScriptedEnv, assert_replays, collect, make_policy, manual_states

AGENTS, HORIZON, ROWS_PER_AGENT = 3, 8, 3
BATCH = AGENTS * HORIZON * ROWS_PER_AGENT  # 72 agent-steps: 9 segments, 3 per agent, 24 steps per agent
STEPS = BATCH // AGENTS
# Episode ends inside segments, at segment ends, on the first step of a segment, both kinds.
ENDS = {
    (0, 4): "term",
    (0, 7): "trunc",
    (0, 8): "term",
    (0, 19): "term",
    (1, 11): "trunc",
    (1, 15): "term",
    (2, 23): "term",
    (2, 2): "trunc",
}


# every registered core, and a user's own (tests/user_core.py) that carrystate builds from its module:Class

STATELESS = "core=none carries no state"


@pytest.fixture(params=ALL_CORES)
def core(request):
    return request.param


@pytest.fixture(params=PRECISIONS)
def precision(request):
    return request.param


def _scripted(core, rollouts=1, layers=1, impl="auto", precision="fp32"):
    policy = make_policy(core, layers=layers, impl=impl, precision=precision)
    env = ScriptedEnv(AGENTS, STEPS * rollouts, ends=ENDS)
    rollout, store, buffers = collect(policy, env, BATCH, HORIZON, rollouts)
    return policy, env, store, buffers


def _row(agent, k):
    return agent * ROWS_PER_AGENT + k


# each core with every CPU unroll that runs it (the LSTM's and GRU's); a core with a sequence of its own runs it
# under auto (the config refuses the rest: test_config, test_policy)
UNROLLS = ["chunked", "packed", "bucketed", "loop", "scan"]


@pytest.mark.parametrize(
    "core, impl, precision",
    [(c, "auto", p) for p in PRECISIONS for c in ALL_CORES]
    + [
        (c, u, p)
        for p in PRECISIONS
        for u in UNROLLS
        for c in registry.UNROLLS[u].cores
        if registry.UNROLLS[u].bf16 or p == "fp32"
    ],
)
def test_replay_matches_rollout_across_episode_end(core, impl, precision):
    for layers in (1, 2):
        policy, _, _, (buf,) = _scripted(core, layers=layers, impl=impl, precision=precision)
        assert buf.starts[:, 1:].any(), "segments must contain episode starts after their first step"
        with torch.no_grad():
            params, values, _ = policy.sequence(buf.obs, buf.start_state, buf.starts)
            logprobs, _ = policy.actor.log_prob_entropy(params, buf.actions)
        assert_replays(values, buf.values, precision, atol=1e-5)
        assert_replays(logprobs, buf.logprobs, precision, atol=1e-5)


def test_segment_start_state_equals_state_carried_from_previous_segment(core, precision):
    if core == "none":
        pytest.skip(f"{STATELESS}: no start state to compare")
    policy, env, _, (buf,) = _scripted(core, precision=precision)
    for agent in range(AGENTS):
        done = np.array([(agent, t) in ENDS for t in range(STEPS)])
        before, _ = manual_states(policy, env.obs_table[:STEPS, agent], done)
        for k in range(ROWS_PER_AGENT):
            for stored, ref in zip(buf.start_state, before[k * HORIZON]):
                # the reference runs batch 1, the rollout batch 3: equal up to matmul rounding
                assert_replays(stored[:, _row(agent, k)], ref[:, 0], precision, atol=1e-6)
        # and the replayed end state of row k is the stored start state of row k+1
        for k in range(ROWS_PER_AGENT - 1):
            r = _row(agent, k)
            with torch.no_grad():
                _, _, end = policy.sequence(
                    buf.obs[r : r + 1], tuple(s[:, r : r + 1] for s in buf.start_state), buf.starts[r : r + 1]
                )
            nxt = (
                torch.zeros(1, dtype=torch.bool) if not done[(k + 1) * HORIZON - 1] else torch.ones(1, dtype=torch.bool)
            )
            for e, s in zip(end, buf.start_state):
                expect = torch.zeros_like(e) if nxt else e
                assert_replays(s[:, r + 1 : r + 2], expect, precision, atol=1e-6)


def test_segment_boundary_stops_gradient_but_not_values(core, precision):
    if core == "none":
        pytest.skip(f"{STATELESS}: nothing, value or gradient, can cross a segment boundary")
    policy, _, _, (buf,) = _scripted(core, precision=precision)
    agent, k = 2, 0  # agent 2's rows 0 and 1 are one episode across the boundary (no end at step 7)
    r = _row(agent, k)
    assert not buf.starts[r + 1, 0] and buf.start_state[0][:, r + 1].abs().sum() > 0, "values must carry"
    assert all(not s.requires_grad and s.grad_fn is None for s in buf.start_state)
    obs = buf.obs[r : r + 2].clone().requires_grad_(True)
    state = tuple(s[:, r : r + 2] for s in buf.start_state)
    _, values, _ = policy.sequence(obs, state, buf.starts[r : r + 2])
    values[1].sum().backward()  # the loss of segment k+1 only
    assert torch.count_nonzero(obs.grad[0]) == 0
    assert torch.count_nonzero(obs.grad[1]) > 0


def test_episodes_isolated_in_rollout_and_training(core, precision):
    # agent 0's episode ends at step 4 (inside row 0); perturb steps 0..4 of that episode only
    policy = make_policy(core, precision=precision)
    env_a = ScriptedEnv(AGENTS, STEPS, ends=ENDS)
    env_b = ScriptedEnv(AGENTS, STEPS, ends=ENDS)
    env_b.obs_table[:5, 0] += 3.0
    _, _, (buf_a,) = collect(policy, env_a, BATCH, HORIZON)
    _, _, (buf_b,) = collect(policy, env_b, BATCH, HORIZON)
    tl = buf_a.timeline
    # rollout: later episodes of agent 0 and all of the other agents are bit-identical
    assert not torch.equal(tl(buf_a.values)[0, :5], buf_b.timeline(buf_b.values)[0, :5])
    assert torch.equal(tl(buf_a.values)[0, 5:], buf_b.timeline(buf_b.values)[0, 5:])
    assert torch.equal(tl(buf_a.values)[1:], buf_b.timeline(buf_b.values)[1:])
    assert torch.equal(tl(buf_a.logprobs)[0, 5:], buf_b.timeline(buf_b.logprobs)[0, 5:])
    # training: the replay of row 0 gives identical outputs after the in-segment reset, and the loss of the
    # next episode has exactly zero gradient with respect to the previous episode's inputs
    state = tuple(s[:, 0:1] for s in buf_b.start_state)
    with torch.no_grad():
        _, v_a, _ = policy.sequence(buf_a.obs[0:1], tuple(s[:, 0:1] for s in buf_a.start_state), buf_a.starts[0:1])
        _, v_b, _ = policy.sequence(buf_b.obs[0:1], state, buf_b.starts[0:1])
    assert not torch.equal(v_a[0, :5], v_b[0, :5])
    assert torch.equal(v_a[0, 5:], v_b[0, 5:])
    obs = buf_b.obs[0:1].clone().requires_grad_(True)
    _, v_b, _ = policy.sequence(obs, state, buf_b.starts[0:1])
    v_b[0, 5:].sum().backward()
    assert torch.count_nonzero(obs.grad[0, :5]) == 0
    assert torch.count_nonzero(obs.grad[0, 5:]) > 0


def test_truncated_step_bootstraps_from_final_observation():
    policy, env, _, (buf,) = _scripted("lstm")
    agent, t = 1, 11  # truncated at step 11
    done = np.array([(agent, s) in ENDS for s in range(STEPS)])
    before, values = manual_states(policy, env.obs_table[:STEPS, agent], done)
    # independent: state after step t (before its reset), applied to the final observation
    with torch.no_grad():
        _, _, after = policy.step(torch.as_tensor(env.obs_table[t : t + 1, agent]), before[t])
        _, v_final, _ = policy.step(torch.as_tensor(env.final_table[t + 1 : t + 2, agent]), after)
    tl = buf.timeline
    assert tl(buf.truncated)[agent, t] and not tl(buf.terminated)[agent, t]
    torch.testing.assert_close(tl(buf.final_values)[agent, t], v_final[0], atol=1e-6, rtol=0)
    assert tl(buf.final_values)[agent, 15] == 0.0  # terminated at 15: nothing to bootstrap
    gamma, lam = 0.9, 0.8
    adv, _ = ppo.gae(
        tl(buf.rewards),
        tl(buf.values),
        tl(buf.terminated),
        tl(buf.truncated),
        tl(buf.final_values),
        buf.last_value,
        gamma,
        lam,
    )
    r = float(env.reward_table[t, agent])
    assert float(adv[agent, t]) == pytest.approx(r + gamma * float(v_final) - values[t], abs=1e-5)
    assert float(adv[agent, 15]) == pytest.approx(float(env.reward_table[15, agent]) - values[15], abs=1e-5)


def _reference_gae(rewards, values, term, trunc, final_values, last_value, gamma, lam):
    """Plain-Python GAE over one agent's whole timeline."""
    T = len(rewards)
    adv = [0.0] * T
    running = 0.0
    for t in reversed(range(T)):
        if term[t]:
            next_v, cont = 0.0, 0.0
        elif trunc[t]:
            next_v, cont = final_values[t], 0.0
        else:
            next_v, cont = (values[t + 1] if t + 1 < T else last_value), 1.0
        delta = rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * cont * running
        adv[t] = running
    return adv


def test_gae_over_segments_equals_gae_over_agent_timeline():
    cfg = load_config(
        None,
        [
            "env.num_envs=4",
            "trainer.batch_size=512",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=128",
            "env.tmaze.length_min=3",
            "env.tmaze.length_max=9",
            "trainer.norm_reward=false",  # the reference below reads the buffer's (raw) rewards
        ],
    )
    tr = Trainer(cfg, quiet=True)
    b = tr.buffer
    tr.rollout.collect(tr.policy, b, tr.parts.generators.sample)
    tr.learner.compute_advantages()
    # with these sizes every agent has 8 rows of 16 steps and episodes straddle row ends
    assert b.rows_per_agent == 8
    g, lam = cfg.trainer.gamma, cfg.trainer.gae_lambda
    for a in range(4):
        rows = [a * b.rows_per_agent + k for k in range(b.rows_per_agent)]
        cat = lambda x, rows=rows: torch.cat([x[r] for r in rows]).tolist()  # noqa: E731
        ref = _reference_gae(
            cat(b.rewards),
            cat(b.values),
            cat(b.terminated),
            cat(b.truncated),
            cat(b.final_values),
            float(b.last_value[a]),
            g,
            lam,
        )
        assert np.allclose(cat(b.advantages), ref, atol=1e-5)
    # a row's last step bootstraps across the segment end: its advantage is not forced to zero
    assert (b.advantages[:, -1] != 0).all()


def test_every_segment_trains_update_epochs_times():
    epochs = 3
    cfg = load_config(
        None,
        [
            "env.num_envs=4",
            "trainer.batch_size=512",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=64",
            f"trainer.update_epochs={epochs}",
        ],
    )
    tr = Trainer(cfg, quiet=True)
    tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    tr.learner.compute_advantages()
    tr.buffer.obs[:, 0, 0] = torch.arange(tr.buffer.segments, dtype=torch.float32) + 100.0  # tag each row
    seen = []
    real_sequence, real_step = tr.policy.sequence, tr.learner.optimizer.step
    steps = []

    def spy_sequence(obs, state, resets, **kw):
        seen.extend((obs[:, 0, 0] - 100).long().tolist())
        return real_sequence(obs, state, resets, **kw)

    tr.policy.sequence = spy_sequence
    tr.learner.optimizer.step = lambda *a, **k: (steps.append(1), real_step(*a, **k))
    tr.learner.learn(1)
    assert sorted(seen) == sorted(list(range(tr.buffer.segments)) * epochs)
    assert len(steps) == epochs * tr.buffer.segments // (64 // 16)
    # each epoch is a full pass: the first `segments` replays cover every segment once
    assert sorted(seen[: tr.buffer.segments]) == list(range(tr.buffer.segments))
