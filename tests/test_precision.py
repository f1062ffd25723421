"""`trainer.precision=bf16` (carrystate/precision.py): the products run in bf16 and nothing else does. The LSTM's C++
and torch-op scans and its C++ rollout step, and the GRU's bf16 step loop, each against an independent reference
that rounds the same products to bf16 by hand; what leaves the policy is fp32; the unrolls that cannot run in bf16
refuse it by name. (Replay = rollout in bf16, episode isolation and the segment boundary: test_invariants.py and
test_properties.py, in both precisions; bit-for-bit resume in bf16: test_resume_after_stop.py.)"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from carrystate import precision
from carrystate.config import PolicyConfig, load_config
from carrystate.errors import ConfigError
from carrystate.policy import Policy
from carrystate.policy.cores.recurrent import GRUCore, LSTMCore
from carrystate.policy.kernels import cpu
from carrystate.policy.unroll import fragments, scan
from tests.helpers import BF16_BOUND, make_policy, outputs_and_gradients

B16 = torch.bfloat16


def _bf16(fn):
    with torch.autocast("cpu", dtype=B16):
        return fn()


def _close(got: torch.Tensor, want: torch.Tensor, bound: float = BF16_BOUND) -> None:
    got, want = got.detach(), want.detach()
    gap, scale = float((got - want).abs().max()), max(1.0, float(want.abs().max()))
    assert gap <= bound * scale, f"|got - want| {gap:.3g} > {bound:.3g} × {scale:.3g}"


def _product(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """a @ w^T (+ b) with bf16 operands, rounded to bf16, back in fp32: the one rounding bf16 allows."""
    return F.linear(a.to(B16), w.to(B16), None if b is None else b.to(B16)).float()


def reference_lstm(rnn, x, state, resets):
    """nn.LSTM's math step by step (gates i, f, g, o) with every product rounded by `_product`, state fp32."""
    inp, hs, cs = x, [], []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        pre = _product(inp, w_ih, b_ih + b_hh)
        h, c, ys = state[0][layer], state[1][layer], []
        for t in range(x.shape[1]):
            keep = (~resets[:, t]).float()[:, None]
            h, c = h * keep, c * keep
            i, f, g, o = (pre[:, t] + _product(h, w_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        inp = torch.stack(ys, 1)
        hs.append(h)
        cs.append(c)
    return inp, (torch.stack(hs), torch.stack(cs))


def reference_gru(rnn, x, h0):
    """nn.GRU's documented math (r, z, n; b_hn inside r's product) with `_product`'s rounding."""
    inp, ends = x, []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        gi, h, ys = _product(inp, w_ih, b_ih), h0[layer], []
        for t in range(x.shape[1]):
            i_r, i_z, i_n = gi[:, t].chunk(3, -1)
            h_r, h_z, h_n = _product(h, w_hh, b_hh).chunk(3, -1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
            ys.append(h)
        inp = torch.stack(ys, 1)
        ends.append(h)
    return inp, (torch.stack(ends),)


def _lstm_case(rows=9, steps=12, hidden=24, layers=2, seed=0):
    torch.manual_seed(seed)
    core = LSTMCore(5, hidden, layers, "scan")
    x = torch.randn(rows, steps, 5, requires_grad=True)
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(rows))
    resets = torch.rand(rows, steps) < 0.2
    return core, x, state, resets


@pytest.mark.parametrize("recurrence", ["torch-ops", "c++"])
def test_bf16_scan_equals_reference_that_rounds_every_product_outputs_and_gradients(recurrence):
    if recurrence == "c++" and cpu.build() is None:
        pytest.skip("the C++ scan kernel did not build here")
    core, x, state, resets = _lstm_case()
    fn = scan.LSTMScan if recurrence == "torch-ops" else cpu.LSTMScanCPU
    got = _bf16(lambda: outputs_and_gradients(core, x, state, resets, lambda *a: scan.lstm_scan(core.rnn, *a, fn)))
    want = outputs_and_gradients(core, x, state, resets, lambda *a: reference_lstm(core.rnn, *a))
    fp32 = outputs_and_gradients(core, x, state, resets, lambda *a: scan.lstm_scan(core.rnn, *a, fn))
    assert all(g.dtype == torch.float32 for g in got)
    assert not torch.equal(got[0], fp32[0]), "bf16 must round the products (its outputs differ from fp32's)"
    for g, w in zip(got, want):
        _close(g, w)


@pytest.mark.parametrize("rounded_fp32", [False, True], ids=["bf16-gemm", "fp32-gemm-of-rounded-operands"])
def test_bf16_rollout_step_equals_one_reference_step_from_zeroed_and_carried_rows(rounded_fp32):
    """Both ways the C++ step computes its bf16 products (bf16 GEMMs; fp32 GEMMs of bf16-rounded operands, for few
    rows) give the reference's values."""
    if cpu.build() is None:
        pytest.skip("the C++ scan kernel did not build here")
    core, x, state, _ = _lstm_case(rows=16, steps=1)
    state = tuple(s.detach().clone() for s in state)
    for s in state:
        s[:, ::3] = 0  # rows whose episode starts here
    weights = [precision.rounded(w) if rounded_fp32 and w.dim() == 2 else w.detach() for w in core.rnn._flat_weights]
    with torch.no_grad():
        y, (h, c) = cpu.lstm_step(core.rnn, x[:, 0].detach().to(B16), state, True, weights, rounded_fp32)
        y_ref, (h_ref, c_ref) = reference_lstm(core.rnn, x.detach(), state, torch.zeros(16, 1, dtype=torch.bool))
    assert h.dtype == c.dtype == torch.float32
    for got, want in ((y, y_ref[:, 0]), (h, h_ref), (c, c_ref)):
        _close(got, want, 2**-8)  # one step: one rounding at most


@pytest.mark.parametrize("kernels", ["C++", "torch ops"])
@pytest.mark.parametrize("shape", [(48, 128, 5), (3, 7, 64, 128)], ids=["head", "encoder-layer-3d"])
def test_small_bf16_linear_without_gradients_gives_the_rounded_product(shape, kernels, monkeypatch):
    """`precision.Linear`'s small product without gradients (an fp32 GEMM of bf16-rounded operands) gives what a
    bf16 GEMM gives: the product of the rounded operands, rounded to bf16 once, as bf16; with gradients it is
    nn.Linear under autocast, the same values."""
    if kernels == "torch ops":
        monkeypatch.setattr(cpu, "_module", False)  # as when the build failed
    *lead, n_in, n_out = shape
    layer = precision.Linear(n_in, n_out)
    x = torch.randn(*lead, n_in) * 3
    want = (
        torch.addmm(  # float64 sums of the rounded operands, one rounding
            layer.bias.double().to(B16).double(),
            x.reshape(-1, n_in).to(B16).double(),
            layer.weight.to(B16).double().t(),
        )
        .to(B16)
        .reshape(*lead, n_out)
    )
    with torch.no_grad(), precision.frozen("bf16", "cpu"):
        got = layer(x)
    with torch.autocast("cpu", dtype=B16):
        with_grad = layer(x)
    assert got.dtype == with_grad.dtype == B16
    for each in (got, with_grad):  # fp32 and float64 sums may round apart by one bf16 step where near a tie
        ulp = want.float().abs().clamp(min=2**-126) * 2**-7
        assert bool(((each.float() - want.float()).abs() <= ulp).all())


@pytest.mark.parametrize("impl", ["chunked", "bucketed", "loop"])
def test_gru_bf16_step_loop_equals_reference_under_every_unroll_that_runs_it(impl):
    torch.manual_seed(1)
    core = GRUCore(5, 24, 2, impl)
    x = torch.randn(9, 12, 5)
    state = tuple(torch.randn_like(s) for s in core.initial_state(9))
    resets = torch.rand(9, 12) < 0.2
    with torch.no_grad():
        got_y, got_end = _bf16(lambda: core.sequence(x, state, resets))
        # the reference: each row's pieces between resets, from zeros after a reset
        want_y, want_end = torch.empty_like(got_y), []
        for r in range(9):
            h, cuts = state[0][:, r : r + 1], [0, *(t for t in range(1, 12) if resets[r, t]), 12]
            for a, b in zip(cuts[:-1], cuts[1:]):
                h = torch.zeros_like(h) if resets[r, a] else h
                y, (h,) = reference_gru(core.rnn, x[r : r + 1, a:b], h)
                want_y[r, a:b] = y[0]
            want_end.append(h)
    _close(got_y, want_y)
    _close(got_end[0], torch.cat(want_end, 1))


@pytest.mark.parametrize("core", ["lstm", "gru", "window", "tests.user_core:LeakyRNN"])
def test_bf16_policy_returns_fp32_outputs_and_state_close_to_fp32_and_not_equal(core):
    fp32, bf16 = make_policy(core, hidden=32), make_policy(core, hidden=32, precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    obs, state = torch.randn(6, 3), tuple(torch.randn_like(s) for s in fp32.initial_state(6))
    with torch.no_grad():
        want, got = fp32.step(obs, state), bf16.step(obs, state)
    params, values, new_state = got
    assert all(t.dtype == torch.float32 for t in (params, values, *new_state))
    assert not torch.equal(values, want[1]), "bf16 must round the products"
    for g, w in zip((params, values, *new_state), (want[0], want[1], *want[2])):
        _close(g, w)


@pytest.mark.parametrize("impl", ["packed", "triton"])
def test_unroll_without_a_bf16_path_refuses_bf16_naming_itself(impl):
    with pytest.raises(ConfigError, match=f"policy.sequence_impl={impl} runs in fp32 only"):
        load_config(None, ["trainer.precision=bf16", f"policy.sequence_impl={impl}"])


def test_packed_unroll_called_under_bf16_refuses_naming_itself():
    core, x, state, resets = _lstm_case()
    with pytest.raises(ValueError, match="policy.sequence_impl=packed runs in fp32 only"):
        _bf16(lambda: fragments.packed(core, x, state, resets))


def test_learner_gradient_in_bf16_points_where_fp32_points():
    """One training unroll's loss gradient over every weight: bf16 against fp32, cosine similarity above 0.999."""
    fp32, bf16 = make_policy("lstm", hidden=64), make_policy("lstm", hidden=64, precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    torch.manual_seed(3)
    obs, resets = torch.randn(8, 16, 3), torch.rand(8, 16) < 0.1
    grads = []
    for policy in (fp32, bf16):
        params, values, _ = policy.sequence(obs, policy.initial_state(8), resets)
        loss = (params.log_softmax(-1)[..., 0] * torch.linspace(-1, 1, 16)).sum() + values.square().sum()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))]))
    assert float(F.cosine_similarity(grads[0], grads[1], 0)) > 0.999


