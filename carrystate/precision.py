"""The policy's arithmetic precision (`trainer.precision`): what runs in bf16 and what stays fp32.

`fp32` is everything in float32, exact as the invariant tests state. `bf16` runs the policy's matrix products in
bfloat16, on the CPU and on CUDA alike, in the rollout step and in training's replay: their operands are rounded
to bf16, products are accumulated in fp32 and the result is rounded to bf16 (torch's autocast rules, which the
encoders and heads run under); the recurrent cores do the same to their input and recurrent products by hand, so
that everything around those products stays fp32: the gates and the cell update, the carried state and the
stored start states. The policy's outputs (action logits, values) are cast to fp32, so the losses, GAE, the
normalisation statistics and the optimizer, with its fp32 master weights, never see bf16.

`autocast` is the one context the policy enters; `active(x)` tells a core inside it whether it runs in bf16.
`frozen` is the rollout's: its weights do not change inside it, so bf16 copies of them made there may be kept
until it ends (`frozen_generation`); torch's own autocast keeps its weight casts for that long too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor


def autocast(precision: str, device: torch.device | str):
    """The context a policy call runs in: torch's autocast to bf16 on `device`, or nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def active(x: Tensor) -> bool:
    """Whether the caller runs under bf16 autocast on `x`'s device (a core's cue to take its bf16 path)."""
    kind = x.device.type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16


def off(x: Tensor):
    """A context with autocast off on `x`'s device, where a core's bf16 path rounds its own operands."""
    return torch.autocast(x.device.type, enabled=False)


def to_fp32(t: Tensor) -> Tensor:
    """`t` as float32 (itself where it is)."""
    return t if t.dtype == torch.float32 else t.float()


_frozen = threading.local()


@contextmanager
def frozen(precision: str, device: torch.device | str):
    """`autocast` around a whole rollout, whose weights stay as they are until it ends: bf16 copies of them made
    inside may be kept for its length (one cast per weight per rollout, not per step)."""
    _frozen.generation = getattr(_frozen, "generation", 0) + 1
    _frozen.inside = True
    try:
        with autocast(precision, device):
            yield
    finally:
        _frozen.inside = False


def frozen_generation() -> int | None:
    """A number that names the `frozen` block running now (a new one each time), or None outside one."""
    return _frozen.generation if getattr(_frozen, "inside", False) else None
