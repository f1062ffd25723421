"""What a run's state is: everything the next step of the run depends on, as the parts' own state dicts under
their prefixes (`Parts.per_rank`: carried state, generators, the rollout's current observation, the buffer's
kept steps, the return scale, the env's own state), the monitor's recent episodes, the weights, the optimizer,
and the run's counters and phase:

- `collect` at buffer position p (0 < p < steps): a stop cut a rollout short after p steps; the checkpoint holds
  those steps, and the resumed run takes the rollout on from step p;
- `collect` at p = 0 or p = steps: between iterations (nothing of the buffer but the next burn-in tail);
- `update`: a stop cut an update short; the update was undone (`Learner.rollback`), the checkpoint holds the
  weights from before it and the whole rollout, and the resumed run does the update again from its start.

A part's tensors are stored as `prefix.name` in tensors.safetensors, its other entries (JSON) as meta[prefix].
The counters (`iteration`, `global_step`) count completed iterations only. Under torchrun one checkpoint holds
every rank's parts (`merge_rank_states`: tensors under `rank<r>.`, meta[prefix] a list by rank) and each rank
reads its own back (`rank_view`). What a checkpoint of a config must hold, and the check of one, is
`checkpoint_checks.py`'s; files are `checkpoint.py`'s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from carrystate.distributed import DistContext
from carrystate.errors import CheckpointError

FORMAT = 3  # 3: every part's state under its prefix; 2: phases and the buffer's part; 1: between iterations only


@dataclass
class RunState:
    """One checkpoint's contents (weights and optimizer are the same on every rank; tensors and meta hold
    every rank's parts)."""

    model: dict[str, Tensor]
    optimizer: dict
    tensors: dict[str, Tensor]
    meta: dict


def split(parts: dict) -> tuple[dict[str, Tensor], dict]:
    """The parts' state dicts as (tensors `prefix.name`, meta {prefix: {name: JSON value}}); tensors on the CPU
    (those on the meta device stay there: their shapes are what a check compares)."""
    tensors, meta = {}, {}
    for prefix, part in parts.items():
        for name, value in part.state_dict().items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{name}"] = value if value.is_meta else value.cpu()
            else:
                meta.setdefault(prefix, {})[name] = value
    return tensors, meta


def joined(tensors: dict[str, Tensor], meta: dict, prefix: str) -> dict:
    """One part's state dict back out of (tensors, meta)."""
    mine = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
    return {**mine, **meta.get(prefix, {})}


def capture(tr) -> RunState | None:
    """The Trainer `tr`'s state now; under torchrun gathered from every rank onto rank 0 (None on the others)."""
    tensors, meta = split(tr.parts.per_rank())
    if tr.dist.enabled:  # one checkpoint holds every rank's parts (the weights are the same)
        states = tr.dist.gather_to_main((tensors, meta), "gathering the ranks' state for a checkpoint")
        if not tr.dist.is_main:
            return None
        tensors, meta = merge_rank_states(states)
    meta.update(
        format=FORMAT,
        global_step=tr.global_step,
        interrupted=tr.stop.signal,
        num_agents=tr.env.num_agents,
        phase="update" if tr.buffer.update_pending else "collect",
        world_size=tr.dist.world_size,
        monitor=tr.monitor.state_dict(),
    )
    return RunState(tr.policy.state_dict(), tr.learner.optimizer.state_dict(), tensors, meta)