def test_bf16_rollout_step_after_an_optimizer_step_uses_the_new_weights():
    """The rollout's bf16 weight copies live for one rollout (`precision.frozen`): a step in the next rollout, after
    a fused Adam step (which leaves the weights' version counters as they were), computes with the new weights."""
    policy = make_policy("lstm", hidden=32, precision="bf16")
    obs, state = torch.randn(6, 3), policy.initial_state(6)
    with torch.no_grad(), precision.frozen("bf16", "cpu"):
        before = policy.step(obs, state)[1]
    opt = torch.optim.Adam(policy.parameters(), lr=0.1, fused=True)
    for p in policy.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    fresh = make_policy("lstm", hidden=32, precision="bf16")
    fresh.load_state_dict(policy.state_dict())
    with torch.no_grad():
        with precision.frozen("bf16", "cpu"):
            after = policy.step(obs, state)[1]
        want = fresh.step(obs, state)[1]
    assert not torch.equal(after, before)
    assert torch.equal(after, want)


def _token_policy(precision_: str) -> Policy:
    torch.manual_seed(0)
    cfg = PolicyConfig(encoder="token", token_embed_size=64, encoder_sizes=[128], core="lstm", hidden_size=128)
    space = gym.spaces.Box(0, 255, (40, 3), np.uint8)
    return Policy(cfg, space, gym.spaces.Discrete(9), precision=precision_)


