"""The exact training unrolls, registered by name: what each one is, which cores it runs, and which one `auto`
picks on a device.

Every unroll is called as `run(core, x, state, resets, end_state)`: x [batch, T, in], the state at t=0,
resets [batch, T] bool (true: the row's state is zeroed before step t's input is read, in every layer) →
y [batch, T, hidden] and the state after step T-1 (or () where `end_state` is false and the unroll can skip
it). All of them apply the resets exactly and agree to float rounding (tests/test_policy.py). The choices of
`policy.sequence_impl` and their documentation (`carrystate config`) are built from `UNROLLS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from carrystate.policy.kernels import triton_scan
from carrystate.policy.unroll import fragments, scan

if TYPE_CHECKING:
    from carrystate.policy.core import RecurrentCore
    from carrystate.state import State


@dataclass(frozen=True)
class Unroll:
    name: str
    doc: str  # one line for the config's documentation
    kinds: tuple[str, ...]  # the `policy.core` values it runs (with `none` the core is feed-forward: no unroll)
    run: Callable[[RecurrentCore, Tensor, State, Tensor, bool], tuple[Tensor, State]]


ANY_CORE = ("lstm", "gru", "none")
UNROLLS = {
    u.name: u
    for u in [
        Unroll("chunked", "fused calls between reset steps", ANY_CORE, fragments.chunked),
        Unroll("packed", "episode fragments as one packed sequence", ANY_CORE, fragments.packed),
        Unroll("bucketed", "fragments grouped by length, one dense fused call per group", ANY_CORE, fragments.bucketed),
        Unroll("loop", "one step at a time", ANY_CORE, fragments.loop),
        Unroll(
            "scan",
            "LSTM only: a step loop with a hand-written backward, a reset is one multiply; C++ on the CPU, "
            "built by `carrystate build-kernels` or as training starts",
            ("lstm",),
            scan.scan,
        ),
        Unroll(
            "triton",
            "LSTM on a CUDA GPU: that loop as one persistent kernel each way; needs triton",
            ("lstm",),
            scan.triton,
        ),
    ]
}
AUTO_DOC = (
    "scan for an LSTM on the CPU, triton for an LSTM on a GPU where triton is installed, bucketed "
    "otherwise: the fastest measured, see BENCHMARKS.md"
)


def names() -> tuple[str, ...]:
    """Every registered unroll's name (without `auto`)."""
    return tuple(UNROLLS)


def describe() -> str:
    """The documentation of `policy.sequence_impl`: every unroll's one line, then `auto`'s."""
    return (
        "How training unrolls segments with exact resets: "
        + ", ".join(f"`{u.name}` ({u.doc})" for u in UNROLLS.values())
        + f", `auto` ({AUTO_DOC})."
    )


def check(name: str, kind: str) -> None:
    """Raise ValueError, naming the setting and the choices, where `name` is no unroll or cannot run `kind`."""
    if name != "auto" and name not in UNROLLS:
        raise ValueError(f"policy.sequence_impl={name!r} is not one of {', '.join(('auto', *UNROLLS))}")
    if name != "auto" and kind not in UNROLLS[name].kinds:
        fitting = ["auto", *(u.name for u in UNROLLS.values() if kind in u.kinds)]
        use = f"{', '.join(fitting[:-1])} or {fitting[-1]}" if len(fitting) > 1 else "auto"
        raise ValueError(
            f"policy.sequence_impl={name} is written for core={' or core='.join(UNROLLS[name].kinds)}, "
            f"not core={kind}; use {use}"
        )


def resolve_auto(kind: str, device: torch.device, hidden: int) -> str:
    """The unroll `auto` runs for a `kind` core of width `hidden` on `device`: the fastest exact one measured
    there (BENCHMARKS.md)."""
    if kind == "lstm" and device.type == "cpu":
        return "scan"
    if kind == "lstm" and device.type == "cuda" and triton_scan.available(device, hidden):
        return "triton"
    return "bucketed"
