"""Environment batches behind one protocol (`VecEnv`), and `make_env` to build one from config."""

from __future__ import annotations

from functools import partial

from carrystate import registry
from carrystate.config import EnvConfig
from carrystate.envs.base import StepResult, VecEnv
from carrystate.envs.gym_adapter import GymVecEnv, HideVelocity, rgb_array_settings
from carrystate.envs.memory import DelayedRecall, TMaze
from carrystate.envs.vector import BATCH_SEED_STRIDE, WORKER_SEED_STRIDE, EnvBatches, ProcessVecEnv


def make_batch(cfg: EnvConfig, num_envs: int, seed: int) -> VecEnv:
    """`num_envs` copies of the configured env, stepped in this process: the builder the env registry
    (`carrystate.registry.ENVS`) names for env.name."""
    return registry.load(registry.ENVS[cfg.name].target, "env.name")(cfg, num_envs, seed)


def _worker_factories(cfg: EnvConfig, num_envs: int, seed: int) -> list:
    """The builders of a batch's share for each of env.workers worker processes (worker k seeded seed + k × stride)."""
    per_worker = num_envs // cfg.workers
    return [partial(make_batch, cfg, per_worker, seed + k * WORKER_SEED_STRIDE) for k in range(cfg.workers)]


def _make_one_batch(cfg: EnvConfig, num_envs: int, seed: int) -> VecEnv:
    """One batch: in this process (env.workers=0) or split over env.workers worker processes."""
    if not cfg.workers:
        return make_batch(cfg, num_envs, seed)
    factories = _worker_factories(cfg, num_envs, seed)
    return ProcessVecEnv(factories, timeout=cfg.worker_timeout, name=f"env.name={cfg.name}")


def make_env(cfg: EnvConfig, seed: int, render: bool = False) -> VecEnv:
    """Build the env batch the config names (two alternating batches with env.double_buffer); `render`: made to be
    filmed (`render_config`, video.py)."""
    if render:
        cfg = render_config(cfg)
    if not cfg.double_buffer:
        return _make_one_batch(cfg, cfg.num_envs, seed)
    half = cfg.num_envs // 2
    if cfg.shared_workers and cfg.workers:  # both batches on the same env.workers processes, with their seeds
        factories = [_worker_factories(cfg, half, seed + b * BATCH_SEED_STRIDE) for b in range(2)]
        return EnvBatches(ProcessVecEnv.sharing(factories, timeout=cfg.worker_timeout, name=f"env.name={cfg.name}"))
    batches = []
    try:
        for b in range(2):
            batches.append(_make_one_batch(cfg, half, seed + b * BATCH_SEED_STRIDE))
    except Exception:
        for env in batches:
            env.close()
        raise
    return EnvBatches(batches)


def render_config(cfg: EnvConfig) -> EnvConfig:
    """`cfg` for an evaluation that films (video.py): the copies stepped in this process (env.workers=0, where the
    frames are taken; a config with workers then evaluates on other env seeds than without video), and a gymnasium
    id made with render_mode="rgb_array" in one synchronous batch. A ConfigError names a gymnasium id that declares
    no rgb_array rendering."""
    update: dict = {"workers": 0}
    if cfg.name == "gymnasium":
        update["gymnasium"] = rgb_array_settings(cfg.gymnasium)
    return cfg.model_copy(update=update)


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
