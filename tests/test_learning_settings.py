"""The learning settings of issue 13: observation normalisation, return scaling, a separate critic core, the
forget-gate bias and the clip/entropy schedules. Each keeps the state invariants (replay equals rollout, exact
resets) and computes what an independent reference computes."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from carrystate.config import ConfigError, PolicyConfig, TrainerConfig, load_config
from carrystate.normalize import ReturnScale, RunningMeanStd
from carrystate.optim import hidden_matrices
from carrystate.policy import Policy
from carrystate.trainer import Trainer
from tests.helpers import SMALL_TMAZE as SMALL
from tests.helpers import ScriptedEnv, collect, make_policy


def test_running_mean_std_equals_the_statistics_of_everything_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 17, 1, 40)]
    rms = RunningMeanStd((4,))
    for b in batches:
        rms.update(torch.as_tensor(b))
    every = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean.numpy(), every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.var.numpy(), every.var(0), rtol=1e-10)
    assert float(rms.count) == len(every)


def test_return_scale_divides_by_the_std_of_discounted_returns_restarting_after_episode_ends():
    rng = np.random.default_rng(1)
    agents, steps, gamma = 3, 20, 0.9
    scale = ReturnScale(agents, gamma, clip=100.0)
    seen, running = [], np.zeros(agents)
    for _ in range(2):  # two rollouts: the running return carries over between them
        rewards = rng.normal(size=(agents, steps)).astype(np.float32)
        done = rng.random((agents, steps)) < 0.15
        valid = rng.random((agents, steps)) < 0.9
        for t in range(steps):  # reference: VecNormalize's per-step recursion
            running = running * gamma + rewards[:, t]
            seen += list(running[valid[:, t]])
            running = running * ~done[:, t]
        out = scale(torch.as_tensor(rewards), torch.as_tensor(done), torch.as_tensor(valid))
        np.testing.assert_allclose(out.numpy(), rewards / np.sqrt(np.var(seen) + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(scale.running.numpy(), running, rtol=1e-12)


@pytest.mark.parametrize(
    "settings", [{"critic": "separate"}, {"obs_norm": True}, {"critic": "separate", "obs_norm": True}]
)
def test_replay_matches_rollout_with_separate_critic_and_normalised_observations(settings):
    policy = make_policy("lstm", **settings)
    if policy.obs_norm is not None:  # statistics far from the identity, so normalisation matters
        policy.update_obs_norm(torch.randn(500, 3) * 4.0 + 2.0)
    env = ScriptedEnv(3, 32, ends={(0, 5): "term", (1, 12): "trunc", (2, 20): "term"})
    _, store, (buf,) = collect(policy, env, 96, 8)
    assert len(store.get(0)) == policy.num_state_tensors == (4 if settings.get("critic") == "separate" else 2)
    assert buf.starts[:, 1:].any()
    with torch.no_grad():
        params, values, _ = policy.sequence(buf.obs, buf.start_state, buf.starts)
        logprobs, _ = policy.actor.log_prob_entropy(params, buf.actions)
    torch.testing.assert_close(values, buf.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(logprobs, buf.logprobs, atol=1e-5, rtol=0)


def test_separate_critic_values_do_not_depend_on_the_actors_core():
    """(That its state is carried and zeroed exactly is test_state's episode-end test, run with critic=separate.)"""
    env = ScriptedEnv(3, 4)
    policy = make_policy("lstm", critic="separate")
    with torch.no_grad():
        before = policy.step(torch.as_tensor(env.obs_table[0]), policy.initial_state(3))[1]
        for p in policy.core.parameters():
            p.add_(0.5)
        after = policy.step(torch.as_tensor(env.obs_table[0]), policy.initial_state(3))[1]
    torch.testing.assert_close(before, after)


def test_observation_statistics_are_frozen_during_the_update_and_then_take_the_rollouts_observations():
    tr = Trainer(load_config(None, SMALL + ["policy.obs_norm=true", "trainer.total_timesteps=512"]), quiet=True)
    seen = []
    learn = tr.learner.learn

    def spy(*args, **kwargs):  # the statistics the update replays with are those the rollout acted with
        seen.append(tr.policy.obs_norm.stats.count.item())
        out = learn(*args, **kwargs)
        seen.append(tr.policy.obs_norm.stats.count.item())
        return out

    tr.learner.learn = spy
    tr.train()
    assert seen == [0.0, 0.0]
    obs = tr.buffer.obs[tr.buffer.valid].double()
    stats = tr.policy.obs_norm.stats
    assert stats.count.item() == len(obs) == 512
    torch.testing.assert_close(stats.mean, obs.mean(0))
    torch.testing.assert_close(stats.var, obs.var(0, unbiased=False))


def test_forget_gate_bias_starts_at_the_setting_and_every_other_bias_at_zero():
    policy = make_policy("lstm", layers=2, hidden=8, forget_bias=1.5, chrono_tmax=0)
    for layer in range(2):
        b_ih = getattr(policy.core.rnn, f"bias_ih_l{layer}")
        assert torch.equal(b_ih[8:16], torch.full((8,), 1.5))
        assert torch.count_nonzero(b_ih[:8]) == torch.count_nonzero(b_ih[16:]) == 0
        assert torch.count_nonzero(getattr(policy.core.rnn, f"bias_hh_l{layer}")) == 0
        w = getattr(policy.core.rnn, f"weight_hh_l{layer}")  # [4H, H] with orthonormal columns
        torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)


