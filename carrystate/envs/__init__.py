"""Environment batches behind one protocol (`VecEnv`), and `make_env` to build one from config."""

from __future__ import annotations

from carrystate.config import EnvConfig
from carrystate.envs.base import StepResult, VecEnv
from carrystate.envs.gym_adapter import GymVecEnv, HideVelocity
from carrystate.envs.memory import DelayedRecall, TMaze


def make_env(cfg: EnvConfig, seed: int) -> VecEnv:
    """Build the env batch the config names."""
    if cfg.name == "tmaze":
        return TMaze(cfg.num_envs, cfg.tmaze.length_min, cfg.tmaze.length_max, seed=seed)
    if cfg.name == "recall":
        r = cfg.recall
        return DelayedRecall(cfg.num_envs, r.num_symbols, r.delay_min, r.delay_max, seed=seed)
    if cfg.name == "gymnasium":
        g = cfg.gymnasium
        return GymVecEnv(g.id, cfg.num_envs, g.hide_velocity, g.vectorization, seed=seed)
    raise ValueError(f"env.name={cfg.name!r} is not one of tmaze, recall, gymnasium")


__all__ = ["VecEnv", "StepResult", "make_env", "TMaze", "DelayedRecall", "GymVecEnv", "HideVelocity"]
