"""The recurrent core: `lstm`, `gru`, `window` or `none`, with `step` (T=1, rollout) and `sequence` (T>1,
training), and `state_shapes`, the (depth, width) of each state tensor it carries.

State (`carrystate.state.State`) is passed in and returned, never kept. `step` takes the state as it is:
the `StateStore` has already zeroed it where an episode starts. In `sequence`, `resets[b, t]` true means
row b starts a new episode at step t: its state is replaced by zeros *before* the step's input is read, in
every layer, and no other row is touched.

`sequence` is the one place where training unrolls the core; it runs the unroll `policy.sequence_impl`
names, from the registry in `carrystate.policy.unroll`. `fused` is the plain fused `nn.LSTM`/`nn.GRU` call,
which ignores resets: the unrolls run it over pieces of a segment, and benchmarks take it as the floor.

`WindowCore` (`window`) is frame stacking: its state is the last `window - 1` inputs, and it reads them with the
current one through one ReLU layer. It remembers exactly `window - 1` steps and nothing older, and needs no
unroll: its `sequence` reads every step's window at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carrystate.policy import unroll
from carrystate.policy.kernels import cpu
from carrystate.state import Shapes, State, zero_state

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


class RecurrentCore(nn.Module):
    """`kind` in {lstm, gru, none}: maps [batch, (T,) in_size] features to [batch, (T,) hidden] outputs."""

    def __init__(
        self,
        kind: str,
        in_size: int,
        hidden_size: int,
        num_layers: int = 1,
        impl: str = "auto",
        forget_bias: float = 0.0,
        chrono_tmax: int = 0,
    ):
        """Recurrent weights start orthogonal and biases at 0, except an LSTM's gates: with `chrono_tmax` > 0 the
        chrono initialisation (Tallec & Ollivier 2018), else the forget gates at `forget_bias`."""
        super().__init__()
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        unroll.check(impl, kind)
        self.impl = impl  # a name in unroll.UNROLLS, or auto
        if kind == "lstm":
            self.rnn = nn.LSTM(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 2
        elif kind == "gru":
            self.rnn = nn.GRU(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 1
        elif kind == "none":
            self.rnn = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU())
            self.num_state_tensors = 0
        else:
            raise ValueError(f"policy.core={kind!r} is not one of lstm, gru, none")
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.orthogonal_(p)
        if kind == "lstm" and (forget_bias or chrono_tmax):
            H = hidden_size
            with torch.no_grad():
                for layer in range(num_layers):  # gates i, f, g, o: the forget gate's bias is the second quarter
                    bias = getattr(self.rnn, f"bias_ih_l{layer}")
                    if chrono_tmax:  # forget bias log U(1, T_max - 1), input bias its negative, bias_hh stays 0
                        forget = torch.log(1 + torch.rand(H) * (chrono_tmax - 2))
                        bias[H : 2 * H] = forget
                        bias[:H] = -forget
                    else:
                        bias[H : 2 * H] = forget_bias

    @property
    def state_shapes(self) -> Shapes:
        return ((self.num_layers, self.hidden_size),) * self.num_state_tensors

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.state_shapes, batch, device)

    def fused(self, x: Tensor | nn.utils.rnn.PackedSequence, state: State) -> tuple[Tensor, State]:
        """One fused `nn.LSTM`/`nn.GRU` call (the feed-forward layer for `none`) with no resets: x [batch, T, in]
        (or a packed sequence), state at t=0 → y [batch, T, hidden], state after the last step."""
        if self.kind == "lstm":
            y, (h, c) = self.rnn(x, state)
            return y, (h, c)
        if self.kind == "gru":
            y, h = self.rnn(x, state[0])
            return y, (h,)
        return self.rnn(x), ()

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for every row: x [batch, in], state (already zero where an episode starts: the
        `StateStore` reset it) → y [batch, hidden], new state. An LSTM on the CPU runs the C++ step where it is
        built (`policy/kernels`)."""
        if self.kind == "lstm" and (out := cpu.lstm_step(self.rnn, x, state)) is not None:
            return out
        y, state = self.fused(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        """x [batch, T, in], state at t=0, resets [batch, T] bool → y [batch, T, hidden], state after T-1
        (or () when `end_state` is false and the unroll can skip it).

        The one training unroll: `self.impl` from the registry (`auto`: the fastest there for this core and
        device, see `unroll.resolve_auto`); every unroll applies the resets exactly and they agree to float
        rounding."""
        if self.kind == "none":
            return self.rnn(x), ()
        name = unroll.resolve_auto(self.kind, x.device, self.hidden_size) if self.impl == "auto" else self.impl
        return unroll.UNROLLS[name].run(self, x, state, resets, end_state)


class WindowCore(nn.Module):
    """Frame stacking: y_t = ReLU(W · [x_{t-window+1}, ..., x_t] + b), where inputs from before the episode's
    first step are zeros. The state is those last `window - 1` inputs, oldest first: one tensor
    [window - 1, batch, in_size], carried, stored and reset like any other (a reset zeroes every frame)."""

    num_state_tensors = 1

    def __init__(self, in_size: int, hidden_size: int, window: int):
        super().__init__()
        if window < 2:
            raise ValueError(f"policy.window={window} must be at least 2 (the current input and one before it)")
        self.in_size, self.hidden_size, self.window = in_size, hidden_size, window
        self.read = nn.Linear(window * in_size, hidden_size)  # frames in time order, each in_size wide
        nn.init.orthogonal_(self.read.weight)
        nn.init.zeros_(self.read.bias)

    @property
    def state_shapes(self) -> Shapes:
        return ((self.window - 1, self.in_size),)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.state_shapes, batch, device)

    def _out(self, frames: Tensor) -> Tensor:
        """frames [..., window, in] (oldest first) → [..., hidden]."""
        return torch.relu(self.read(frames.flatten(-2)))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x [batch, in], state (zero where an episode starts) → y [batch, hidden], the last window - 1 inputs."""
        frames = torch.cat([state[0], x.unsqueeze(0)])  # [window, batch, in]
        return self._out(frames.transpose(0, 1)), (frames[1:],)

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        """x [batch, T, in], the state at t=0, resets [batch, T] → y [batch, T, hidden], state after T-1.

        Step t reads the inputs at t-window+1 .. t (the first window - 1 from the state), keeping those at or
        after the latest reset at or before t: every window at once, as one masked view and one matmul."""
        B, T, _ = x.shape
        W = self.window
        seq = torch.cat([state[0].transpose(0, 1), x], 1)  # [B, W-1+T, in]: position p is time p - (W-1)
        frames = seq.unfold(1, W, 1).transpose(2, 3)  # [B, T, W, in]: step t's frames, oldest first
        t = torch.arange(T, device=x.device)
        # the latest reset at or before t (or -W: none, every frame is this episode's)
        last = torch.where(resets, t, torch.full_like(t, -W)).cummax(1).values  # [B, T]
        time = t.view(T, 1) - (W - 1) + torch.arange(W, device=x.device)  # [T, W]: each frame's time
        keep = (time >= last.unsqueeze(-1)).to(x.dtype)  # [B, T, W]
        frames = frames * keep.unsqueeze(-1)
        return self._out(frames), (frames[:, -1, 1:].transpose(0, 1),) if end_state else ()


def make_core(cfg: PolicyConfig, in_size: int) -> RecurrentCore | WindowCore:
    """The core `policy.core` names, reading in_size-wide features."""
    if cfg.core == "window":
        return WindowCore(in_size, cfg.hidden_size, cfg.window)
    return RecurrentCore(
        cfg.core, in_size, cfg.hidden_size, cfg.num_layers, cfg.sequence_impl, cfg.forget_bias, cfg.chrono_tmax
    )
