"""The C++ kernels for the CPU (scan_cpu.cpp, tokens_cpu.cpp and heads_cpu.cpp, one library): their build, and the
calls into them (the scan's recurrence, the rollout's LSTM step, the token encoder's sum and its backward, and the
rollout's sampling of one categorical choice).

`build()` compiles the sources for this machine (once) into a folder of its own, named for what the
library depends on: torch's version, the Python, the CPU level and a hash of the source and flags
(`kernel_folder`, under `TORCH_EXTENSIONS_DIR` or torch's default root), so environments with different torch
installs never rebuild one folder in turn, and a later process only loads the library. Builders of one folder
take turns through an `fcntl.flock` on its `build.lock`, which the kernel frees when its holder dies (kill -9,
OOM); a torch `lock` file found there while holding it was left by a killed build and is removed. A builder
waits at most `LOCK_WAIT_S` (`CARRYSTATE_KERNEL_LOCK_WAIT_S`) for another, then gives up naming the lock file
and its holder. The build is an explicit step: the trainer calls it while wiring, before anything is timed, and
`carrystate build-kernels` calls it from the shell; `get()` builds on first use only where nobody did.
`CARRYSTATE_NO_CPP=1` or a failed build (warned) leaves the kernels out, and the scan runs its torch-op loop
(policy/unroll/scan.py), which computes the same thing with ~10 PyTorch calls per step.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from carrystate.errors import KernelLockTimeout
from carrystate.locks import PidLock

_module = None  # the built library; False when it cannot be built here; None before the first try
_SIMD_FLAGS = {
    "AVX2": ["-mavx2", "-mfma"],
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"],
}
_CFLAGS = ("-O3", "-ffast-math", "-fno-finite-math-only", "-fopenmp-simd")  # NaN stays NaN: scan_cpu.cpp
_LDFLAGS = ("-lmvec",)  # tuples: torch's load appends to the lists it is given
_SOURCES = tuple(Path(__file__).with_name(n) for n in ("scan_cpu.cpp", "tokens_cpu.cpp", "heads_cpu.cpp"))
LOCK_WAIT_S = 600.0  # seconds a build waits for another process building the same folder (env overrides)


def say(line: str) -> None:
    """One line to stderr in one write: a stop signal's handler, which raises between bytecodes, cannot split it
    from its newline (print writes the two separately), so the stop's own message starts a line of its own."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def kernel_folder(
    root: Path,
    level: str,
    source: bytes,
    flags: list[str],
    torch_version: str = torch.__version__,
    python_tag: str = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}",
) -> Path:
    """The build folder under `root` for the kernels' `source` compiled with `flags` at CPU `level` against
    `torch_version` and the Python `python_tag`: one folder per library that can differ."""
    digest = hashlib.sha256(source + b"\0" + "\0".join(flags).encode()).hexdigest()[:12]
    name = f"carrystate_scan_cpu-{level.lower()}-torch{torch_version}-{python_tag}-{digest}"
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]", "_", name)


@contextmanager
def build_lock(folder: Path, wait_s: float | None = None):
    """Hold `folder`'s build lock: an flock on `folder/build.lock`, which the kernel frees when its holder dies.
    Waits at most `wait_s` (default: `CARRYSTATE_KERNEL_LOCK_WAIT_S`, else `LOCK_WAIT_S`) for another holder,
    then raises KernelLockTimeout naming the file and the holder's pid (each holder writes its pid there)."""
    if wait_s is None:
        wait_s = float(os.environ.get("CARRYSTATE_KERNEL_LOCK_WAIT_S", LOCK_WAIT_S))
    path = Path(folder) / "build.lock"
    lock, deadline, told = PidLock(path), time.monotonic() + wait_s, False
    while (holder := lock.acquire()) is not None:
        if time.monotonic() >= deadline:
            raise KernelLockTimeout(
                f"waited {wait_s:g}s (CARRYSTATE_KERNEL_LOCK_WAIT_S) for the kernel build lock {path}, held "
                f"by pid {holder}: let that process finish its build or end it (its lock goes with it), "
                "then run `carrystate build-kernels`"
            )
        if not told:
            say(
                f"carrystate: waiting for pid {holder}, which is building the CPU kernel "
                f"(lock {path}, up to {wait_s:g}s)"
            )
            told = True
        time.sleep(0.05)
    with lock:
        yield path


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
    """The kernels compiled for this machine (or loaded from their build folder), or None where
    `CARRYSTATE_NO_CPP=1` or the build fails (warned). Tried once per process."""
    global _module
    if _module is None:
        _module = False
        if os.environ.get("CARRYSTATE_NO_CPP") != "1":
            try:
                _module = _load()
            except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a held lock...: the op loop still works
                warnings.warn(
                    f"carrystate: the CPU scan kernel did not build ({type(err).__name__}: {err}); "
                    "using the torch-op loop",
                    stacklevel=2,
                )
    return _module or None


