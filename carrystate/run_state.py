"""What a run's state is: everything the next iteration depends on, captured from a live Trainer and restored
into one. Weights, optimizer state, every agent's carried recurrent state, the RNG states of action sampling,
minibatch shuffling and torch, the rollout's current observation, the env's own state (built-in envs),
counters and recent episode results. Under torchrun one checkpoint holds every rank's carried state
(`merge_rank_states`) and each rank reads its own back (`rank_view`). Files are `checkpoint.py`'s job.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from carrystate.checkpoint import CheckpointError, load_checkpoint
from carrystate.config import Config
from carrystate.distributed import DistContext

if TYPE_CHECKING:
    from carrystate.policy import Policy
    from carrystate.trainer import Trainer


@dataclass
class RunState:
    """One checkpoint's contents (weights and optimizer are the same on every rank; tensors and meta hold
    every rank's carried state)."""

    model: dict[str, Tensor]
    optimizer: dict
    tensors: dict[str, Tensor]
    meta: dict


def capture(tr: Trainer) -> RunState | None:
    """The run's state now; under torchrun gathered from every rank onto rank 0 (None on the others)."""
    tensors = {f"store.{k}": v for k, v in tr.store.state_dict().items()}
    tensors["rng.sample"] = tr.sample_gen.get_state()
    tensors["rng.shuffle"] = tr.learner.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rollout.obs"] = torch.from_numpy(np.ascontiguousarray(tr.rollout.obs))
    tensors["rollout.starts"] = torch.from_numpy(tr.rollout.starts.copy())
    if tr.learner.return_scale is not None:  # the running discounted return of every agent, and its statistics
        tensors.update({f"return_scale.{k}": v for k, v in tr.learner.return_scale.state_dict().items()})
    meta = {
        "global_step": tr.global_step,
        "interrupted": tr.stop.signal,
        "num_agents": tr.env.num_agents,
        "recent_returns": list(tr.monitor.returns),
        "recent_success": list(tr.monitor.success),
        "env_state": None,
    }
    if hasattr(tr.env, "state_dict"):
        env_state = tr.env.state_dict()
        tensors.update(
            {f"env.{k}": torch.from_numpy(np.asarray(v)) for k, v in env_state.items() if isinstance(v, np.ndarray)}
        )
        meta["env_state"] = {k: v for k, v in env_state.items() if not isinstance(v, np.ndarray)}
    if tr.dist.enabled:  # one checkpoint holds every rank's carried state (the weights are the same)
        states = tr.dist.gather_to_main((tensors, meta), "gathering the ranks' state for a checkpoint")
        if not tr.dist.is_main:
            return None
        tensors, meta = merge_rank_states(states)
    return RunState(tr.policy.state_dict(), tr.learner.optimizer.state_dict(), tensors, meta)


