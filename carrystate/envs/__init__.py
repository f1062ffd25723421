"""Environment batches behind one protocol (`VecEnv`), and `make_env` to build one from config."""

from __future__ import annotations

from functools import partial

from carrystate.config import EnvConfig
from carrystate.envs.base import StepResult, VecEnv
from carrystate.envs.custom import make_custom
from carrystate.envs.gym_adapter import GymVecEnv, HideVelocity
from carrystate.envs.memory import DelayedRecall, TMaze
from carrystate.envs.vector import BATCH_SEED_STRIDE, WORKER_SEED_STRIDE, EnvBatches, ProcessVecEnv

ENV_NAMES = ("tmaze", "recall", "gymnasium", "pettingzoo", "popgym", "mettagrid", "custom")


def make_batch(cfg: EnvConfig, num_envs: int, seed: int) -> VecEnv:
    """`num_envs` copies of the configured env, stepped in this process."""
    if cfg.name == "tmaze":
        return TMaze(num_envs, cfg.tmaze.length_min, cfg.tmaze.length_max, seed=seed)
    if cfg.name == "recall":
        r = cfg.recall
        return DelayedRecall(num_envs, r.num_symbols, r.delay_min, r.delay_max, seed=seed)
    if cfg.name == "gymnasium":
        g = cfg.gymnasium
        return GymVecEnv(g.id, num_envs, g.hide_velocity, g.vectorization, seed, g.kwargs, g.wrappers, g.success_above)
    if cfg.name == "pettingzoo":
        from carrystate.envs.pettingzoo_adapter import make_pettingzoo

        return make_pettingzoo(cfg.pettingzoo.env, cfg.pettingzoo.kwargs, num_envs, seed=seed)
    if cfg.name == "popgym":
        from carrystate.envs.popgym_adapter import PopGymVecEnv

        return PopGymVecEnv(cfg.popgym.id, num_envs, cfg.popgym.previous_action, seed=seed)
    if cfg.name == "mettagrid":
        from carrystate.envs.mettagrid_adapter import MettaGridVecEnv

        m = cfg.mettagrid
        return MettaGridVecEnv(
            num_envs, m.map, m.agents, m.size, m.altars, m.walls, m.max_steps, m.obs_tokens, seed=seed
        )
    if cfg.name == "custom":
        return make_custom(cfg.custom.factory, cfg.custom.kwargs, num_envs, seed)
    raise ValueError(f"env.name={cfg.name!r} is not one of {', '.join(ENV_NAMES)}")


def _make_one_batch(cfg: EnvConfig, num_envs: int, seed: int) -> VecEnv:
    """One batch: in this process (env.workers=0) or split over env.workers worker processes."""
    if not cfg.workers:
        return make_batch(cfg, num_envs, seed)
    per_worker = num_envs // cfg.workers
    factories = [partial(make_batch, cfg, per_worker, seed + k * WORKER_SEED_STRIDE) for k in range(cfg.workers)]
    return ProcessVecEnv(factories, timeout=cfg.worker_timeout, name=f"env.name={cfg.name}")


def make_env(cfg: EnvConfig, seed: int) -> VecEnv:
    """Build the env batch the config names (two alternating batches with env.double_buffer)."""
    if not cfg.double_buffer:
        return _make_one_batch(cfg, cfg.num_envs, seed)
    half = cfg.num_envs // 2
    batches = []
    try:
        for b in range(2):
            batches.append(_make_one_batch(cfg, half, seed + b * BATCH_SEED_STRIDE))
    except Exception:
        for env in batches:
            env.close()
        raise
    return EnvBatches(batches)


__all__ = [
    "VecEnv",
    "StepResult",
    "make_env",
    "make_batch",
    "TMaze",
    "DelayedRecall",
    "GymVecEnv",
    "HideVelocity",
    "ProcessVecEnv",
    "EnvBatches",
]
