"""carrystate: recurrent PPO with exact, carried, segment-detached policy state.

The public API, for scripts, experiments and benchmarks:

    import carrystate
    trainer = carrystate.train("configs/cartpole_novel.yaml", ["trainer.seed=3"])  # trains, returns the Trainer
    trainer.summary, trainer.history, trainer.policy                             # what the run produced
    policy, cfg = carrystate.load("runs/<run>")                                  # a checkpoint's policy and config

`Trainer(cfg)` builds a run without starting it (`trainer.train()` runs it); its public attributes are
`cfg`, `env`, `policy`, `buffer` (the `SegmentBuffer` of the last rollout), `history` (every iteration's
logged scalars), `iteration` and `global_step`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from carrystate.config import Config
    from carrystate.policy import Policy
    from carrystate.trainer import Trainer


def train(config: "str | Path | Config | None" = None, overrides: list[str] = (), *, run_dir: str | Path | None = None,
          quiet: bool = True, iterations: int | None = None) -> "Trainer":
    """Build a run from `config` (a YAML path, a `Config`, or None for the defaults) and `section.key=value`
    overrides, train it (all of `trainer.total_timesteps`, or `iterations` iterations), and return the
    Trainer; `trainer.summary` says what came of it. `run_dir`: where to write logs and checkpoints (None:
    nothing is written)."""
    from carrystate.config import Config, load_config
    from carrystate.trainer import Trainer

    if isinstance(config, Config):
        if overrides:
            raise ValueError("pass overrides with a config file or None, not with a Config object")
        cfg = config
    else:
        cfg = load_config(config, list(overrides))
    trainer = Trainer(cfg, run_dir=run_dir, quiet=quiet)
    trainer.summary = trainer.train(stop_after=iterations)
    return trainer


def load(path: str | Path, device: str = "cpu") -> "tuple[Policy, Config]":
    """The policy of a checkpoint (a checkpoint folder, or a run folder for its newest intact checkpoint) and
    the config it was trained with."""
    from carrystate.trainer import load_policy

    return load_policy(path, device)


def __getattr__(name: str):
    if name == "Trainer":
        from carrystate.trainer import Trainer

        return Trainer
    if name in ("Config", "load_config"):
        from carrystate import config

        return getattr(config, name)
    raise AttributeError(f"module 'carrystate' has no attribute {name!r}")


__all__ = ["train", "load", "Trainer", "Config", "load_config", "__version__"]