def restore(tr, ckpt: dict) -> str | None:
    """Continue the Trainer `tr` from a checkpoint exactly (envs that save their state), or with fresh episodes
    for envs that cannot; returns a note saying so in that case, else None. The checkpoint has been checked
    against the run (`checkpoint_checks.check_resume`)."""
    meta = upgraded(ckpt["meta"])
    tr.dist.check_agree("the checkpoint to resume from", ckpt["path"].name)
    tensors, rank_meta = rank_view(ckpt["tensors"], meta, tr.dist)
    tr.policy.load_state_dict(ckpt["model"])
    tr.learner.optimizer.load_state_dict(ckpt["optimizer"])
    tr.iteration, tr.global_step, tr.last_checkpoint = meta["iteration"], meta["global_step"], ckpt["path"]
    tr.monitor.load_state_dict(meta["monitor"])
    parts = tr.parts.per_rank()
    env = parts.pop("env")
    for prefix, part in parts.items():
        if prefix != "buffer" or "format" in ckpt["meta"]:  # format 1 kept nothing of the buffer
            part.load_state_dict(joined(tensors, rank_meta, prefix))
    if env.saves:
        try:
            env.load_state_dict(joined(tensors, rank_meta, "env"))
        except Exception as err:  # noqa: BLE001 - whatever the env refuses is the checkpoint's fault
            raise CheckpointError(
                f"checkpoint {ckpt['path']}: the env refused its saved state (meta.json env and "
                f"tensors.safetensors env.*): {type(err).__name__}: {err}"
            ) from None
        return None
    tr.rollout.new_episodes()
    note = (
        f"{type(tr.env).__name__} cannot save its state: the resumed run starts new episodes everywhere, "
        "with zeroed recurrent state"
    )
    if 0 < tr.buffer.position < tr.buffer.steps:  # its steps would not join the new episodes: collect it anew
        note += f" (the {tr.buffer.position} steps of the rollout in progress are collected again)"
        tr.buffer.position = 0
    warnings.warn(note, stacklevel=3)
    return note


def upgraded(meta: dict) -> dict:
    """A checkpoint's meta in this FORMAT: format 2 named the env's and the rollout's entries otherwise and kept
    the monitor's at the top; format 1 was always written between iterations (nothing of the buffer)."""
    if meta.get("format") == FORMAT:
        return meta
    world_size = meta.get("world_size", 1)
    ranks = world_size if isinstance(world_size, int) and not isinstance(world_size, bool) else 1
    empty = {"returns": [], "lengths": [], "success": []}
    per_rank = {
        "rollout_episodes": meta.get("rollout_episodes", [empty] * ranks if ranks > 1 else empty),
        "env_state": meta.get("env_state"),
    }
    buffer = meta.get("buffer", {"position": 0, "first": 0})
    out = {k: v for k, v in meta.items() if k not in ("recent_returns", "recent_success", *per_rank)}
    if "format" in meta:  # format 2, now read as this format
        out["format"] = FORMAT
    out.setdefault("phase", "collect")
    out.setdefault("world_size", 1)
    out["monitor"] = {"returns": meta.get("recent_returns"), "success": meta.get("recent_success")}
    episodes, env_state = per_rank["rollout_episodes"], per_rank["env_state"]
    if ranks > 1:
        out["rollout"] = [{"episodes": e} for e in episodes] if isinstance(episodes, list) else episodes
        out["buffer"] = [buffer] * ranks
    else:
        out.update(rollout={"episodes": episodes}, buffer=buffer)
    if env_state is not None:
        out["env"] = env_state
    return out


def rank_view(tensors: dict[str, Tensor], meta: dict, ctx: DistContext) -> tuple[dict[str, Tensor], dict]:
    """This rank's parts out of a checkpoint: the whole checkpoint of a single-process run, or the `rank<r>.`
    tensors and meta entries of one written by several ranks (the rank count was checked)."""
    if meta.get("world_size", 1) == 1:
        return tensors, meta
    prefix = f"rank{ctx.rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine, {**meta, **{k: v[ctx.rank] for k, v in meta.items() if k in PER_RANK and isinstance(v, list)}}


PER_RANK = ("rollout", "buffer", "env")  # the meta entries each rank has its own of (the parts with JSON state)


def merge_rank_states(states: list[tuple[dict[str, Tensor], dict]]) -> tuple[dict[str, Tensor], dict]:
    """One checkpoint's tensors and meta from every rank's (tensors, meta): tensors prefixed `rank<r>.`, each
    part's meta a list by rank."""
    tensors = {f"rank{r}.{k}": v for r, (t, _) in enumerate(states) for k, v in t.items()}
    return tensors, {k: [m[k] for _, m in states] for k in states[0][1]}
