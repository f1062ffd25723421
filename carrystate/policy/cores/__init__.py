"""The memory between the encoder and the heads: the `Core` protocol every core follows, and `make_core`, which
builds the one `policy.core` names from the registry (`carrystate.registry.CORES`), or a user's own class given as
`module:Class`.

A core maps encoder features to outputs and carries state it never keeps: `step` (rollout, one step for every
row) and `sequence` (training, T steps with resets) take the state in and hand the new one back. Its state is a
tuple of tensors whose shapes it declares (`state_shapes`: (depth, width) each, [depth, batch, width] with the
batch); the `StateStore` carries them per agent, zeroes them where an episode ends, and the segment buffer stores
them at every segment's start, whatever core it is. In `sequence`, `resets[b, t]` true means row b starts a new
episode at step t: its state is zeroed *before* step t's input is read, and no other row is touched. The
invariant tests (tests/test_invariants.py) run over every registered core and a user core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from carrystate import registry
from carrystate.errors import ConfigError
from carrystate.state import Shapes, State, zero_state

if TYPE_CHECKING:
    from carrystate.config import PolicyConfig


@runtime_checkable
class Core(Protocol):
    """What a core is. Built as `Class.from_config(in_size, cfg, **options)` where the class has that classmethod,
    else `Class(in_size, cfg, **options)` (cfg: the `PolicyConfig`; options: `policy.core_options`); must be an
    `nn.Module`."""

    out_size: int  # width of the outputs the heads read

    @property
    def state_shapes(self) -> Shapes:
        """(depth, width) of each state tensor; () for a core without state."""

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x [batch, in], state (already zero where an episode starts) → y [batch, out], the new state."""

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        """x [batch, T, in], the state at t=0, resets [batch, T] bool → y [batch, T, out], the state after step
        T-1 (or () when `end_state` is false). Must equal `step` applied T times with the state zeroed where
        `resets` says, and must not let gradient cross a zeroed state."""


class CoreModule(nn.Module):
    """A convenient base for cores: `initial_state` from `state_shapes`."""

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.state_shapes, batch, device)


def make_core(cfg: PolicyConfig, in_size: int) -> nn.Module:
    """The core `policy.core` names, reading in_size-wide features; a ConfigError naming `policy.core` where a
    user's class cannot be built or does not follow the `Core` protocol."""
    cls = registry.load(registry.core_target(cfg.core), "policy.core")
    build = getattr(cls, "from_config", None) or cls
    try:
        core = build(in_size, cfg, **cfg.core_options)
    except (TypeError, ValueError) as err:
        if cfg.core in registry.CORES:
            raise
        raise ConfigError(
            f"policy.core={cfg.core!r}: building it as {cls.__name__}(in_size, cfg) failed: {err}"
        ) from None
    _check_protocol(core, cfg.core)
    return core


def _check_protocol(core, name: str) -> None:
    missing = [a for a in ("out_size", "state_shapes", "step", "sequence") if not hasattr(core, a)]
    if not isinstance(core, nn.Module) or missing:
        what = f"lacks {', '.join(missing)}" if missing else "is not a torch.nn.Module"
        raise ConfigError(f"policy.core={name!r}: {type(core).__name__} {what} (see carrystate.policy.cores.Core)")
    shapes = core.state_shapes
    if not (isinstance(shapes, tuple) and all(isinstance(s, tuple) and len(s) == 2 for s in shapes)):
        raise ConfigError(
            f"policy.core={name!r}: state_shapes is {shapes!r}; expected a tuple of (depth, width) pairs, one per "
            "state tensor"
        )
