"""Issue 27, item 1: a layer-normalised LSTM cell (Ba et al. 2016, section 3.1) as a memory core of a user's own, so
it can be measured against the shipped LSTM without new cell math in every unroll:

    gates = LN_h(U h_{t-1}) + LN_x(W x_t) + b      (i, f, g, o: each [H] slice of the [4H] gates)
    c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(LN_c(c_t))

Weights start as the shipped LSTM's (orthogonal, biases 0; `chrono_tmax` > 0: the chrono gate biases), the
normalisations at gain 1 and shift 0. It runs as a plain torch loop under every unroll name (`auto`).

    python experiments/lstm_memory.py popgym_first --settings ln_lstm --seeds 1 --steps 2000000
    CARRYSTATE_TEST_CORES=experiments.ln_lstm:LayerNormLSTM pytest tests/test_invariants.py   # the invariant suite
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNormLSTM(nn.Module):
    """State (h, c), each [1, batch, hidden]; the output is h."""

    def __init__(self, in_size: int, cfg, chrono_tmax: int = 0):  # cfg: the PolicyConfig
        super().__init__()
        H = self.out_size = cfg.hidden_size
        self.state_shapes = ((1, H), (1, H))
        self.w_x = nn.Linear(in_size, 4 * H, bias=False)
        self.w_h = nn.Linear(H, 4 * H, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * H))
        self.ln_x, self.ln_h, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)
        nn.init.orthogonal_(self.w_x.weight)
        nn.init.orthogonal_(self.w_h.weight)
        if chrono_tmax:
            with torch.no_grad():
                forget = torch.log(1 + torch.rand(H) * (chrono_tmax - 2))
                self.bias[H : 2 * H], self.bias[:H] = forget, -forget

    def _cell(self, gx: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = (self.ln_h(self.w_h(h)) + gx + self.bias).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(self.ln_c(c)), c

    def step(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x [batch, in], state (h, c) [1, batch, hidden], zero where an episode starts → y [batch, hidden]."""
        h, c = self._cell(self.ln_x(self.w_x(x)), state[0][0], state[1][0])
        return h, (h.unsqueeze(0), c.unsqueeze(0))

    def sequence(self, x: Tensor, state, resets: Tensor, end_state: bool = True):
        """x [batch, T, in], resets [batch, T] → y [batch, T, hidden], (h, c) after step T-1: step t starts from
        zeros where resets[:, t] (torch.where: no gradient reaches the episode before)."""
        gx = self.ln_x(self.w_x(x))  # the input half of every step at once
        h, c = state[0][0], state[1][0]
        ys = []
        for t in range(x.shape[1]):
            keep = ~resets[:, t, None]
            h, c = self._cell(gx[:, t], torch.where(keep, h, 0.0), torch.where(keep, c, 0.0))
            ys.append(h)
        return torch.stack(ys, 1), (h.unsqueeze(0), c.unsqueeze(0))
