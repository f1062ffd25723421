"""A memory core of a user's own, the example of docs/custom.md (Your own memory core): a leaky Elman RNN that
follows the `carrystate.policy.cores.Core` protocol as a plain `torch.nn.Module`, with nothing of carrystate imported.

    h_t = decay * h_{t-1} + (1 - decay) * tanh(W x_t + U h_{t-1} + b)

`carrystate train policy.core=tests.user_core:LeakyRNN policy.core_options.decay=0.5` trains it (from the
repository root, where `tests` is importable); the invariant tests run over it as over every registered core.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeakyRNN(nn.Module):
    """One state tensor h [1, batch, hidden]; the output is h. `decay` (a `policy.core_options` keyword) is
    the share of h_{t-1} kept as it is at each step."""

    def __init__(self, in_size: int, cfg, decay: float = 0.9):  # cfg: the PolicyConfig
        super().__init__()
        self.decay, self.out_size = decay, cfg.hidden_size
        self.state_shapes = ((1, cfg.hidden_size),)  # (depth, width) of each state tensor
        self.inp = nn.Linear(in_size, cfg.hidden_size)  # W, b
        self.rec = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)  # U

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x [batch, in], state (h [1, batch, hidden], zero where an episode starts) → y [batch, hidden], (h,)."""
        h = state[0][0]
        h = self.decay * h + (1 - self.decay) * torch.tanh(self.inp(x) + self.rec(h))
        return h, (h.unsqueeze(0),)

    def sequence(self, x: Tensor, state, resets: Tensor, end_state: bool = True):
        """x [batch, T, in], resets [batch, T] → y [batch, T, hidden], (h after step T-1,): step t reads a zero
        state where resets[:, t] (torch.where: no gradient reaches the episode before)."""
        ys = []
        for t in range(x.shape[1]):
            state = (torch.where(resets[:, t, None], 0.0, state[0]),)  # [B, 1] broadcast over [1, B, hidden]
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1), state
