"""The policy's arithmetic precision (`trainer.precision`): what runs in bf16 and what stays fp32.

`fp32` is everything in float32, exact as the invariant tests state. `bf16` runs the policy's matrix products in
bfloat16, on the CPU and on CUDA alike, in the rollout step and in training's replay: their operands are rounded
to bf16, products are accumulated in fp32 and the result is rounded to bf16 (torch's autocast rules, which the
encoders and heads run under); the recurrent cores do the same to their input and recurrent products by hand, so
that everything around those products stays fp32: the gates and the cell update, the carried state and the
stored start states. The policy's outputs (action logits, values) are cast to fp32, so the losses, GAE, the
normalisation statistics and the optimizer, with its fp32 master weights, never see bf16.

`autocast` is the one context the policy enters; `active(x)` tells a core inside it whether it runs in bf16.
`frozen` is the rollout's: its weights do not change inside it, so what is made from them there may be kept until
it ends (`frozen_kept`: `rollout_copies`, Policy's rollout plan); torch's own autocast keeps its weight casts for
that long too.

A small product without gradients (the rollout's step: tens of rows, or a head of a few outputs) costs a bf16 GEMM
call a fixed tens of microseconds on the CPU, several times an fp32 GEMM of that size; and a rollout whose LSTM step
takes bf16 GEMMs at 48 rows measured slower as a whole than one taking them on fp32 units, or level, though the step
alone is faster (BENCHMARKS.md; `python -m benchmarks.precision ... --small-step 4`). `Linear` computes such a
product as an fp32 GEMM of the bf16-rounded operands, rounded to bf16: a product of two bf16 numbers is exact in
fp32 and both accumulate in fp32, so it gives the bf16 GEMM's values up to the order of summation, at the fp32
GEMM's speed.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carrystate.policy.kernels import cpu


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
    previous, _frozen.kept = frozen_kept(), {}
    try:
        with autocast(precision, device):
            yield
    finally:
        _frozen.kept = previous


def frozen_kept() -> dict | None:
    """A dict that lives as long as the `frozen` block running now (None outside one): what is made once per
    block and dropped with it (`rollout_copies`, Policy's rollout plan)."""
    return getattr(_frozen, "kept", None)


def rollout_copies(owner: nn.Module, tensors: list[Tensor], make) -> list[Tensor]:
    """`make(t)` of each tensor (detached), made once per `frozen` block (per owner and `make`, anew where the
    tensors are others) and kept for its length (`frozen_kept`); made anew on every call outside one."""
    kept = frozen_kept()
    if kept is None:
        return [make(t.detach()) for t in tensors]
    key, ptrs = (id(owner), make.__name__), tuple(t.data_ptr() for t in tensors)
    found = kept.get(key)
    if found is None or found[0] != ptrs:
        found = kept[key] = (ptrs, [make(t.detach()) for t in tensors])
    return found[1]


def rounded(t: Tensor) -> Tensor:
    """t's values rounded to bf16 (round to nearest even), as fp32."""
    return t.to(torch.bfloat16).float()


# multiply-adds (rows × in × out) up to which a bf16 product without gradients runs on fp32 units (`Linear`, the
# LSTM's step): a hidden-128 LSTM step up to 64 rows
SMALL_PRODUCT = 1 << 22


def small(rows: int, k: int, n: int) -> bool:
    """Whether a bf16 product [rows, k] × [k, n] taken without gradients runs on fp32 units (`SMALL_PRODUCT`)."""
    return rows * k * n <= SMALL_PRODUCT


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state dict) whose small bf16 products without gradients run as the
    fp32 GEMM of bf16-rounded operands, rounded to bf16 (the module docstring); everything else as nn.Linear."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if torch.is_grad_enabled() or not active(x) or not small(rows, self.in_features, self.out_features):
            return super().forward(x)
        weight, bias = rollout_copies(self, [self.weight, self._bias()], rounded)
        if (out := cpu.linear_rounded(x, weight, bias)) is not None:  # the same in one C++ call
            return out
        with off(x):
            return F.linear(rounded(x), weight, bias).to(torch.bfloat16)

    def _bias(self) -> Tensor:
        return self.weight.new_zeros(self.out_features) if self.bias is None else self.bias

    def frozen_call(self, bf16: bool):
        """What `forward` computes without gradients in a `frozen` block (bf16: under its autocast), as one plain
        call over copies of the weights made now (Policy's rollout plan, policy/network.py); None where the CPU
        kernels do not apply."""
        kernels = cpu.for_input(self.weight)
        if kernels is None:
            return None
        weight, bias = self.weight.detach(), None if self.bias is None else self.bias.detach()
        if not bf16:
            return lambda x: F.linear(x, weight, bias)
        w_rounded, b_rounded = rounded(weight), rounded(self._bias().detach())
        w16, b16 = weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)

        def call(x: Tensor) -> Tensor:
            if not small(x.numel() // self.in_features, self.in_features, self.out_features):  # as autocast casts it
                return F.linear(x.to(torch.bfloat16), w16, b16)
            return kernels.linear_rounded(x, w_rounded, b_rounded)

        return call
