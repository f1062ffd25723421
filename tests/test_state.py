"""The StateStore and the rollout's handling of episode ends: exact, per agent, carried across rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carrystate.state import StateStore
from tests.helpers import ScriptedEnv, collect, make_policy, manual_states


def test_reset_zeroes_exactly_the_masked_agents():
    store = StateStore(((2, 4), (2, 4)))
    store.register(0, 5)
    state = tuple(torch.randn(2, 5, 4) for _ in range(2))
    store.set(0, state)
    store.reset(0, torch.tensor([False, True, False, False, True]))
    for got, orig in zip(store.get(0), state):
        assert torch.equal(got[:, [1, 4]], torch.zeros(2, 2, 4))
        assert torch.equal(got[:, [0, 2, 3]], orig[:, [0, 2, 3]])


def test_slices_are_independent():
    store = StateStore(((1, 3),))
    store.register(0, 2)
    store.register(2, 2)
    store.set(0, (torch.ones(1, 2, 3),))
    store.set(2, (torch.full((1, 2, 3), 2.0),))
    store.reset(2, torch.tensor([True, True]))
    assert torch.equal(store.get(0)[0], torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="overlaps"):
        store.register(1, 2)


def test_store_never_holds_a_graph():
    store = StateStore(((1, 3),))
    store.register(0, 2)
    x = torch.randn(1, 2, 3, requires_grad=True)
    store.set(0, (x * 2,))
    assert store.get(0)[0].grad_fn is None and not store.get(0)[0].requires_grad


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_state_zeroed_at_first_step_of_next_episode_without_offset(critic):
    """Agent 1 ends its episode at step 5 while agents 0 and 2 continue: agent 1's step 6 is computed from
    zero state (not step 7), its step 5 still from its carried state, and the others are untouched. With a
    separate critic the values come from the critic's own core, whose state is carried and zeroed alike."""
    steps = 12
    env = ScriptedEnv(3, steps, ends={(1, 5): "term"})
    policy = make_policy("lstm", critic=critic)
    _, _, (buf,) = collect(policy, env, 3 * steps, steps)
    values = buf.timeline(buf.values)
    for agent in range(3):
        done = np.array([agent == 1 and t == 5 for t in range(steps)])
        _, ref = manual_states(policy, env.obs_table[:steps, agent], done)
        np.testing.assert_allclose(values[agent].numpy(), ref, atol=1e-6)
    # independently: step 6 of agent 1 equals a fresh start on that observation
    with torch.no_grad():
        _, v0, _ = policy.step(torch.as_tensor(env.obs_table[6:7, 1]), policy.initial_state(1))
        _, v_carried, _ = policy.step(torch.as_tensor(env.obs_table[5:6, 1]), policy.initial_state(1))
    assert float(values[1, 6]) == pytest.approx(float(v0), abs=1e-6)
    assert float(values[1, 5]) != pytest.approx(float(v_carried), abs=1e-4)  # step 5 still used memory
    assert buf.timeline(buf.starts)[1].nonzero().flatten().tolist() == [0, 6]
    assert buf.timeline(buf.starts)[0].nonzero().flatten().tolist() == [0]


def test_state_carries_across_rollouts():
    """The second rollout starts from the state the first one ended with, not from zeros."""
    steps = 8
    env = ScriptedEnv(2, 2 * steps, ends={(0, 3): "trunc"})
    policy = make_policy("lstm")
    _, store, (b1, b2) = collect(policy, env, 2 * steps, steps, rollouts=2)
    assert all(s.abs().sum() > 0 for s in b2.start_state)
    for agent in range(2):
        done = np.array([agent == 0 and t == 3 for t in range(2 * steps)])
        before, values = manual_states(policy, env.obs_table[: 2 * steps, agent], done)
        for stored, ref in zip(b2.start_state, before[steps]):
            torch.testing.assert_close(stored[:, agent], ref[:, 0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(b2.timeline(b2.values)[agent].numpy(), values[steps:], atol=1e-6)
