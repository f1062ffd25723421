"""The `scan` and `triton` unrolls: an LSTM step loop with exact per-step resets and a hand-written backward
(torch ops, C++ on the CPU, triton kernels on a GPU).

One layer, time-major. The input projection of every step is one large GEMM done by autograd outside; the
recurrence walks the steps with one GEMM per step, where a reset is one multiply of the carried (h, c) by
0/1 before the step. The backward walks the steps in reverse the same way, and forms the recurrent
weight's gradient as one GEMM over all steps at the end (autograd through a loop would issue one small GEMM
per step for it, and record every op). Resets therefore cost one multiply per step and nothing else: no
fragments, no padding, no gather or scatter.

The loops run in C++ (kernels/scan_cpu.cpp: per step an ATen GEMM and one fused, vectorized elementwise
pass), compiled for this machine by `kernels.build()`; that is what brings the unroll to the fused nn.LSTM's
speed on the CPU (BENCHMARKS.md). The same loops in torch ops (`LSTMScan`, about 10 calls per step) serve
every other dtype and device, and stand in where the C++ cannot be built. `kernels.triton_scan` holds the GPU
kernels.

Gate order and biases follow `nn.LSTM` (i, f, g, o; both biases summed), so the core's `nn.LSTM`
parameters are used as they are and every other unroll stays interchangeable with this one.

Under bf16 (carrystate/precision.py) the input product and each step's recurrent product take bf16 operands
and are added in fp32; the gates, h and c stay fp32 (the C++ loops and the torch ops alike; triton refuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from carrystate import precision, registry
from carrystate.policy.kernels import cpu, triton_scan

if TYPE_CHECKING:
    from carrystate.policy.cores.recurrent import RecurrentCore


class LSTMScan(torch.autograd.Function):
    """The recurrence in torch ops (about 10 calls per step), for every dtype and device."""

    @staticmethod
    def forward(ctx, pre_x: Tensor, keep: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, bf16: bool = False):
        """pre_x [T, B, 4H] (x @ W_ih^T + biases), keep [T, B, 1] (0 where the state resets before step t),
        h0, c0 [B, H], w_hh [4H, H] → y [T, B, H], h_T, c_T. `bf16`: the recurrent products in bf16."""
        if bf16:  # pre_x is the bf16 input product: its rounding stays, the sums are fp32
            pre_x = pre_x.float()
        T, B, G = pre_x.shape
        H = G // 4
        act = torch.empty_like(pre_x)  # activated gates i, f, g, o of every step
        h_prev = pre_x.new_empty(T, B, H)  # (masked) state each step read
        c_prev = pre_x.new_empty(T, B, H)
        tanh_c = pre_x.new_empty(T, B, H)
        y = pre_x.new_empty(T, B, H)
        w_t = w_hh.t().to(torch.bfloat16) if bf16 else w_hh.t()
        h, c = h0, c0
        for t in range(T):
            hp = torch.mul(h, keep[t], out=h_prev[t])
            cp = torch.mul(c, keep[t], out=c_prev[t])
            if bf16:  # fp32 + bf16 → fp32
                a = torch.add(pre_x[t], torch.mm(hp.to(torch.bfloat16), w_t), out=act[t])
            else:
                a = torch.addmm(pre_x[t], hp, w_t, out=act[t])
            a[:, : 2 * H].sigmoid_()
            g = a[:, 2 * H : 3 * H].tanh_()
            a[:, 3 * H :].sigmoid_()
            c = torch.addcmul(a[:, H : 2 * H] * cp, a[:, :H], g)
            tc = torch.tanh(c, out=tanh_c[t])
            h = torch.mul(a[:, 3 * H :], tc, out=y[t])
        ctx.save_for_backward(keep, w_hh, act, h_prev, c_prev, tanh_c)
        ctx.bf16 = bf16
        return y, h.clone(), c

    @staticmethod
    def backward(ctx, dy: Tensor, dh_T: Tensor, dc_T: Tensor):
        keep, w_hh, act, h_prev, c_prev, tanh_c = ctx.saved_tensors
        T, B, G = act.shape
        H = G // 4
        # Everything that does not depend on the incoming gradient is formed for all steps at once, so
        # the reverse loop is 6 ops per step. d(pre-activation) of gates i, f, g is dc times the other
        # factor of their product times their activation's derivative; of gate o, dh times tanh(c) times it.
        i, f, g, o = act.split(H, -1)
        factors = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g.square())], -1).view(T, B, 3, H)
        o_dtanh = o * (1 - tanh_c.square())  # dc_t += dh_t * o_t * tanh'(c_t)
        do_factor = tanh_c * o * (1 - o)
        f_keep = f * keep  # dc into c_{t-1} passes the forget gate and the reset mask
        bf16 = ctx.bf16
        mm = _mm_bf16 if bf16 else torch.mm
        w = w_hh.to(torch.bfloat16) if bf16 else w_hh
        d_pre = torch.empty_like(act)
        d3 = d_pre[..., : 3 * H].view(T, B, 3, H)
        # autograd hands zeros (never None) for outputs the loss does not use
        dh, dc = dh_T + dy[T - 1], dc_T
        for t in range(T - 1, -1, -1):
            dc = torch.addcmul(dc, dh, o_dtanh[t])
            torch.mul(dc.unsqueeze(1), factors[t], out=d3[t])
            torch.mul(dh, do_factor[t], out=d_pre[t, :, 3 * H :])
            dc = dc * f_keep[t]
            dh_prev = torch.mm(d_pre[t].to(torch.bfloat16), w).float() if bf16 else torch.mm(d_pre[t], w)
            # into h_{t-1} above, then through the reset mask
            dh = dh_prev * keep[t] if t == 0 else torch.addcmul(dy[t - 1], dh_prev, keep[t])
        d_w = mm(d_pre.view(T * B, G).t(), h_prev.view(T * B, H))
        return d_pre, None, dh, dc, d_w, None


def _mm_bf16(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with bf16 operands, rounded to bf16, as fp32."""
    return torch.mm(a.to(torch.bfloat16), b.to(torch.bfloat16)).float()


