"""The policy's arithmetic precision (`trainer.precision`): what runs in bf16 and what stays fp32.

`fp32` is everything in float32, exact as the invariant tests state. `bf16` runs the policy's matrix products in
bfloat16, on the CPU and on CUDA alike, in the rollout step and in training's replay: their operands are rounded
to bf16, products are accumulated in fp32 and the result is rounded to bf16 (torch's autocast rules, which the
encoders and heads run under); the recurrent cores do the same to their input and recurrent products by hand, so
that everything around those products stays fp32: the gates and the cell update, the carried state and the
stored start states. The policy's outputs (action logits, values) are cast to fp32, so the losses, GAE, the
normalisation statistics and the optimizer, with its fp32 master weights, never see bf16.

`autocast` is the one context the policy enters; `active(x)` tells a core inside it whether it runs in bf16.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16")


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
    """A context with autocast off on `x`'s device: a core's bf16 path rounds its own operands (`bf16_mm`)."""
    return torch.autocast(x.device.type, enabled=False)


def to_fp32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()
