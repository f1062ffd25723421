"""The window core (`window`): frame stacking. Its state is the last `window - 1` inputs, and it reads them with
the current one through one ReLU layer. It remembers exactly `window - 1` steps and nothing older, and needs no
unroll: its `sequence` reads every step's window at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carrystate.policy.cores import CoreModule
from carrystate.state import Shapes, State

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


class WindowCore(CoreModule):
    """Frame stacking: y_t = ReLU(W · [x_{t-window+1}, ..., x_t] + b), where inputs from before the episode's
    first step are zeros. The state is those last `window - 1` inputs, oldest first: one tensor
    [window - 1, batch, in_size], carried, stored and reset like any other (a reset zeroes every frame)."""

    def __init__(self, in_size: int, hidden_size: int, window: int):
        super().__init__()
        if window < 2:
            raise ValueError(f"policy.window={window} must be at least 2 (the current input and one before it)")
        self.in_size, self.hidden_size, self.window = in_size, hidden_size, window
        self.out_size = hidden_size
        self.read = nn.Linear(window * in_size, hidden_size)  # frames in time order, each in_size wide
        nn.init.orthogonal_(self.read.weight)
        nn.init.zeros_(self.read.bias)

    @classmethod
    def from_config(cls, in_size: int, cfg: PolicyConfig) -> WindowCore:
        return cls(in_size, cfg.hidden_size, cfg.window)

    @property
    def state_shapes(self) -> Shapes:
        return ((self.window - 1, self.in_size),)

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
