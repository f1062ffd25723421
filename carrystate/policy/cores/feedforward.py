"""The feed-forward control (`none`): one ReLU layer and no state, to show whether a task needs memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from carrystate.policy.cores import CoreModule
from carrystate.state import State

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


class FeedForwardCore(CoreModule):
    """y = ReLU(W x + b); the state is (). Weights start orthogonal, the bias at 0."""

    state_shapes = ()

    def __init__(self, in_size: int, hidden_size: int):
        super().__init__()
        self.out_size = hidden_size
        self.rnn = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU())  # `rnn`: the name checkpoints hold
        nn.init.orthogonal_(self.rnn[0].weight)
        nn.init.zeros_(self.rnn[0].bias)

    @classmethod
    def from_config(cls, in_size: int, cfg: PolicyConfig) -> FeedForwardCore:
        return cls(in_size, cfg.hidden_size)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.rnn(x), ()

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        return self.rnn(x), ()