class BuildSpec(NamedTuple):
    name: str  # the extension's module name
    cflags: list[str]
    folder: Path  # its build folder (`kernel_folder`)


def build_spec() -> BuildSpec:
    """What `build()` compiles on this machine, and where."""
    from torch.utils.cpp_extension import get_default_build_root

    # vector width from what this CPU can run (torch's own dispatch level), not -march=native: the folder is
    # named by level, and the cache may be shared with other machines
    level = torch.backends.cpu.get_cpu_capability()
    cflags = [*_CFLAGS, *_SIMD_FLAGS.get(level, [])]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return BuildSpec(
        f"carrystate_scan_cpu_{level.lower()}",
        cflags,
        kernel_folder(root, level, b"\0".join(p.read_bytes() for p in _SOURCES), [*cflags, *_LDFLAGS]),
    )


def _load():
    """Build or load the library in its folder, holding the folder's build lock."""
    from torch.utils.cpp_extension import load

    spec = build_spec()
    spec.folder.mkdir(parents=True, exist_ok=True)
    say(f"carrystate: loading the CPU scan kernel from {spec.folder} (compiled once, ~30 s)")
    with build_lock(spec.folder):
        # torch's own lock file, which its build makes and removes: with ours held no build of this folder runs,
        # so one found now is a killed build's, and torch would wait on it for ever
        stale = spec.folder / "lock"
        if stale.exists():
            stale.unlink(missing_ok=True)
            say(f"carrystate: removed {stale}, left by a build that was killed")
        with _ninja_on_path():
            return load(
                spec.name,
                [str(p) for p in _SOURCES],
                extra_cflags=list(spec.cflags),
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(spec.folder),
                verbose=False,
            )


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
    def forward(ctx, pre_x: Tensor, keep: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, bf16: bool = False):
        T, B, _ = pre_x.shape
        keep2 = keep.reshape(T, B).contiguous()
        y, act, h_prev, c_prev, tanh_c, c_T, h16 = get().forward(
            pre_x.contiguous(), keep2, h0.contiguous(), c0.contiguous(), w_hh.contiguous(), bf16
        )
        # bf16: the weight gradient's operand is h_prev rounded to bf16, which forward kept
        ctx.save_for_backward(keep2, w_hh, act, h16 if bf16 else h_prev, c_prev, tanh_c)
        ctx.bf16 = bf16
        return y, y[T - 1].clone(), c_T

    @staticmethod
    def backward(ctx, dy: Tensor, dh_T: Tensor, dc_T: Tensor):
        keep2, w_hh, act, h_prev, c_prev, tanh_c = ctx.saved_tensors
        d_pre, dh0, dc0, d_w = get().backward(
            dy.contiguous(),
            dh_T.contiguous(),
            dc_T.contiguous(),
            keep2,
            w_hh.contiguous(),
            act,
            h_prev,
            c_prev,
            tanh_c,
            ctx.bf16,
        )
        return d_pre, None, dh0, dc0, d_w, None


