"""Policy pieces: action heads against torch.distributions, cores (lstm, gru, none) against step-by-step."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from carrystate.buffer import SegmentBuffer
from carrystate.config import PolicyConfig
from carrystate.policy import Policy, unroll
from carrystate.policy.cores.feedforward import FeedForwardCore
from carrystate.policy.cores.recurrent import GRUCore, LSTMCore
from carrystate.policy.cores.window import WindowCore
from carrystate.policy.heads import make_head
from carrystate.policy.kernels import triton_scan
from carrystate.rollout import Rollout
from carrystate.state import StateStore, mask_state
from tests.helpers import ScriptedEnv

RECURRENT = {"lstm": LSTMCore, "gru": GRUCore}


def test_discrete_head_matches_categorical():
    head = make_head(5, gym.spaces.Discrete(4))
    params = head(torch.randn(7, 5))
    a = head.sample(params, torch.Generator().manual_seed(0))
    logp, ent = head.log_prob_entropy(params, a)
    ref = Categorical(logits=params)
    torch.testing.assert_close(logp, ref.log_prob(a))
    torch.testing.assert_close(ent, ref.entropy())


def test_multidiscrete_head_is_sum_of_independent_categoricals():
    head = make_head(5, gym.spaces.MultiDiscrete([3, 2, 4]))
    params = head(torch.randn(6, 5)) * 30
    a = head.sample(params, torch.Generator().manual_seed(0))
    assert a.shape == (6, 3) and (a[:, 0] < 3).all() and (a[:, 1] < 2).all()
    logp, ent = head.log_prob_entropy(params, a)
    parts = params.split([3, 2, 4], -1)
    ref_logp = sum(Categorical(logits=p).log_prob(a[:, i]) for i, p in enumerate(parts))
    ref_ent = sum(Categorical(logits=p).entropy() for p in parts)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(ent, ref_ent)


def test_categorical_act_samples_softmax_frequencies_and_scores_its_samples():
    """Gumbel-max sampling: over 200k draws per row the action frequencies match softmax(params) (multinomial
    standard error ~0.001), for a single and a multi-discrete head, and act's log-probs equal the head's own
    scoring of the same actions."""
    gen = torch.Generator().manual_seed(3)
    for space, nvec in ((gym.spaces.Discrete(4), [4]), (gym.spaces.MultiDiscrete([3, 2]), [3, 2])):
        head = make_head(5, space)
        params = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0.1][: sum(nvec)], [0.0, 0.0, 3.0, -2.0, 1.0][: sum(nvec)]])
        reps = 200_000
        a, logp = head.act(params.repeat_interleave(reps, 0), gen)
        torch.testing.assert_close(logp, head.log_prob_entropy(params.repeat_interleave(reps, 0), a)[0])
        a = a.view(2, reps, -1)
        for i, part in enumerate(params.split(nvec, -1)):
            want = torch.softmax(part, -1)  # [2, n]
            got = torch.stack([torch.bincount(a[r, :, i], minlength=nvec[i]).float() / reps for r in range(2)])
            assert (got - want).abs().max() < 0.006, (got, want)


def test_cpp_gumbel_max_picks_what_the_torch_ops_pick_from_the_same_noise(monkeypatch):
    """The rollout's one-choice sampling in C++ (heads_cpu.cpp) against the torch ops it replaces: from the same
    log-probabilities and uniform numbers (some exactly 0, whose noise is -inf) the same actions, ties to the
    first, a NaN row's first NaN as torch's argmax, and the chosen log-probabilities bit for bit; and `act` on
    the CPU returns the same as with the kernel switched off, from the same generator seed."""
    from carrystate.policy.kernels import cpu

    if cpu.get() is None:
        pytest.skip("the CPU kernels are not built here")
    gen = torch.Generator().manual_seed(5)
    params = torch.randn(4096, 9, generator=gen) * 3
    params[0] = 0.0  # all tied: the noise decides
    params[1, 4] = float("nan")
    logp = torch.log_softmax(params, -1)
    uniform = torch.rand(params.shape, generator=gen)
    uniform[2:40, 3] = 0.0
    got_a, got_logp = cpu.gumbel_max(logp, uniform)
    want_a = (logp - torch.log(-torch.log(uniform))).argmax(-1)
    assert torch.equal(got_a, want_a)
    torch.testing.assert_close(got_logp, logp.gather(-1, want_a[:, None]).squeeze(-1), rtol=0, atol=0, equal_nan=True)
    assert got_a[1] == 0 and torch.isnan(logp[1]).all(), "a NaN in a row makes its whole softmax NaN: first wins"

    head = make_head(5, gym.spaces.Discrete(9))
    params = head(torch.randn(64, 5)).detach()
    with_kernel = head.act(params, torch.Generator().manual_seed(7))
    monkeypatch.setattr(cpu, "gumbel_max", lambda *args: None)
    without = head.act(params, torch.Generator().manual_seed(7))
    assert torch.equal(with_kernel[0], without[0]) and torch.equal(with_kernel[1], without[1])


def test_gaussian_head_matches_normal():
    head = make_head(5, gym.spaces.Box(-1, 1, (2,), np.float32))
    with torch.no_grad():
        head.log_std.copy_(torch.tensor([0.3, -0.5]))
    params = head(torch.randn(8, 5))
    a = head.sample(params, torch.Generator().manual_seed(0))
    logp, ent = head.log_prob_entropy(params, a)
    mean, log_std = params.chunk(2, -1)
    ref = Normal(mean, log_std.exp())
    torch.testing.assert_close(logp, ref.log_prob(a).sum(-1))
    torch.testing.assert_close(ent, ref.entropy().sum(-1))


@pytest.mark.parametrize("kind", ["lstm", "gru", "none"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("impl", ["chunked", "packed", "bucketed", "loop", "scan"])
def test_sequence_with_resets_equals_stepping(kind, layers, impl):
    if kind == "none" and (impl != "chunked" or layers > 1):
        pytest.skip("the feed-forward core has no unroll and one layer")
    if impl == "scan" and kind == "gru":
        with pytest.raises(ValueError, match="sequence_impl=scan is written for core=lstm"):
            GRUCore(4, 6, layers, impl)
        return
    torch.manual_seed(0)
    core = FeedForwardCore(4, 6) if kind == "none" else RECURRENT[kind](4, 6, layers, impl)
    B, T = 5, 11
    x = torch.randn(B, T, 4)
    resets = torch.rand(B, T) < 0.2
    state = tuple(torch.randn_like(s) for s in core.initial_state(B))
    with torch.no_grad():
        y_seq, end_seq = core.sequence(x, state, resets)
        ys, s = [], state
        for t in range(T):
            y, s = core.step(x[:, t], mask_state(s, resets[:, t]))
            ys.append(y)
    torch.testing.assert_close(y_seq, torch.stack(ys, 1), atol=1e-6, rtol=0)
    for a, b in zip(end_seq, s):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", ["packed", "bucketed", "loop", "scan"])
def test_sequence_gradients_equal_chunked(impl):
    torch.manual_seed(0)
    core = LSTMCore(4, 6, 2)
    x = torch.randn(6, 9, 4, requires_grad=True)
    resets = torch.rand(6, 9) < 0.25
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(6))
    grads = {}
    for name in ("chunked", impl):
        core.impl = name
        y, end = core.sequence(x, state, resets)
        loss = (y**2).sum() + sum((e**3).sum() for e in end)
        grads[name] = torch.autograd.grad(loss, [x, *state, *core.parameters()])
    for a, b in zip(grads["chunked"], grads[impl]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _nan_input(rows=4, steps=7):
    """x [rows, T, 4] with one NaN at row 1, step 2, and which outputs it must make non-finite: row 1 from step
    2 on (nothing resets it), no other row and no earlier step (as torch's own LSTM and GRU do)."""
    torch.manual_seed(0)
    x = torch.randn(rows, steps, 4)
    x[1, 2, 0] = float("nan")
    poisoned = torch.zeros(rows, steps, dtype=torch.bool)
    poisoned[1, 2:] = True
    return x, poisoned


def _check_poisoned(y: torch.Tensor, poisoned: torch.Tensor) -> None:
    assert (~torch.isfinite(y[poisoned])).all(), "a NaN input came out finite"
    assert torch.isfinite(y[~poisoned]).all(), "a NaN input reached another row or an earlier step"


@pytest.mark.parametrize(
    "impl, kind",
    [(name, kind) for name in unroll.names() for kind in ("lstm", "gru") if kind in unroll.UNROLLS[name].cores],
)
def test_nan_input_comes_out_non_finite_from_every_unroll(impl, kind):
    if impl == "triton" and (why := triton_scan.why_unavailable(torch.device("cpu"), 16)):
        pytest.skip(why)
    core = RECURRENT[kind](4, 16, 2, impl)
    x, poisoned = _nan_input()
    state = core.initial_state(4)
    with torch.no_grad():
        y, end = core.sequence(x, state, torch.zeros(poisoned.shape, dtype=torch.bool))
    _check_poisoned(y, poisoned)
    for s in end:  # [layers, rows, hidden]: row 1's end state in every layer
        _check_poisoned(s.transpose(0, 1), poisoned[:, -1:].expand(-1, s.shape[0]))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_nan_input_comes_out_non_finite_from_the_rollout_step(kind):
    """The rollout's step (for an LSTM on the CPU: the C++ kernel) carries a NaN on in the state."""
    core = RECURRENT[kind](4, 16, 2)
    x, poisoned = _nan_input()
    state, ys = core.initial_state(4), []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = core.step(x[:, t], state)
            ys.append(y)
    _check_poisoned(torch.stack(ys, 1), poisoned)


def test_reset_at_first_step_ignores_given_state():
    core = LSTMCore(3, 4)
    x = torch.randn(2, 5, 3)
    state = tuple(torch.randn_like(s) for s in core.initial_state(2))
    resets = torch.zeros(2, 5, dtype=torch.bool)
    resets[:, 0] = True
    with torch.no_grad():
        y1, _ = core.sequence(x, state, resets)
        y2, _ = core.sequence(x, core.initial_state(2), torch.zeros_like(resets))
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("space", [gym.spaces.MultiDiscrete([3, 2]), gym.spaces.Box(-2, 2, (3,), np.float32)])
def test_replay_matches_rollout_for_other_action_spaces(space):
    env = ScriptedEnv(2, 16, ends={(0, 5): "term", (1, 9): "trunc"})
    env.single_action_space = space
    policy = Policy(PolicyConfig(hidden_size=8, encoder_sizes=[8]), env.single_observation_space, space)
    store = StateStore(policy.state_shapes)
    rollout = Rollout(env, store)
    shape, dtype = ((2,), torch.long) if isinstance(space, gym.spaces.MultiDiscrete) else ((3,), torch.float32)
    buf = SegmentBuffer(
        2,
        32,
        8,
        obs_shape=(3,),
        obs_dtype=torch.float32,
        action_shape=shape,
        action_dtype=dtype,
        state_template=policy.initial_state(1),
    )
    rollout.collect(policy, buf, torch.Generator().manual_seed(0))
    with torch.no_grad():
        params, values, _ = policy.sequence(buf.obs, buf.start_state, buf.starts)
        logp, _ = policy.actor.log_prob_entropy(params, buf.actions)
    torch.testing.assert_close(logp, buf.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, buf.values, atol=1e-5, rtol=0)


def test_muon_takes_hidden_matrices_and_adam_the_rest():
    from carrystate.config import TrainerConfig
    from carrystate.optim import hidden_matrices, make_optimizer

    policy = Policy(
        PolicyConfig(hidden_size=8, encoder_sizes=[8, 8]), gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    )
    names = hidden_matrices(policy)
    assert names == ["encoder.net.2.weight", "core.rnn.weight_ih_l0", "core.rnn.weight_hh_l0"]
    opt = make_optimizer(policy, TrainerConfig(optimizer="muon", learning_rate=0.018))
    muon, adam = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.Adam)
    assert len(muon.param_groups[0]["params"]) + len(adam.param_groups[0]["params"]) == len(list(policy.parameters()))
    before = {n: p.clone() for n, p in policy.named_parameters()}
    params, values, _ = policy.sequence(
        torch.randn(4, 5, 3), policy.initial_state(4), torch.zeros(4, 5, dtype=torch.bool)
    )
    (params.sum() + values.sum()).backward()
    opt.step()
    assert all(
        not torch.equal(before[n], p)
        for n, p in policy.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    )


