"""Property-based: random episode-end patterns, agent counts and horizons; invariants 1-3 must hold for every
registered core and a user's own (invariant 8), in both precisions (bf16 within its stated bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carrystate.policy.cores.recurrent import LSTMCore
from tests.helpers import ALL_CORES, PRECISIONS, ScriptedEnv, assert_replays, collect, make_policy, manual_states

# every registered core, and a user's own (tests/user_core.py) that carrystate builds from its module:Class


@st.composite
def scenarios(draw):
    agents = draw(st.integers(1, 4))
    horizon = draw(st.integers(2, 6))
    rows = draw(st.integers(1, 3))
    steps = horizon * rows
    ends = {}
    for a in range(agents):
        for t in draw(st.sets(st.integers(0, steps - 1), max_size=steps)):
            ends[(a, t)] = draw(st.sampled_from(["term", "trunc"]))
    return agents, horizon, rows, ends


# scenarios drawn per core
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("core", ALL_CORES)
@SETTINGS
@given(scenarios())
def test_replay_matches_rollout_for_any_episode_ends(core, precision, sc):
    agents, horizon, rows, ends = sc
    policy = make_policy(core, precision=precision)
    env = ScriptedEnv(agents, horizon * rows, ends=ends)
    _, _, (buf,) = collect(policy, env, agents * horizon * rows, horizon)
    with torch.no_grad():
        params, values, _ = policy.sequence(buf.obs, buf.start_state, buf.starts)
        logp, _ = policy.actor.log_prob_entropy(params, buf.actions)
    assert_replays(values, buf.values, precision, atol=1e-5)
    assert_replays(logp, buf.logprobs, precision, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("core", ALL_CORES)
@SETTINGS
@given(scenarios())
def test_start_states_carry_values_for_any_episode_ends(core, precision, sc):
    agents, horizon, rows, ends = sc
    policy = make_policy(core, precision=precision)
    steps = horizon * rows
    env = ScriptedEnv(agents, steps, ends=ends)
    _, _, (buf,) = collect(policy, env, agents * steps, horizon)
    for a in range(agents):
        done = np.array([(a, t) in ends for t in range(steps)])
        before, values = manual_states(policy, env.obs_table[:steps, a], done)
        assert_replays(buf.timeline(buf.values)[a], torch.tensor(values), precision, atol=1e-5)
        for k in range(rows):
            for stored, ref in zip(buf.start_state, before[k * horizon]):
                assert_replays(stored[:, a * rows + k], ref[:, 0], precision, atol=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("core", ALL_CORES)
@SETTINGS
@given(scenarios(), st.data())
def test_perturbing_one_episode_changes_nothing_outside_it(core, precision, sc, data):
    agents, horizon, rows, ends = sc
    steps = horizon * rows
    policy = make_policy(core, precision=precision)
    a = data.draw(st.integers(0, agents - 1))
    boundaries = [-1] + sorted(t for (ag, t) in ends if ag == a) + [steps - 1]
    i = data.draw(st.integers(0, len(boundaries) - 2))
    first, last = boundaries[i] + 1, boundaries[i + 1]  # the episode spans steps first..last
    if first > last:
        return
    env_a, env_b = ScriptedEnv(agents, steps, ends=ends), ScriptedEnv(agents, steps, ends=ends)
    env_b.obs_table[first : last + 1, a] += 2.5
    _, _, (ba,) = collect(policy, env_a, agents * steps, horizon)
    _, _, (bb,) = collect(policy, env_b, agents * steps, horizon)
    outside = torch.ones(agents, steps, dtype=torch.bool)
    outside[a, first : last + 1] = False
    for name in ("values", "logprobs"):
        va, vb = ba.timeline(getattr(ba, name)), bb.timeline(getattr(bb, name))
        assert torch.equal(va[outside], vb[outside]), name
    # in training, too: the replayed outputs outside the episode are unchanged
    with torch.no_grad():
        _, ra, _ = policy.sequence(ba.obs, ba.start_state, ba.starts)
        _, rb, _ = policy.sequence(bb.obs, bb.start_state, bb.starts)
    torch.testing.assert_close(ba.timeline(ra)[outside], bb.timeline(rb)[outside], atol=1e-6, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 12),
    st.floats(0.0, 0.6),
    st.sampled_from(["bucketed", "chunked", "packed", "scan"]),
    st.integers(1, 2),
    st.integers(0, 10_000),
)
def test_every_fast_unroll_equals_the_step_loop_for_any_reset_pattern(batch, steps, density, impl, layers, seed):
    """The loop (one step at a time, state masked before each step) is the oracle: outputs, end state and the
    gradients of a loss using both, with respect to inputs, start state and weights, agree to 1e-5."""
    torch.manual_seed(seed)
    core = LSTMCore(3, 5, layers)
    x = torch.randn(batch, steps, 3, requires_grad=True)
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(batch))
    resets = torch.rand(batch, steps) < density
    results = {}
    for name in ("loop", impl):
        core.impl = name
        y, end = core.sequence(x, state, resets)
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + sum((e**2).sum() for e in end)
        results[name] = (y, *end, *torch.autograd.grad(loss, [x, *state, *core.parameters()]))
    for want, got in zip(results["loop"], results[impl]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
