"""The policy: encoders (`encoders.py`) → core, the memory (`cores/`, with the exact unrolls of an LSTM or GRU in
`unroll/` and their kernels in `kernels/`) → heads (`heads.py`), assembled by `Policy` (`network.py`).

The package imports its parts only when they are used, so reading the registry of cores or unrolls (as the config
does) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carrystate.policy.network import Policy


def __getattr__(name: str):
    if name == "Policy":
        from carrystate.policy.network import Policy

        return Policy
    raise AttributeError(f"module 'carrystate.policy' has no attribute {name!r}")


__all__ = ["Policy"]