def restore(tr: Trainer, ckpt: dict) -> str | None:
    """Continue from a checkpoint exactly (built-in envs), or with fresh episodes for envs that cannot save
    their state; returns a note saying so in that case, else None."""
    diffs = config_differences(ckpt["config"], tr.run_cfg)
    saved_agents = ckpt["meta"].get("num_agents", tr.env.num_agents)
    if saved_agents != tr.env.num_agents:
        diffs.append(f"agents: checkpoint {saved_agents}, this run {tr.env.num_agents}")
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this run:\n  " + "\n  ".join(diffs))
    tr.dist.check_agree("the checkpoint to resume from", ckpt["path"].name)
    tensors, meta = rank_view(ckpt["tensors"], ckpt["meta"], tr.dist, ckpt["path"])
    tr.policy.load_state_dict(ckpt["model"])
    tr.learner.optimizer.load_state_dict(ckpt["optimizer"])
    tr.store.load_state_dict({k[len("store.") :]: v for k, v in tensors.items() if k.startswith("store.")})
    tr.sample_gen.set_state(tensors["rng.sample"])
    tr.learner.generator.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.torch"])
    if tr.learner.return_scale is not None:
        tr.learner.return_scale.load_state_dict(
            {k[len("return_scale.") :]: v for k, v in tensors.items() if k.startswith("return_scale.")}
        )
    tr.iteration, tr.global_step = meta["iteration"], meta["global_step"]
    tr.monitor.returns.extend(meta["recent_returns"])
    tr.monitor.success.extend(meta["recent_success"])
    tr.last_checkpoint = ckpt["path"]
    if meta["env_state"] is not None and hasattr(tr.env, "load_state_dict"):
        env_state = dict(meta["env_state"])
        env_state.update({k[len("env.") :]: v.numpy() for k, v in tensors.items() if k.startswith("env.")})
        tr.env.load_state_dict(env_state)
        tr.rollout.obs = tensors["rollout.obs"].numpy().copy()
        tr.rollout.starts = tensors["rollout.starts"].numpy().copy()
        return None
    tr.rollout.new_episodes()
    note = (
        f"{type(tr.env).__name__} cannot save its state: the resumed run starts new episodes everywhere, "
        "with zeroed recurrent state"
    )
    warnings.warn(note, stacklevel=3)
    return note


def config_differences(saved: Config, current: Config) -> list[str]:
    """Settings that make a checkpoint's weights or carried state unusable in `current`."""
    diffs = []
    for section in ("policy",):
        a, b = getattr(saved, section).model_dump(), getattr(current, section).model_dump()
        diffs += [f"{section}.{k}: checkpoint {a[k]!r}, this run {b[k]!r}" for k in a if a[k] != b[k]]
    for key in ("name", "num_envs"):
        a, b = getattr(saved.env, key), getattr(current.env, key)
        if a != b:
            diffs.append(f"env.{key}: checkpoint {a!r}, this run {b!r}")
    return diffs


def rank_view(tensors: dict[str, Tensor], meta: dict, ctx: DistContext, path) -> tuple[dict[str, Tensor], dict]:
    """This rank's carried state out of a checkpoint: the whole checkpoint of a single-process run, or the
    `rank<r>.` tensors and `env_state[r]` of one written by several ranks. Refuses a different rank count."""
    saved = meta.get("world_size", 1)
    if saved != ctx.world_size:
        raise CheckpointError(
            f"checkpoint {path} holds the carried state of {saved} rank(s) but this run has {ctx.world_size}; "
            f"resume it with {saved} process(es) in all (e.g. torchrun --standalone --nproc-per-node {saved} "
            f"-m carrystate.cli train --resume RUN_DIR)"
        )
    if saved == 1:
        return tensors, meta
    prefix = f"rank{ctx.rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine, {**meta, "env_state": meta["env_state"][ctx.rank]}


def merge_rank_states(states: list[tuple[dict[str, Tensor], dict]]) -> tuple[dict[str, Tensor], dict]:
    """One checkpoint's tensors and meta from every rank's (tensors, meta): tensors prefixed `rank<r>.`, the
    per-rank `env_state` as a list, everything else from rank 0 (the counters are global)."""
    tensors = {f"rank{r}.{k}": v for r, (t, _) in enumerate(states) for k, v in t.items()}
    meta = {**states[0][1], "world_size": len(states), "env_state": [m["env_state"] for _, m in states]}
    return tensors, meta


def load_policy(path: Path | str, device: str = "cpu") -> tuple[Policy, Config]:
    """The policy of a checkpoint (folder or run folder) and the config it was trained with."""
    from carrystate.envs import make_env
    from carrystate.policy import Policy

    ckpt = load_checkpoint(Path(path))
    cfg = ckpt["config"]
    env = make_env(cfg.env, seed=cfg.trainer.seed)
    policy = Policy(cfg.policy, env.single_observation_space, env.single_action_space)
    env.close()
    policy.load_state_dict(ckpt["model"])
    return policy.to(device), cfg
