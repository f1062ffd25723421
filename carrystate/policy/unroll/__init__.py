"""The exact training unrolls of an LSTM or GRU core, by name (`carrystate.registry.UNROLLS`: what each one is and
which cores it runs), and which one `auto` picks on a device.

Every unroll is called as `run(core, x, state, resets, end_state)`: x [batch, T, in], the state at t=0,
resets [batch, T] bool (true: the row's state is zeroed before step t's input is read, in every layer) →
y [batch, T, hidden] and the state after step T-1 (or () where `end_state` is false and the unroll can skip
it). All of them apply the resets exactly and agree to float rounding (tests/test_policy.py).
"""

from __future__ import annotations

from functools import cache

import torch

from carrystate import registry
from carrystate.registry import UNROLLS


def names() -> tuple[str, ...]:
    """Every registered unroll's name (without `auto`)."""
    return tuple(UNROLLS)


@cache
def run(name: str):
    """The function of the unroll `name`."""
    return registry.load(UNROLLS[name].target, "policy.sequence_impl")


def resolve_auto(kind: str, device: torch.device, hidden: int, bf16: bool = False) -> str:
    """The unroll `auto` runs for a `kind` core of width `hidden` on `device` (in bf16 or not): the fastest exact
    one measured there (BENCHMARKS.md) that runs in that precision."""
    if kind == "lstm" and (device.type == "cpu" or bf16):
        return "scan"
    if bf16:  # the GRU's bf16 fused call is a step loop: fragments gain nothing, the fewest calls win
        return "chunked"
    if kind == "lstm" and device.type == "cuda":
        from carrystate.policy.kernels import triton_scan

        if triton_scan.available(device, hidden):
            return "triton"
    return "bucketed"