def test_fused_adam_takes_the_same_steps_as_adams_reference_loop():
    """make_optimizer's Adam is fused on the CPU (trainer.fused_adam, the default); over five steps it must move
    every weight as the per-tensor loop (foreach=False, fused=False) does, from the same gradients."""
    from carrystate.config import TrainerConfig
    from carrystate.optim import make_optimizer

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(hidden_size=8), gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
    reference = copy.deepcopy(policy)
    assert not make_optimizer(policy, TrainerConfig(fused_adam=False)).defaults["fused"]
    opt = make_optimizer(policy, TrainerConfig(learning_rate=0.01))
    assert opt.defaults["fused"]
    ref = torch.optim.Adam(reference.parameters(), lr=0.01, eps=TrainerConfig().adam_eps, foreach=False)
    for _ in range(5):
        x = torch.randn(4, 5, 3)
        for model, o in ((policy, opt), (reference, ref)):
            o.zero_grad()
            params, values, _ = model.sequence(x, model.initial_state(4), torch.zeros(4, 5, dtype=torch.bool))
            (params.square().sum() + values.square().sum()).backward()
            o.step()
    for (name, p), q in zip(policy.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_one_entry_multidiscrete_head_matches_categorical():
    """MultiDiscrete([n]) takes the single-choice path but keeps the action's trailing axis."""
    head = make_head(5, gym.spaces.MultiDiscrete([4]))
    params = head(torch.randn(7, 5)) * 10
    a, logp_act = head.act(params, torch.Generator().manual_seed(0))
    assert a.shape == (7, 1)
    logp, ent = head.log_prob_entropy(params, a)
    ref = Categorical(logits=params)
    torch.testing.assert_close(logp, ref.log_prob(a[:, 0]))
    torch.testing.assert_close(logp_act, logp)
    torch.testing.assert_close(ent, ref.entropy())


def test_config_choices_and_docs_of_sequence_impl_come_from_the_unroll_registry():
    from typing import get_args

    from carrystate import registry
    from carrystate.config import PolicyConfig

    field = PolicyConfig.model_fields["sequence_impl"]
    assert get_args(field.annotation) == ("auto", *unroll.names())
    assert all(f"`{name}` ({u.doc})" in field.description for name, u in registry.UNROLLS.items())
    assert unroll.resolve_auto("lstm", torch.device("cpu"), 64) == "scan"
    assert unroll.resolve_auto("gru", torch.device("cpu"), 64) == "bucketed"


def _window_reference(core: WindowCore, x: torch.Tensor, before: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """Plain Python: each row's inputs since its episode started (the given earlier frames count as this
    episode's unless the row resets), the last `window` of them zero-padded in front, through the layer."""
    W, F = core.window, x.shape[-1]
    out = torch.zeros(x.shape[0], x.shape[1], core.hidden_size)
    for b in range(x.shape[0]):
        seen = [before[i, b] for i in range(W - 1)]  # the carried frames, oldest first
        for t in range(x.shape[1]):
            if resets[b, t]:
                seen = []
            seen.append(x[b, t])
            frames = ([torch.zeros(F)] * W + seen)[-W:]
            out[b, t] = torch.relu(core.read.weight @ torch.cat(frames) + core.read.bias)
    return out


def test_window_core_reads_exactly_the_last_window_inputs_of_the_episode():
    torch.manual_seed(0)
    core = WindowCore(3, 6, 4)
    B, T = 5, 13
    x = torch.randn(B, T, 3)
    resets = torch.rand(B, T) < 0.2
    resets[0] = False  # one row that only ever reads carried frames and forgets them after 3 steps
    state = (torch.randn(3, B, 3),)
    with torch.no_grad():
        y, (end,) = core.sequence(x, state, resets)
        ys, s = [], state
        for t in range(T):
            step_y, s = core.step(x[:, t], mask_state(s, resets[:, t]))
            ys.append(step_y)
    ref = _window_reference(core, x, state[0], resets)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack(ys, 1), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(end, s[0], atol=0, rtol=0)
    # the end state is the last 3 inputs where no reset came in between
    for b in range(B):
        since = max([t for t in range(T) if resets[b, t]], default=-1)
        for i, t in enumerate(range(T - 3, T)):
            want = x[b, t] if t >= since else torch.zeros(3)
            torch.testing.assert_close(end[i, b], want, atol=0, rtol=0)


def test_window_core_gradient_reaches_window_minus_one_steps_back_and_no_further():
    core = WindowCore(2, 4, 5)
    x = torch.randn(1, 12, 2, requires_grad=True)
    y, _ = core.sequence(x, core.initial_state(1), torch.zeros(1, 12, dtype=torch.bool))
    (grad,) = torch.autograd.grad(y[0, -1].sum(), x)
    reach = grad[0].abs().sum(-1) > 0
    assert reach[-5:].all() and not reach[:-5].any(), reach


def test_window_core_refuses_an_unroll_choice():
    with pytest.raises(ValueError, match="core=window runs its own sequence: leave policy.sequence_impl at auto"):
        PolicyConfig(core="window", sequence_impl="bucketed")
