"""The LSTM and GRU cores (`lstm`, `gru`): `nn.LSTM`/`nn.GRU` weights, the rollout's `step` (for an LSTM on the
CPU the C++ step) and training's `sequence`, which runs the unroll `policy.sequence_impl` names
(`carrystate.policy.unroll`). `fused` is the plain fused call, which ignores resets: the unrolls run it over
pieces of a segment, and benchmarks take it as the floor.

Under bf16 (carrystate/precision.py) `fused` is a step loop whose products take bf16 operands and whose state
stays fp32 (nn.LSTM under autocast would carry its state in bf16; nn.GRU has no bf16 path on the CPU): for the
LSTM the scan's recurrence without resets, for the GRU `gru_bf16`. A packed sequence is refused there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from carrystate import precision, registry
from carrystate.policy import unroll
from carrystate.policy.cores import CoreModule
from carrystate.policy.kernels import cpu
from carrystate.state import Shapes, State

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


class RecurrentCore(CoreModule):
    """A stack of `num_layers` recurrent layers: [batch, (T,) in_size] features → [batch, (T,) hidden] outputs.
    Recurrent weights start orthogonal and biases at 0 (an LSTM's gate biases may start otherwise)."""

    kind: str  # the registry name, which the unrolls and `auto` read
    rnn_class: type[nn.RNNBase]
    num_state_tensors: int

    def __init__(self, in_size: int, hidden_size: int, num_layers: int = 1, impl: str = "auto"):
        super().__init__()
        registry.check_unroll(impl, self.kind)
        self.hidden_size, self.num_layers, self.impl = hidden_size, num_layers, impl  # impl: an unroll, or auto
        self.out_size = hidden_size
        self.rnn = self.rnn_class(in_size, hidden_size, num_layers, batch_first=True)
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.orthogonal_(p)

    @classmethod
    def from_config(cls, in_size: int, cfg: PolicyConfig) -> RecurrentCore:
        return cls(in_size, cfg.hidden_size, cfg.num_layers, cfg.sequence_impl)

    @property
    def state_shapes(self) -> Shapes:
        return ((self.num_layers, self.hidden_size),) * self.num_state_tensors

    def fused(self, x: Tensor | nn.utils.rnn.PackedSequence, state: State) -> tuple[Tensor, State]:
        """One fused call with no resets: x [batch, T, in] (or a packed sequence), state at t=0 → y [batch, T,
        hidden], state after the last step."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for every row: x [batch, in], state (already zero where an episode starts: the
        `StateStore` reset it) → y [batch, hidden], new state."""
        y, state = self.fused(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        """x [batch, T, in], state at t=0, resets [batch, T] bool → y [batch, T, hidden], state after T-1
        (or () when `end_state` is false and the unroll can skip it).

        The one training unroll: `self.impl` from the registry (`auto`: the fastest there for this core and
        device, see `unroll.resolve_auto`); every unroll applies the resets exactly and they agree to float
        rounding."""
        bf16 = precision.active(x)
        name = unroll.resolve_auto(self.kind, x.device, self.hidden_size, bf16) if self.impl == "auto" else self.impl
        return unroll.run(name)(self, x, state, resets, end_state)

    def _bf16_input(self, x: Tensor | nn.utils.rnn.PackedSequence) -> bool:
        """Whether `fused` takes its bf16 path; a packed sequence is refused there."""
        if isinstance(x, nn.utils.rnn.PackedSequence):
            if precision.active(x.data):
                registry.check_precision("packed", self.kind, "bf16")
            return False
        return precision.active(x)


class LSTMCore(RecurrentCore):
    """An LSTM; state (h, c). Gate biases start by the chrono initialisation (Tallec & Ollivier 2018: forget bias
    log U(1, T_max - 1), input bias its negative unless `chrono_input` is false; `chrono_spread=log` spreads the
    memory lengths log-uniformly), or with `chrono_tmax=0` at 0, the forget gates at `forget_bias`."""

    kind, rnn_class, num_state_tensors = "lstm", nn.LSTM, 2

    def __init__(
        self,
        in_size: int,
        hidden_size: int,
        num_layers: int = 1,
        impl: str = "auto",
        forget_bias: float = 0.0,
        chrono_tmax: int = 128,
        chrono_input: bool = True,
        chrono_spread: str = "uniform",
    ):
        if chrono_tmax and forget_bias:
            raise ValueError(f"forget_bias={forget_bias} needs chrono_tmax=0 (chrono sets the forget-gate biases)")
        super().__init__(in_size, hidden_size, num_layers, impl)
        H = hidden_size
        if forget_bias or chrono_tmax:
            with torch.no_grad():
                for layer in range(num_layers):  # gates i, f, g, o: the forget gate's bias is the second quarter
                    bias = getattr(self.rnn, f"bias_ih_l{layer}")  # bias_hh stays 0
                    if chrono_tmax:
                        if chrono_spread == "log":
                            forget = torch.rand(H) * math.log(chrono_tmax - 1)
                        else:
                            forget = torch.log(1 + torch.rand(H) * (chrono_tmax - 2))
                        bias[H : 2 * H] = forget
                        if chrono_input:
                            bias[:H] = -forget
                    else:
                        bias[H : 2 * H] = forget_bias

    @classmethod
    def from_config(cls, in_size: int, cfg: PolicyConfig) -> LSTMCore:
        c = cfg
        chrono = (c.chrono_tmax, c.chrono_input, c.chrono_spread)
        return cls(in_size, c.hidden_size, c.num_layers, c.sequence_impl, c.forget_bias, *chrono)

    def fused(self, x: Tensor | nn.utils.rnn.PackedSequence, state: State) -> tuple[Tensor, State]:
        if self._bf16_input(x):
            no_resets = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            return unroll.run("scan")(self, x, state, no_resets)
        y, (h, c) = self.rnn(x, state)
        return y, (h, c)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """On the CPU the C++ step where it is built (`policy/kernels`); under bf16 with bf16 copies of the weight
        matrices, made once per rollout (`precision.rollout_copies`)."""
        bf16, weights, small = precision.active(x), None, False
        if bf16:  # few rows: the products on fp32 units (precision.Linear)
            small = precision.small(x.shape[0], self.rnn.input_size, 4 * self.hidden_size)
            weights = precision.rollout_copies(self, self.rnn._flat_weights, _rounded if small else _bf16)
        if (out := cpu.lstm_step(self.rnn, x, state, bf16, weights, small)) is not None:
            return out
        return super().step(x, state)

    def frozen_call(self, bf16: bool):
        """`step` without gradients in a `frozen` block as one plain call of the C++ step over copies of the
        weights made now (both sets under bf16: rounded for few rows, bf16 for more, chosen per call as `step`
        does); None where the kernel does not apply."""
        rnn, kernels = self.rnn, cpu.for_input(self.rnn.weight_ih_l0)
        if kernels is None or not rnn.bias or rnn.proj_size:
            return None
        flat = [w.detach() for w in rnn._flat_weights]
        ways = {False: flat} if not bf16 else {True: [_rounded(w) for w in flat], False: [_bf16(w) for w in flat]}

        def call(x: Tensor, state: State) -> tuple[Tensor, State]:
            small = bf16 and precision.small(x.shape[0], rnn.input_size, 4 * self.hidden_size)
            y, h, c = kernels.step(x, state[0], state[1], ways[small], bf16, small)
            return y, (h, c)

        return call


def _bf16(w: Tensor) -> Tensor:
    """A weight matrix as bf16 (a bias as it is)."""
    return w.to(torch.bfloat16) if w.dim() == 2 else w


def _rounded(w: Tensor) -> Tensor:
    """A weight matrix's values rounded to bf16, as fp32 (a bias as it is)."""
    return precision.rounded(w) if w.dim() == 2 else w


class GRUCore(RecurrentCore):
    """A GRU; state (h,)."""

    kind, rnn_class, num_state_tensors = "gru", nn.GRU, 1

    def fused(self, x: Tensor | nn.utils.rnn.PackedSequence, state: State) -> tuple[Tensor, State]:
        if self._bf16_input(x):
            with precision.off(x):
                return gru_bf16(self.rnn, x, state[0])
        y, h = self.rnn(x, state[0])
        return y, (h,)


def gru_bf16(rnn: nn.GRU, x: Tensor, h0: Tensor) -> tuple[Tensor, State]:
    """nn.GRU's math (gates r, z, n) as a step loop with bf16 products and an fp32 state: x [B, T, in], h0
    [layers, B, H] → y [B, T, H] (fp32), (h after the last step,)."""
    b16, inp, ends = torch.bfloat16, x, []
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{layer}").to(b16) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        gi = F.linear(inp.to(b16), w_ih, b_ih).float()  # [B, T, 3H]: every step's input product at once
        h, ys = h0[layer], []
        for t in range(x.shape[1]):
            i_r, i_z, i_n = gi[:, t].chunk(3, -1)
            h_r, h_z, h_n = F.linear(h.to(b16), w_hh, b_hh).float().chunk(3, -1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            h = torch.lerp(torch.tanh(i_n + r * h_n), h, z)  # (1 - z) n + z h
            ys.append(h)
        inp = torch.stack(ys, 1)
        ends.append(h)
    return inp, (torch.stack(ends),)
