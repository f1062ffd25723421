"""Issue 4: staleness diagnostics, start-state modes, burn-in, long gradient reach and the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.memory import peak_mib
from carrystate import diagnostics, replay
from carrystate.config import ConfigError, load_config
from carrystate.state import mask_state
from carrystate.trainer import Trainer
from tests.helpers import make_policy

SMALL = [
    "env.num_envs=8",
    "trainer.batch_size=1024",
    "trainer.bptt_horizon=16",
    "trainer.minibatch_size=256",
    "env.tmaze.length_min=10",
    "env.tmaze.length_max=40",
    "diagnostics.staleness_segments=16",
]


def _collected(extra=()):
    tr = Trainer(load_config(None, SMALL + list(extra)), quiet=True)
    tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    tr.learner.compute_advantages()
    return tr


def test_staleness_of_unchanged_policy_is_exactly_zero():
    tr = _collected()
    unchanged = lambda: tr.learner.weights({k: v.clone() for k, v in tr.policy.state_dict().items()})  # noqa: E731
    m = diagnostics.staleness(tr.policy, unchanged, tr.buffer, 16, None, torch.Generator().manual_seed(0))
    for key in ("state_distance", "kl_first", "kl_last", "value_gap_first", "value_gap_last"):
        assert m[f"memory/{key}"] == 0.0, key
    assert 0 <= m["memory/replay_rounding"] < 1e-5


def test_staleness_grows_with_the_update():
    tr = _collected(["trainer.learning_rate=0.01", "trainer.update_epochs=8"])
    before = tr.learner.snapshot()
    tr.learner.learn(1)
    old = lambda: tr.learner.weights(before["model"])  # noqa: E731
    m = diagnostics.staleness(tr.policy, old, tr.buffer, 16, None, torch.Generator().manual_seed(0))
    # at a segment's first step the stale state acts in full; by its last step an episode end inside the
    # segment may have cut it (KL then 0 up to rounding), so only the first step is asserted to differ
    assert m["memory/state_distance"] > 1e-3 and m["memory/kl_first"] > 1e-6 and m["memory/value_gap_first"] > 0
    assert m["memory/kl_last"] > -1e-6


def test_staleness_is_logged_every_iteration(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = Trainer(load_config(None, SMALL + ["trainer.total_timesteps=2048"]), run_dir=tmp_path, quiet=True)
    tr.train()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "memory/state_distance",
        "memory/kl_first",
        "memory/kl_last",
        "memory/value_gap_first",
        "memory/value_gap_last",
    } <= tags
    assert len(acc.Scalars("memory/kl_last")) == 2


def test_refresh_equals_stored_when_weights_did_not_change():
    tr = _collected(["trainer.start_state=refresh"])
    fresh = replay.start_states("refresh", tr.policy, tr.buffer)
    for a, b in zip(fresh, tr.buffer.start_state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_refresh_recomputes_with_new_weights_and_keeps_first_rows():
    tr = _collected(["trainer.start_state=refresh"])
    with torch.no_grad():
        for p in tr.policy.core.parameters():
            p.add_(0.1)
    fresh = replay.start_states("refresh", tr.policy, tr.buffer)
    K = tr.buffer.rows_per_agent
    first = torch.arange(tr.buffer.num_agents) * K
    assert torch.equal(fresh[0][:, first], tr.buffer.start_state[0][:, first])
    later = first + 1
    assert not torch.allclose(fresh[0][:, later], tr.buffer.start_state[0][:, later], atol=1e-4)


def test_zero_mode_replays_every_segment_from_zero_state():
    tr = _collected(["trainer.start_state=zero"])
    assert all(torch.count_nonzero(s) == 0 for s in replay.start_states("zero", tr.policy, tr.buffer))
    assert any(torch.count_nonzero(s) > 0 for s in tr.buffer.start_state), "stored states stay untouched"


def test_burn_in_steps_contribute_no_loss_and_rebuild_the_start_state():
    tr = _collected(["trainer.burn_in=6"])
    tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)  # a second rollout: its first rows have a tail
    tr.learner.compute_advantages()
    b = tr.buffer
    assert b.tail_ready
    idx = torch.arange(b.segments)
    obs_, starts_, state_, has = b.burn_in_inputs(idx)
    assert has.all() and obs_.shape[:2] == (b.segments, 6)
    # with unchanged weights the warmed-up state equals the stored start state
    with torch.no_grad():
        _, _, warmed = tr.policy.sequence(obs_, state_, starts_)
    warmed = mask_state(warmed, b.starts[:, 0])  # a segment that opens an episode starts from zeros anyway
    torch.testing.assert_close(warmed[0], b.start_state[0], atol=1e-5, rtol=0)
    # gradients of the loss never reach the burn-in steps
    b.obs.requires_grad_(True)
    k = 3  # a segment with a predecessor in the same rollout
    mb = b.minibatch(torch.tensor([k]))
    params, values = replay.replay(tr.policy, b, torch.tensor([k]), b.start_state, mb["obs"], mb["starts"])
    (params.sum() + values.sum()).backward()
    assert torch.count_nonzero(b.obs.grad[k - 1]) == 0
    assert torch.count_nonzero(b.obs.grad[k]) > 0


@pytest.mark.parametrize("core", ["lstm", "gru", "window"])
def test_chain_gradients_equal_full_backprop_over_the_chain(core):
    policy = make_policy(core)
    n, C, H = 3, 4, 8
    torch.manual_seed(1)
    obs = torch.randn(n, C, H, 3)
    resets = torch.rand(n, C, H) < 0.05
    state = tuple(torch.randn_like(s) for s in policy.initial_state(n))
    p1, v1 = policy.chain(obs, state, resets)
    g_chain = torch.autograd.grad(p1.square().sum() + v1.sum(), list(policy.parameters()))
    p2, v2, _ = policy.sequence(obs.view(n, C * H, 3), state, resets.view(n, C * H))
    g_full = torch.autograd.grad(p2.square().sum() + v2.sum(), list(policy.parameters()))
    torch.testing.assert_close(p1.view(n, C * H, -1), p2, atol=1e-5, rtol=0)
    for a, b in zip(g_chain, g_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chain_memory_stays_near_one_segment_while_full_backprop_grows():
    """Peak resident memory of one forward+backward in a fresh process (autograd hooks cannot see what
    checkpointing keeps): chaining 2 → 16 segments adds a small fraction of what plain backpropagation
    through the same 2 → 16 segments adds."""
    spec = {"rows": 64, "horizon": 64, "hidden": 256}
    chain = {C: peak_mib({**spec, "mode": "chain", "segments": C}) for C in (2, 16)}
    full = {C: peak_mib({**spec, "mode": "full", "segments": C}) for C in (2, 16)}
    assert full[16] - full[2] > 400, full  # ~75 MiB of activations per segment
    assert chain[16] - chain[2] < 0.25 * (full[16] - full[2]), (chain, full)


def test_training_runs_with_each_mode():
    for extra in (
        ["trainer.start_state=zero"],
        ["trainer.start_state=refresh"],
        ["trainer.burn_in=4"],
        ["trainer.gradient_horizon=32"],
        ["trainer.gradient_horizon=episode", "trainer.burn_in=4"],
    ):
        tr = Trainer(load_config(None, SMALL + ["trainer.total_timesteps=2048"] + extra), quiet=True)
        s = tr.train()
        assert s.global_step == 2048 and all(torch.isfinite(p).all() for p in tr.policy.parameters()), extra


def test_gradient_horizon_validation():
    with pytest.raises(ConfigError, match="gradient_horizon=24 must be a multiple of trainer.bptt_horizon=16"):
        load_config(None, SMALL + ["trainer.gradient_horizon=24"])
    with pytest.raises(ConfigError, match="spans 16 segments, which must divide the 8 segments"):
        Trainer(load_config(None, SMALL + ["trainer.gradient_horizon=256"]), quiet=True)
    with pytest.raises(ConfigError, match="trainer.burn_in=16 must be below"):
        load_config(None, SMALL + ["trainer.burn_in=16"])


def test_gradient_reach_is_cut_at_segment_boundaries_only_without_long_reach():
    tr = _collected(["env.tmaze.length_min=200", "env.tmaze.length_max=200"])  # no episode end inside
    b, H = tr.buffer, 16
    cut = diagnostics.gradient_reach(tr.policy, b, chain=1, max_lag=b.steps - 1)
    long = diagnostics.gradient_reach(tr.policy, b, chain=b.rows_per_agent, max_lag=b.steps - 1)
    assert np.all(cut[:H] > 0) and np.all(cut[H:][~np.isnan(cut[H:])] == 0)
    # with long reach the gradient crosses the boundary (it then fades as an untrained LSTM forgets)
    assert np.all(long[H : 2 * H] > 0)


def test_probe_cli_writes_plot(tmp_path, monkeypatch, capsys):
    from carrystate.cli import main

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                *SMALL,
                "env.tmaze.length_min=200",
                "env.tmaze.length_max=200",
                "trainer.total_timesteps=1024",
                "trainer.run_name=p",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["probe", "runs/p", "--out", "reach.png"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "reach.png").stat().st_size > 1000 and "gh episode" in out
