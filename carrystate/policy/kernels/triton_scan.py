"""`triton`: the `scan` recurrence (exact per-step resets, hand-written backward) as two GPU kernels.

`scan` issues a few torch ops per step, which on a GPU means a few kernel launches per step: many times
cuDNN's fused call. Here each of forward and backward is ONE persistent kernel that walks every step of a
block of rows, so a segment costs two launches whatever its length, and a reset is still one multiply of
the carried (h, c) by 0/1 before the step. What stays outside the kernels is what is already one large
GEMM: the input projection (done by `lstm_scan` in policy/unroll/scan.py), and in the backward the
recurrent weight's gradient over all steps and the gradient into the start state.

Each program owns BLOCK_B rows for the whole segment. Per step it forms the four gate pre-activations tile
by tile (`tl.dot` of the masked h_{t-1} against W_hh), applies the gates, and writes h_t, c_t and the
activated gates, which the backward reads. h and c go through global memory (they stay in L1/L2) because
the matmul needs h_{t-1} in a different thread layout than the elementwise part produced it in; a block
barrier per step orders the two. (Keeping h and c in registers across steps instead was built and was no
faster, and it needs 8 warps where this runs with 4; see BENCHMARKS.md.) Numerics follow `nn.LSTM` on the
same device: the recurrent matmul uses TF32 exactly when `torch.backends.cudnn.allow_tf32` lets cuDNN use it,
IEEE fp32 otherwise.

With `TRITON_INTERPRET=1` the same kernels run on the CPU (slowly), which is how the tests check them
against the reference unroll on a machine without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: only the CUDA fast path needs it
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def why_unavailable(device: torch.device, hidden: int) -> str | None:
    """None where the kernels can run: triton installed, a CUDA device (or the interpreter on the CPU), and
    a hidden size they tile (a power of two, at least 16); else what is missing."""
    if triton is None:
        return "triton is not installed (pip install triton; it comes with CUDA builds of torch)"
    if not (device.type == "cuda" or (INTERPRET and device.type == "cpu")):
        return f"it runs on a CUDA device, not {device.type} (or on the CPU under TRITON_INTERPRET=1)"
    if hidden < 16 or hidden & (hidden - 1):
        return f"hidden_size must be a power of two >= 16 for its tiles, not {hidden}"
    return None


def available(device: torch.device, hidden: int) -> bool:
    return why_unavailable(device, hidden) is None


if triton is not None:

    @triton.jit
    def _fwd_kernel(
        pre_x,
        keep,
        w_hh,
        y,
        act,
        c_all,
        B,
        T: tl.constexpr,
        H: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """pre_x [T, B, 4H], keep [T, B], w_hh [4H, H], y [T+1, B, H] (y[0] = h0), act [T, B, 4H],
        c_all [T+1, B, H] (c_all[0] = c0). Writes y[1:], act, c_all[1:]."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        cols_n = tl.arange(0, BLOCK_N)
        cols_k = tl.arange(0, BLOCK_K)
        for t in range(T):
            kp = tl.load(keep + t * B + rows, mask=row_ok, other=0.0)[:, None]
            h_in = y + t * B * H  # h_{t-1}, masked as it is read
            c_in = c_all + t * B * H
            for n0 in range(0, H, BLOCK_N):
                n = n0 + cols_n
                base = (t * B + rows[:, None]) * (4 * H) + n[None, :]
                gi = tl.load(pre_x + base, mask=row_ok[:, None], other=0.0)
                gf = tl.load(pre_x + base + H, mask=row_ok[:, None], other=0.0)
                gg = tl.load(pre_x + base + 2 * H, mask=row_ok[:, None], other=0.0)
                go = tl.load(pre_x + base + 3 * H, mask=row_ok[:, None], other=0.0)
                for k0 in range(0, H, BLOCK_K):
                    k = k0 + cols_k
                    h = tl.load(h_in + rows[:, None] * H + k[None, :], mask=row_ok[:, None], other=0.0) * kp
                    w = w_hh + n[None, :] * H + k[:, None]  # W_g^T tile [BLOCK_K, BLOCK_N] of gate g's rows
                    gi += tl.dot(h, tl.load(w), input_precision=PRECISION)
                    gf += tl.dot(h, tl.load(w + H * H), input_precision=PRECISION)
                    gg += tl.dot(h, tl.load(w + 2 * H * H), input_precision=PRECISION)
                    go += tl.dot(h, tl.load(w + 3 * H * H), input_precision=PRECISION)
                i = tl.sigmoid(gi)
                f = tl.sigmoid(gf)
                g = 2.0 * tl.sigmoid(2.0 * gg) - 1.0  # tanh
                o = tl.sigmoid(go)
                hc = rows[:, None] * H + n[None, :]
                c = f * (tl.load(c_in + hc, mask=row_ok[:, None], other=0.0) * kp) + i * g
                h_new = o * (2.0 * tl.sigmoid(2.0 * c) - 1.0)
                tl.store(c_in + B * H + hc, c, mask=row_ok[:, None])
                tl.store(h_in + B * H + hc, h_new, mask=row_ok[:, None])
                a = act + (t * B + rows[:, None]) * (4 * H) + n[None, :]
                tl.store(a, i, mask=row_ok[:, None])
                tl.store(a + H, f, mask=row_ok[:, None])
                tl.store(a + 2 * H, g, mask=row_ok[:, None])
                tl.store(a + 3 * H, o, mask=row_ok[:, None])
            tl.debug_barrier()  # h_t written by all threads before any reads it as a matmul operand

    @triton.jit
    def _bwd_kernel(
        dy,
        dh_end,
        keep,
        w_hh,
        act,
        c_all,
        d_pre,
        dc,
        B,
        T: tl.constexpr,
        H: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """dy [T, B, H], dh_end [B, H] (gradient of h_T), keep [T+1, B] (keep[T] = 0), act [T, B, 4H],
        c_all [T+1, B, H], d_pre [T+1, B, 4H] (d_pre[T] = 0), dc [B, H] (holds dc_T; left holding the
        gradient into c0). Writes d_pre[:T], the gradients of the gate pre-activations."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        cols_n = tl.arange(0, BLOCK_N)
        cols_k = tl.arange(0, BLOCK_K)
        for tt in range(T):
            t = T - 1 - tt
            kp_next = tl.load(keep + (t + 1) * B + rows, mask=row_ok, other=0.0)[:, None]
            kp = tl.load(keep + t * B + rows, mask=row_ok, other=0.0)[:, None]
            last = tl.where(t == T - 1, 1.0, 0.0)
            d_next = d_pre + (t + 1) * B * (4 * H)
            for n0 in range(0, H, BLOCK_N):
                n = n0 + cols_n
                hc = rows[:, None] * H + n[None, :]
                # dh_t = dy_t + dh_T (last step) + keep_{t+1} * (d_pre_{t+1} @ W_hh)[:, n]
                rec = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                for gate in range(4):
                    for k0 in range(0, H, BLOCK_K):
                        k = k0 + cols_k
                        d = tl.load(
                            d_next + rows[:, None] * (4 * H) + gate * H + k[None, :], mask=row_ok[:, None], other=0.0
                        )
                        w = tl.load(w_hh + (gate * H + k[:, None]) * H + n[None, :])  # W_g tile [BLOCK_K, BLOCK_N]
                        rec += tl.dot(d, w, input_precision=PRECISION)
                dh = (
                    tl.load(dy + t * B * H + hc, mask=row_ok[:, None], other=0.0)
                    + rec * kp_next
                    + last * tl.load(dh_end + hc, mask=row_ok[:, None], other=0.0)
                )
                a = act + (t * B + rows[:, None]) * (4 * H) + n[None, :]
                i = tl.load(a, mask=row_ok[:, None], other=0.0)
                f = tl.load(a + H, mask=row_ok[:, None], other=0.0)
                g = tl.load(a + 2 * H, mask=row_ok[:, None], other=0.0)
                o = tl.load(a + 3 * H, mask=row_ok[:, None], other=0.0)
                tc = (
                    2.0 * tl.sigmoid(2.0 * tl.load(c_all + (t + 1) * B * H + hc, mask=row_ok[:, None], other=0.0)) - 1.0
                )
                cp = tl.load(c_all + t * B * H + hc, mask=row_ok[:, None], other=0.0) * kp
                # dc carried from step t+1 already passed its forget gate and mask
                dct = tl.load(dc + hc, mask=row_ok[:, None], other=0.0) + dh * o * (1.0 - tc * tc)
                p = d_pre + (t * B + rows[:, None]) * (4 * H) + n[None, :]
                tl.store(p, dct * g * i * (1.0 - i), mask=row_ok[:, None])
                tl.store(p + H, dct * cp * f * (1.0 - f), mask=row_ok[:, None])
                tl.store(p + 2 * H, dct * i * (1.0 - g * g), mask=row_ok[:, None])
                tl.store(p + 3 * H, dh * tc * o * (1.0 - o), mask=row_ok[:, None])
                tl.store(dc + hc, dct * f * kp, mask=row_ok[:, None])
            tl.debug_barrier()  # d_pre_t complete before the next (earlier) step reads it as a matmul operand


# Rows per program, tile widths and warps, by hidden size: the fastest measured on an H200 (BENCHMARKS.md;
# `python -m benchmarks.learner --tune-triton` measures the alternatives on another GPU).
CONFIG = {
    "default": {"block_b": 16, "block_n": 64, "block_k": 64, "num_warps": 4},
    128: {"block_b": 16, "block_n": 128, "block_k": 128, "num_warps": 8},
}


def _launch_config(B: int, H: int):
    cfg = CONFIG.get(H, CONFIG["default"])
    precision = "tf32" if torch.backends.cudnn.allow_tf32 and not INTERPRET else "ieee"
    return (triton.cdiv(B, cfg["block_b"]),), dict(
        H=H,
        BLOCK_B=cfg["block_b"],
        BLOCK_N=min(H, cfg["block_n"]),
        BLOCK_K=min(H, cfg["block_k"]),
        PRECISION=precision,
        num_warps=cfg["num_warps"],
    )


class LSTMScanTriton(torch.autograd.Function):
    """Same contract as `unroll.scan.LSTMScan`: pre_x [T, B, 4H], keep [T, B, 1], h0, c0 [B, H], w_hh [4H, H]
    → y [T, B, H], h_T, c_T."""

    @staticmethod
    def forward(ctx, pre_x: Tensor, keep: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor):
        T, B, G = pre_x.shape
        H = G // 4
        pre_x = pre_x.contiguous()
        keep2 = keep.reshape(T, B).contiguous()
        w = w_hh.contiguous()
        y = pre_x.new_empty(T + 1, B, H)
        c_all = pre_x.new_empty(T + 1, B, H)
        y[0] = h0
        c_all[0] = c0
        act = torch.empty_like(pre_x)
        grid, meta = _launch_config(B, H)
        _fwd_kernel[grid](pre_x, keep2, w, y, act, c_all, B, T, **meta)
        ctx.save_for_backward(keep2, w, act, c_all, y)
        return y[1:], y[T].clone(), c_all[T].clone()

    @staticmethod
    def backward(ctx, dy: Tensor, dh_T: Tensor, dc_T: Tensor):
        keep2, w, act, c_all, y = ctx.saved_tensors
        T, B, G = act.shape
        H = G // 4
        keep_ext = torch.cat([keep2, keep2.new_zeros(1, B)])
        d_pre = act.new_empty(T + 1, B, G)
        d_pre[T] = 0
        dc = dc_T.contiguous().clone()
        grid, meta = _launch_config(B, H)
        _bwd_kernel[grid](dy.contiguous(), dh_T.contiguous(), keep_ext, w, act, c_all, d_pre, dc, B, T, **meta)
        d_pre = d_pre[:T]
        h_prev = y[:T] * keep2.unsqueeze(-1)  # the masked h each step read
        d_w = d_pre.reshape(T * B, G).t().mm(h_prev.reshape(T * B, H))
        dh0 = d_pre[0].mm(w) * keep2[0].unsqueeze(-1)
        return d_pre, None, dh0, dc, d_w