def test_clip_and_entropy_coefficients_move_linearly_to_their_final_values():
    tr = Trainer(
        load_config(
            None,
            SMALL
            + [
                "trainer.clip_coef=0.3",
                "trainer.clip_coef_final=0.1",
                "trainer.ent_coef=0.02",
                "trainer.ent_coef_final=0.0",
                "trainer.total_timesteps=2048",
            ],
        ),
        quiet=True,
    )
    tr.train()
    logged = [(h["charts/clip_coef"], h["charts/ent_coef"]) for h in tr.history]
    expect = [(0.3 - 0.2 * k / 4, 0.02 - 0.02 * k / 4) for k in range(4)]  # iteration k of 4 starts at k/4
    np.testing.assert_allclose(logged, expect, rtol=1e-12)


def test_muon_takes_the_critic_cores_hidden_matrices_too():
    cfg = PolicyConfig(critic="separate", hidden_size=8, encoder_sizes=[16, 16])
    policy = Policy(cfg, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2))
    names = hidden_matrices(policy)
    for prefix in ("", "critic_"):
        assert f"{prefix}encoder.net.0.weight" not in names  # the input layer stays with Adam
        assert {
            f"{prefix}encoder.net.2.weight",
            f"{prefix}core.rnn.weight_hh_l0",
            f"{prefix}core.rnn.weight_ih_l0",
        } <= set(names)


def test_token_observations_are_not_normalised():
    with pytest.raises(ConfigError, match="policy.obs_norm=true does not apply to policy.encoder=token"):
        load_config(None, ["policy.encoder=token", "policy.obs_norm=true"])
    assert TrainerConfig().norm_reward in (True, False)


def test_lstm_starts_with_chrono_gates_by_default():
    """Tallec & Ollivier's chrono initialisation, the LSTM's default (T_max 128): forget-gate biases log(u) with u
    in [1, 127], input-gate biases their negative, the other biases 0. `chrono_spread=log` spreads log(u) evenly."""
    hidden, t_max = 256, 128
    for spread in ("uniform", "log"):
        core = make_policy("lstm", hidden=hidden, chrono_spread=spread).core.rnn
        i, f, rest = core.bias_ih_l0[:hidden], core.bias_ih_l0[hidden : 2 * hidden], core.bias_ih_l0[2 * hidden :]
        assert 0 <= f.min() and f.max() <= math.log(t_max - 1)
        assert torch.equal(i, -f) and torch.count_nonzero(rest) == 0 and torch.count_nonzero(core.bias_hh_l0) == 0
        memory = f.exp()  # each unit's starting memory length u
        if spread == "uniform":  # u uniform in [1, 127]: its mean is 64, and half the units keep 64 steps or more
            assert 54 < memory.mean() < 74 and 0.4 < (memory >= 64).float().mean() < 0.6
        else:  # log u uniform in [0, log 127]: half the units keep fewer than sqrt(127) ≈ 11 steps
            assert 0.4 < (memory < math.sqrt(t_max - 1)).float().mean() < 0.6


def test_forget_bias_without_turning_chrono_off_is_refused_naming_both_settings():
    with pytest.raises(ConfigError, match=r"policy.forget_bias=1.0 needs policy.chrono_tmax=0"):
        load_config(None, ["policy.forget_bias=1.0"])
