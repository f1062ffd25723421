"""The C++ kernels for the CPU (scan_cpu.cpp): their build, and the calls into them (the scan's recurrence
and the rollout's LSTM step).

`build()` compiles scan_cpu.cpp for this machine (about 30 s; torch caches the library under its extension
directory, `TORCH_EXTENSIONS_DIR`, so a later process only loads it). It is an explicit step: the trainer
calls it while wiring, before anything is timed, and `carrystate build-kernels` calls it from the shell;
`get()` builds on first use only where nobody did. `CARRYSTATE_NO_CPP=1` or a failed build (warned) leaves
the kernels out, and the scan runs its torch-op loop (policy/unroll/scan.py), which computes the same thing
with ~10 PyTorch calls per step.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

_module = None  # the built library; False when it cannot be built here; None before the first try
_SIMD_FLAGS = {
    "AVX2": ["-mavx2", "-mfma"],
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"],
}


@contextmanager
def _ninja_on_path():
    """PATH with the pip package's ninja in front (torch's build runs `ninja`, also when the environment's
    bin folder is not on PATH), restored as it was afterwards."""
    before = os.environ.get("PATH")
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + (before or "")
    except (ImportError, AttributeError):
        pass
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


def build():
    """scan_cpu.cpp compiled for this machine (or loaded from torch's cache), or None where
    `CARRYSTATE_NO_CPP=1` or the build fails (warned). Tried once per process."""
    global _module
    if _module is None:
        _module = False
        if os.environ.get("CARRYSTATE_NO_CPP") != "1":
            try:
                from torch.utils.cpp_extension import load

                # vector width from what this CPU can run (torch's own dispatch level), not -march=native: the
                # build is cached by name, and the cache may be shared with other machines
                level = torch.backends.cpu.get_cpu_capability()
                print(
                    f"carrystate: loading the CPU scan kernel ({level}; compiled once per machine, ~30 s)",
                    file=sys.stderr,
                    flush=True,
                )
                with _ninja_on_path():
                    _module = load(
                        f"carrystate_scan_cpu_{level.lower()}",
                        [str(Path(__file__).with_name("scan_cpu.cpp"))],
                        extra_cflags=["-O3", "-ffast-math", "-fopenmp-simd", *_SIMD_FLAGS.get(level, [])],
                        extra_ldflags=["-lmvec"],
                        verbose=False,
                    )
            except Exception as err:  # noqa: BLE001 - no compiler, no ninja, ...: the op loop still works
                warnings.warn(
                    f"carrystate: the CPU scan kernel did not build ({type(err).__name__}: {err}); "
                    "using the torch-op loop",
                    stacklevel=2,
                )
    return _module or None


def get():
    """The kernels for the hot path: as `build()` left them, or built now where nobody called it (the lazy
    fallback); None where they cannot be built."""
    return build() if _module is None else (_module or None)


def for_input(x: Tensor):
    """The kernels where they apply to `x` (float32 on the CPU, and built), else None."""
    return get() if x.device.type == "cpu" and x.dtype == torch.float32 else None


class LSTMScanCPU(torch.autograd.Function):
    """The scan's recurrence (`LSTMScan`'s contract) with both loops in C++: one GEMM and one fused
    elementwise pass per step."""

    @staticmethod
    def forward(ctx, pre_x: Tensor, keep: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor):
        T, B, _ = pre_x.shape
        keep2 = keep.reshape(T, B).contiguous()
        y, act, h_prev, c_prev, tanh_c, c_T = get().forward(
            pre_x.contiguous(), keep2, h0.contiguous(), c0.contiguous(), w_hh.contiguous()
        )
        ctx.save_for_backward(keep2, w_hh, act, h_prev, c_prev, tanh_c)
        return y, y[T - 1].clone(), c_T

    @staticmethod
    def backward(ctx, dy: Tensor, dh_T: Tensor, dc_T: Tensor):
        keep2, w_hh, act, h_prev, c_prev, tanh_c = ctx.saved_tensors
        d_pre, dh0, dc0, d_w = get().backward(
            dy.contiguous(), dh_T.contiguous(), dc_T.contiguous(), keep2, w_hh.contiguous(), act, h_prev, c_prev, tanh_c
        )
        return d_pre, None, dh0, dc0, d_w


def lstm_step(rnn: nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]] | None:
    """One rollout step of `rnn` with the C++ kernel: x [B, in], state ([layers, B, H] × 2, already zero where
    an episode starts) → y [B, H], new state; None where the kernel does not apply (not float32 on the CPU, or
    not built), and the caller runs `rnn` itself. One C++ call: per layer an input GEMM, a recurrent GEMM and
    one fused elementwise pass, the same math as one step of the scan (so replay reproduces the rollout's
    state), where nn.LSTM with T=1 adds its own per-call work (BENCHMARKS.md: rollout step)."""
    kernels = for_input(x)
    # the kernel takes the flat weights of a biased nn.LSTM without projections
    if kernels is None or torch.is_grad_enabled() or not rnn.bias or rnn.proj_size:
        return None
    y, h, c = kernels.step(x, state[0], state[1], rnn._flat_weights)
    return y, (h, c)