def _tokens(rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows)
    tokens = torch.randint(0, 64, (rows, 40, 3), generator=g, dtype=torch.uint8)
    tokens[:, 25:] = 255  # empty slots
    return tokens


@pytest.mark.parametrize("precision_", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["token", "mlp"])
def test_rollout_plan_computes_what_the_modules_compute_bit_for_bit(kind, precision_):
    """Policy.step through its rollout plan (the parts' frozen calls) against the same policy's modules in another
    frozen block, over three carried steps at 48, 96 and 600 rows (both sides of `precision.SMALL_PRODUCT` for
    the LSTM step at 48 / 96 rows and for the encoder's layer at 600): equal params, values and state, bit for
    bit; and a policy with a GRU core has no plan."""
    if cpu.get() is None:
        pytest.skip("the CPU kernels are not built here")
    if kind == "token":
        policy, make_obs = _token_policy(precision_), _tokens
    else:
        policy = make_policy("lstm", obs_dim=5, hidden=128, precision=precision_, obs_norm=True)
        policy.obs_norm.update(torch.randn(64, 5) * 3 + 1)

        def make_obs(rows):
            return torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows))

    def run(rows: int):
        state, out = policy.initial_state(rows), []
        with torch.no_grad(), precision.frozen(precision_, "cpu"):
            for t in range(3):
                params, values, state = policy.step(make_obs(rows) if t != 1 else make_obs(rows + 1)[:rows], state)
                out += [params, values, *state]
        return out

    for rows in (48, 96, 600):
        with torch.no_grad(), precision.frozen(precision_, "cpu"):
            assert policy._rollout_plan() is not None
        planned = run(rows)
        policy.rollout_plan = False
        modules = run(rows)
        policy.rollout_plan = True
        assert all(p.dtype == torch.float32 for p in planned)
        for got, want in zip(planned, modules):
            assert torch.equal(got, want), (rows, float((got - want).abs().max()))
    gru = make_policy("gru", hidden=16, precision=precision_)
    with torch.no_grad(), precision.frozen(precision_, "cpu"):
        assert gru._rollout_plan() is None
