"""Compiled recurrences and their explicit build: C++ for the CPU (`cpu`, from scan_cpu.cpp) and triton for
CUDA (`triton_scan`).

`build(device, core)` builds what a policy will call, so that no timed phase (a rollout, a benchmark) pays
for a compiler. The trainer calls it while wiring; `carrystate build-kernels` calls it from the shell.
"""

from __future__ import annotations

from pathlib import Path

import torch

from carrystate.policy.kernels import cpu


def build(device: torch.device | str = "cpu", core: str = "lstm", encoder: str = "mlp") -> Path | None:
    """Build now the kernels a `core` policy with an `encoder` on `device` uses: the C++ kernels on the CPU for
    an LSTM (its rollout step and the `scan` unroll) or a token encoder (its sum and backward); compiled once
    per machine, afterwards a load from torch's cache. Returns the built library's path, or None where nothing
    is built: other cores and encoders or another device (triton compiles its kernels itself on their first
    launch, per shape), `CARRYSTATE_NO_CPP=1`, or a failed build (warned; torch ops run instead)."""
    if (core != "lstm" and encoder != "token") or torch.device(device).type != "cpu":
        return None
    module = cpu.build()
    return Path(module.__file__) if module is not None else None
