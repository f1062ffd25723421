"""Compiled recurrences and their explicit build: C++ for the CPU (`cpu`, from scan_cpu.cpp) and triton for
CUDA (`triton_scan`).

`build(device, core)` builds what a policy will call, so that no timed phase (a rollout, a benchmark) pays
for a compiler. The trainer calls it while wiring; `carrystate build-kernels` calls it from the shell.
"""

from __future__ import annotations

from pathlib import Path

import torch

from carrystate.policy.kernels import cpu


def build(device: torch.device | str = "cpu", core: str = "lstm") -> Path | None:
    """Build now the kernels a `core` policy on `device` uses: the C++ kernels for an LSTM on the CPU (its
    rollout step and the `scan` unroll; about 30 s once per machine, afterwards a load from torch's cache).
    Returns the built library's path, or None where nothing is built: another core or device (triton compiles
    its kernels itself on their first launch, per shape), `CARRYSTATE_NO_CPP=1`, or a failed build (warned;
    the torch-op loop runs instead)."""
    if core != "lstm" or torch.device(device).type != "cpu":
        return None
    module = cpu.build()
    return Path(module.__file__) if module is not None else None