def lstm_step(
    rnn: nn.LSTM,
    x: Tensor,
    state: tuple[Tensor, Tensor],
    bf16: bool = False,
    weights: list[Tensor] | None = None,
    rounded_fp32: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]] | None:
    """One rollout step of `rnn` with the C++ kernel: x [B, in], state ([layers, B, H] × 2, already zero where
    an episode starts) → y [B, H], new state; None where the kernel does not apply (a float32 state on the CPU,
    built), and the caller runs `rnn` itself. One C++ call: per layer an input GEMM, a recurrent GEMM and
    one fused elementwise pass, the same math as one step of the scan (so replay reproduces the rollout's
    state), where nn.LSTM with T=1 adds its own per-call work (BENCHMARKS.md: rollout step). `bf16`: the GEMMs
    take bf16 operands as the scan's do (carrystate/precision.py); x may then be bf16, and `weights` (nn.LSTM's
    flat list) may hold the matrices already in bf16, which the kernel then uses as they are; with `rounded_fp32`
    they hold bf16 values as fp32 and the products run as fp32 GEMMs of rounded operands (`precision.Linear`)."""
    kernels = for_input(state[0])
    # the kernel takes the flat weights of a biased nn.LSTM without projections
    if kernels is None or torch.is_grad_enabled() or not rnn.bias or rnn.proj_size:
        return None
    if x.dtype != torch.float32 and not bf16:
        return None
    flat = rnn._flat_weights if weights is None else weights
    y, h, c = kernels.step(x, state[0], state[1], flat, bf16, bf16 and rounded_fp32)
    return y, (h, c)


def linear_rounded(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor | None:
    """`precision.Linear`'s small bf16 product (weight, bias: bf16 values as fp32) in one C++ call; None where
    the kernels do not apply (not on the CPU, or not built)."""
    kernels = for_input(weight)
    return None if kernels is None or x.device.type != "cpu" else kernels.linear_rounded(x, weight, bias)


def gumbel_max(logp: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor] | None:
    """One categorical choice per row sampled by Gumbel-max in one C++ call (heads_cpu.cpp): logp [B, A]
    log-probabilities, uniform [B, A] in [0, 1) → action [B] (argmax of logp - log(-log uniform)), its
    log-probability [B]; None where the kernel does not apply (not float32 on the CPU, not built)."""
    kernels = for_input(logp)
    if kernels is None or logp.dim() != 2 or uniform.dtype != torch.float32:
        return None
    return tuple(kernels.gumbel_max(logp, uniform))


class TokenBagCPU(torch.autograd.Function):
    """`TokenEncoder`'s sum over present tokens, read from the uint8 token list in C++ (tokens_cpu.cpp): obs
    [rows, slots, 3] uint8, table [2 * 256 * features, embed] → [rows, embed] and the largest feature id among
    the present tokens (an int, -1 if none); the gradient flows to the table only."""

    @staticmethod
    def forward(ctx, obs: Tensor, table: Tensor, features: int):
        out, max_feature = get().token_bag_forward(obs, table, features)
        ctx.save_for_backward(obs)
        ctx.features = features
        return out, max_feature

    @staticmethod
    def backward(ctx, grad: Tensor, *_):
        (obs,) = ctx.saved_tensors
        return None, get().token_bag_backward(obs, grad, ctx.features), None


def token_bag(obs: Tensor, table: Tensor, features: int) -> tuple[Tensor, int] | None:
    """obs [..., slots, 3] → the token sum [rows, embed] of `TokenBagCPU` and the largest feature id among the
    present tokens (-1 if none), or None where the kernel does not apply (uint8 tokens and a float32 table on the
    CPU, built) and the caller computes the sum with `nn.EmbeddingBag`. Without gradients (the rollout) the
    kernel is called directly, with no autograd node."""
    if obs.dtype != torch.uint8 or obs.device.type != "cpu" or for_input(table) is None:
        return None
    rows = obs.reshape(-1, *obs.shape[-2:])
    if torch.is_grad_enabled() and table.requires_grad:
        return TokenBagCPU.apply(rows, table, features)
    return get().token_bag_forward(rows, table, features)