def lstm_scan(
    rnn: nn.LSTM,
    x: Tensor,
    state: tuple[Tensor, Tensor],
    resets: Tensor,
    recurrence: type[torch.autograd.Function] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """`rnn` (batch_first nn.LSTM, any number of layers), x [B, T, in], state ([layers, B, H] × 2), resets
    [B, T] bool (zero the state before step t) → y [B, T, H], (h, c) after the last step. `recurrence`
    runs one layer's steps: by default the C++ kernels for float32 on the CPU where they build, the torch
    ops otherwise; `kernels.triton_scan.LSTMScanTriton` for the GPU kernels."""
    bf16 = precision.active(x)
    if bf16 and recurrence is triton_scan.LSTMScanTriton:
        registry.check_precision("triton", "lstm", "bf16")
    if recurrence is None:
        recurrence = LSTMScan if cpu.for_input(state[0]) is None else cpu.LSTMScanCPU
    keep = (~resets).t().unsqueeze(-1).to(state[0].dtype)  # [T, B, 1]
    inp = x.transpose(0, 1)  # time-major [T, B, in]
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        if bf16:  # as the C++ step rounds it; autocast off, so the recurrence's own ops stay fp32
            with precision.off(x):
                b16 = torch.bfloat16
                pre_x = F.linear(inp.to(b16), w_ih.to(b16), bias.to(b16)).contiguous()  # stays bf16
                inp, h, c = recurrence.apply(pre_x, keep, state[0][layer], state[1][layer], w_hh, True)
        else:
            pre_x = F.linear(inp, w_ih, bias).contiguous()
            inp, h, c = recurrence.apply(pre_x, keep, state[0][layer], state[1][layer], w_hh)
        hs.append(h)
        cs.append(c)
    return inp.transpose(0, 1), (torch.stack(hs), torch.stack(cs))


def scan(
    core: RecurrentCore, x: Tensor, state: tuple[Tensor, Tensor], resets: Tensor, end_state: bool = True
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """`lstm_scan` over the core's nn.LSTM: C++ for float32 on the CPU where built, torch ops otherwise."""
    return lstm_scan(core.rnn, x, state, resets)


def triton(
    core: RecurrentCore, x: Tensor, state: tuple[Tensor, Tensor], resets: Tensor, end_state: bool = True
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """`lstm_scan` with the GPU kernels; a ValueError saying what is missing where they cannot run."""
    why = triton_scan.why_unavailable(x.device, core.hidden_size)
    if why:
        raise ValueError(f"policy.sequence_impl=triton cannot run here: {why}")
    return lstm_scan(core.rnn, x, state, resets, triton_scan.LSTMScanTriton)
