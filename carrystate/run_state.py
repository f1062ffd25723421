"""What a run's state is: everything the next step of the run depends on, captured from a live Trainer, checked
and restored into one. Weights, optimizer state, every agent's carried recurrent state, the RNG states of action
sampling, minibatch shuffling and torch, the rollout's current observation, the env's own state (built-in
envs), counters, recent episode results, and the part of the segment buffer the run still needs (`phase`):

- `collect` at buffer position p (0 < p < steps): a stop cut a rollout short after p steps; the checkpoint holds
  those steps, and the resumed run takes the rollout on from step p;
- `collect` at p = 0 or p = steps: between iterations (nothing of the buffer but the next burn-in tail);
- `update`: a stop cut an update short; the update was undone (`Learner.rollback`), the checkpoint holds the
  weights from before it and the whole rollout, and the resumed run does the update again from its start.

The counters (`iteration`, `global_step`) count completed iterations only. Under torchrun one checkpoint holds
every rank's carried state (`merge_rank_states`) and each rank reads its own back (`rank_view`).

`check` is the one test of a checkpoint's contents, used by resume and by `load_policy` (eval, probe) alike:
every entry a checkpoint of its config must hold is there, with the expected shape, dtype or type, and nothing
else. Files are `checkpoint.py`'s job.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from carrystate.checkpoint import CheckpointError, load_checkpoint
from carrystate.config import Config
from carrystate.distributed import DistContext, rank_config
from carrystate.rollout import RolloutStats, lane_slices

if TYPE_CHECKING:
    from carrystate.envs.base import VecEnv
    from carrystate.policy import Policy
    from carrystate.trainer import Trainer

FORMAT = 2  # 2: phases and the buffer's part (checkpoints without `format` were written between iterations only)
PER_RANK_META = ("env_state", "rollout_episodes")  # meta entries that each rank has its own of


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
    tensors, meta = _rank_state(tr, _buffer_first(tr.buffer, tr.update_pending))
    meta.update(
        {
            "format": FORMAT,
            "global_step": tr.global_step,
            "interrupted": tr.stop.signal,
            "num_agents": tr.env.num_agents,
            "recent_returns": list(tr.monitor.returns),
            "recent_success": list(tr.monitor.success),
            "phase": "update" if tr.update_pending else "collect",
            "buffer": {"position": tr.buffer.position, "first": _buffer_first(tr.buffer, tr.update_pending)},
            "world_size": tr.dist.world_size,
        }
    )
    if tr.dist.enabled:  # one checkpoint holds every rank's carried state (the weights are the same)
        states = tr.dist.gather_to_main((tensors, meta), "gathering the ranks' state for a checkpoint")
        if not tr.dist.is_main:
            return None
        tensors, meta = merge_rank_states(states)
    return RunState(tr.policy.state_dict(), tr.learner.optimizer.state_dict(), tensors, meta)


def _buffer_first(buffer, update_pending: bool) -> int:
    """The first buffer step a checkpoint keeps: all of a rollout in progress or awaiting its update; of a
    trained one only the last burn_in steps, which the next rollout's burn-in reads."""
    return buffer.steps - buffer.burn_in if buffer.position == buffer.steps and not update_pending else 0


def _rank_state(tr, first: int) -> tuple[dict[str, Tensor], dict]:
    """This rank's carried state: (tensors, per-rank meta). Also run on a stand-in (`_stand_in`) whose shapes
    and types are those of a checkpoint of some config, to know what such a checkpoint holds."""
    tensors = {f"store.{k}": v for k, v in tr.store.state_dict().items()}
    tensors["rng.sample"] = tr.sample_gen.get_state()
    tensors["rng.shuffle"] = tr.learner.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rollout.obs"] = torch.from_numpy(np.ascontiguousarray(tr.rollout.obs))
    tensors["rollout.starts"] = torch.from_numpy(tr.rollout.starts.copy())
    tensors["rollout.valid"] = torch.from_numpy(tr.rollout.valid.copy())
    if tr.learner.return_scale is not None:  # the running discounted return of every agent, and its statistics
        tensors.update({f"return_scale.{k}": v for k, v in tr.learner.return_scale.state_dict().items()})
    tensors.update({f"buffer.{k}": v if v.is_meta else v.cpu() for k, v in tr.buffer.state_dict(first).items()})
    stats = tr.rollout_stats
    meta = {
        "env_state": None,
        "rollout_episodes": {
            "returns": list(stats.episode_returns) if stats else [],
            "lengths": list(stats.episode_lengths) if stats else [],
            "success": list(stats.success) if stats else [],
        },
    }
    if hasattr(tr.env, "state_dict"):
        env_state = tr.env.state_dict()
        tensors.update(
            {f"env.{k}": torch.from_numpy(np.asarray(v)) for k, v in env_state.items() if isinstance(v, np.ndarray)}
        )
        meta["env_state"] = {k: v for k, v in env_state.items() if not isinstance(v, np.ndarray)}
    return tensors, meta


def restore(tr: Trainer, ckpt: dict) -> str | None:
    """Continue from a checkpoint exactly (built-in envs), or with fresh episodes for envs that cannot save
    their state; returns a note saying so in that case, else None. The checkpoint is checked first (`check`):
    anything that does not fit raises a CheckpointError naming the checkpoint and the entry."""
    saved_cfg, meta = ckpt["config"], _with_defaults(ckpt["meta"])
    _check_world_size(meta.get("world_size"), tr.dist, ckpt["path"])
    diffs = config_differences(saved_cfg, tr.run_cfg)
    saved_agents = meta.get("num_agents", tr.env.num_agents)
    if saved_agents != tr.env.num_agents:
        diffs.append(f"agents: checkpoint {saved_agents}, this run {tr.env.num_agents}")
    if not diffs:
        check(ckpt, tr.policy, tr.env, tr.rollout.obs)
        position, first = meta["buffer"]["position"], meta["buffer"]["first"]
        if first < position or saved_cfg.trainer.burn_in:
            diffs = buffer_differences(saved_cfg, tr.run_cfg)
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this run:\n  " + "\n  ".join(diffs))
    tr.dist.check_agree("the checkpoint to resume from", ckpt["path"].name)
    tensors, meta = rank_view(ckpt["tensors"], meta, tr.dist, ckpt["path"])
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
    if first == position > 0:  # a trained rollout of which nothing is kept (trainer.batch_size may have changed)
        position = first = tr.buffer.steps
    if "format" in ckpt["meta"]:  # (format 1 kept nothing of the buffer: its next rollout starts afresh)
        tr.buffer.load_state_dict(
            {k[len("buffer.") :]: v for k, v in tensors.items() if k.startswith("buffer.")}, position, first
        )
    tr.update_pending = meta["phase"] == "update"
    episodes = meta["rollout_episodes"]
    if 0 < position < tr.buffer.steps or tr.update_pending:
        tr.rollout_stats = RolloutStats(
            steps=position,
            episode_returns=list(episodes["returns"]),
            episode_lengths=list(episodes["lengths"]),
            success=list(episodes["success"]),
        )
    if meta["env_state"] is not None and hasattr(tr.env, "load_state_dict"):
        env_state = dict(meta["env_state"])
        env_state.update({k[len("env.") :]: v.numpy() for k, v in tensors.items() if k.startswith("env.")})
        try:
            tr.env.load_state_dict(env_state)
        except Exception as err:  # noqa: BLE001 - whatever the env refuses is the checkpoint's fault
            raise CheckpointError(
                f"checkpoint {ckpt['path']}: the env refused its saved state (meta.json env_state and "
                f"tensors.safetensors env.*): {type(err).__name__}: {err}"
            ) from None
        tr.rollout.obs = tensors["rollout.obs"].numpy().copy()
        tr.rollout.starts = tensors["rollout.starts"].numpy().copy()
        if "rollout.valid" in tensors:  # (checkpoints of format 1 have none: their envs had no padding rows)
            tr.rollout.valid = tensors["rollout.valid"].numpy().copy()
        return None
    tr.rollout.new_episodes()
    note = (
        f"{type(tr.env).__name__} cannot save its state: the resumed run starts new episodes everywhere, "
        "with zeroed recurrent state"
    )
    if 0 < position < tr.buffer.steps:  # its steps would not join the new episodes: collect that rollout anew
        tr.buffer.position, tr.rollout_stats = 0, None
        note += f" (the {position} steps of the rollout in progress are collected again)"
    warnings.warn(note, stacklevel=3)
    return note


def config_differences(saved: Config, current: Config) -> list[str]:
    """Settings that make a checkpoint's weights, optimizer state or carried state unusable in `current`."""
    diffs = []
    for section in ("policy",):
        a, b = getattr(saved, section).model_dump(), getattr(current, section).model_dump()
        diffs += [f"{section}.{k}: checkpoint {a[k]!r}, this run {b[k]!r}" for k in a if a[k] != b[k]]
    for key in ("name", "num_envs"):
        a, b = getattr(saved.env, key), getattr(current.env, key)
        if a != b:
            diffs.append(f"env.{key}: checkpoint {a!r}, this run {b!r}")
    a, b = torch.device(saved.trainer.device).type, torch.device(current.trainer.device).type
    if a != b:  # the action-sampling RNG state is the device's generator's
        diffs.append(f"trainer.device: checkpoint {saved.trainer.device!r}, this run {current.trainer.device!r}")
    return diffs + _trainer_differences(saved, current, ("optimizer", "norm_reward"))


def buffer_differences(saved: Config, current: Config) -> list[str]:
    """Settings that lay out the segment buffer, which must not change while a checkpoint holds rollout steps
    (a rollout in progress, one awaiting its update, or a burn-in tail)."""
    return _trainer_differences(
        saved,
        current,
        ("batch_size", "bptt_horizon", "burn_in"),
        " (the checkpoint holds rollout steps laid out by it)",
    )


def _trainer_differences(saved: Config, current: Config, keys: tuple[str, ...], why: str = "") -> list[str]:
    diffs = []
    for key in keys:
        a, b = getattr(saved.trainer, key), getattr(current.trainer, key)
        if a != b:
            diffs.append(f"trainer.{key}: checkpoint {a!r}, this run {b!r}{why}")
    return diffs


def rank_view(tensors: dict[str, Tensor], meta: dict, ctx: DistContext, path) -> tuple[dict[str, Tensor], dict]:
    """This rank's carried state out of a checkpoint: the whole checkpoint of a single-process run, or the
    `rank<r>.` tensors and per-rank meta entries of one written by several ranks. Refuses a different rank
    count."""
    saved = meta.get("world_size", 1)
    _check_world_size(saved, ctx, path)
    if saved == 1:
        return tensors, meta
    prefix = f"rank{ctx.rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine, {**meta, **{k: meta[k][ctx.rank] for k in PER_RANK_META}}


def _check_world_size(saved, ctx: DistContext, path) -> None:
    if saved != ctx.world_size:
        raise CheckpointError(
            f"checkpoint {path} holds the carried state of {saved!r} rank(s) but this run has {ctx.world_size}; "
            f"resume it with {saved} process(es) in all (e.g. torchrun --standalone --nproc-per-node {saved} "
            f"-m carrystate.cli train --resume RUN_DIR)"
        )


def merge_rank_states(states: list[tuple[dict[str, Tensor], dict]]) -> tuple[dict[str, Tensor], dict]:
    """One checkpoint's tensors and meta from every rank's (tensors, meta): tensors prefixed `rank<r>.`, the
    per-rank meta entries as lists, everything else from rank 0 (the counters are global)."""
    tensors = {f"rank{r}.{k}": v for r, (t, _) in enumerate(states) for k, v in t.items()}
    meta = {**states[0][1], "world_size": len(states)}
    meta.update({k: [m[k] for _, m in states] for k in PER_RANK_META})
    return tensors, meta


def _with_defaults(meta: dict) -> dict:
    """A checkpoint written before `format` 2 (always between iterations): its meta with the later entries."""
    if "format" in meta:
        return meta
    world_size = meta.get("world_size", 1)
    episodes = {"returns": [], "lengths": [], "success": []}
    return {
        "phase": "collect",
        "buffer": {"position": 0, "first": 0},
        "rollout_episodes": [episodes] * world_size if _is_int(world_size) and world_size > 1 else episodes,
        "world_size": 1,
        **meta,
    }


# ---- checking a checkpoint ------------------------------------------------------------------------


def check(ckpt: dict, policy: Policy, env: VecEnv, obs: np.ndarray) -> None:
    """Raise a CheckpointError naming the checkpoint folder and the entry for the first thing in `ckpt` (as
    `load_checkpoint` returns it) that a checkpoint of its config cannot hold: a missing, extra, wrong-shaped
    or wrong-dtyped weight or tensor (carried state, RNG states, rollout, env arrays, buffer), an RNG state
    that torch refuses, optimizer state that does not fit the weights, a counter or meta entry of the wrong
    type or out of range, env state of another structure. `policy` and `env` are built from the checkpoint's
    config (for a resume: the run's, after `config_differences` found nothing); `obs` is an observation batch
    of `env` (its dtype is the rollout's). Reads, never changes, what it is given."""
    path, cfg, legacy = ckpt["path"], ckpt["config"], "format" not in ckpt["meta"]
    meta = _with_defaults(ckpt["meta"])
    fail = lambda where, what: _fail(path, where, what)  # noqa: E731
    world_size = _check_meta(meta, cfg, env, fail)
    if legacy and (meta["phase"], meta["buffer"]) != ("collect", {"position": 0, "first": 0}):
        fail("meta.json", "has no format (format 1, written between iterations) but a phase or buffer position")
    stand_in = _stand_in(rank_config(cfg, world_size), policy, env, obs, meta)
    tensors, rank_meta = _rank_state(stand_in, meta["buffer"]["first"])
    if legacy:  # format 1: no rollout.valid, nothing of the buffer
        tensors = {k: v for k, v in tensors.items() if k != "rollout.valid" and not k.startswith("buffer.")}
    if world_size > 1:
        tensors, rank_meta = merge_rank_states([(tensors, rank_meta)] * world_size)
    _check_tensors(ckpt["model"], policy.state_dict(), "model.safetensors", fail)
    _check_tensors(ckpt["tensors"], tensors, "tensors.safetensors", fail)
    for name, saved in ckpt["tensors"].items():
        if name.rsplit(".", 1)[-1] in ("sample", "shuffle", "torch") and ".rng." in f".{name}":
            _check_rng(saved, cfg.trainer.device if name.endswith("sample") else "cpu", name, fail)
    for key in PER_RANK_META:
        _check_structure(meta.get(key), rank_meta[key], f"meta.json {key}", fail)
    _check_optimizer(ckpt["optimizer"], policy, cfg, fail)


def _fail(path, where: str, what: str):
    raise CheckpointError(f"checkpoint {path} is not usable: {where} {what}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_meta(meta: dict, cfg: Config, env: VecEnv, fail) -> int:
    """The counters and the other meta.json entries that the layout depends on; returns the rank count."""
    for key in ("iteration", "global_step", "num_agents", "world_size", "phase", "buffer"):
        if key not in meta:
            fail("meta.json", f"lacks {key!r}")
    if "format" in meta and meta["format"] != FORMAT:
        fail("meta.json format", f"is {meta['format']!r}; this version reads format {FORMAT}")
    for key, low in (("iteration", 0), ("global_step", 0), ("world_size", 1)):
        if not _is_int(meta[key]) or meta[key] < low:
            fail(f"meta.json {key}", f"is {meta[key]!r}, expected an integer >= {low}")
    world_size = meta["world_size"]
    if meta["num_agents"] != env.num_agents or not _is_int(meta["num_agents"]):
        fail("meta.json num_agents", f"is {meta['num_agents']!r} but the checkpoint's config gives {env.num_agents}")
    if not (meta.get("interrupted") is None or isinstance(meta["interrupted"], str)):
        fail("meta.json interrupted", f"is {meta['interrupted']!r}, expected a signal's name or null")
    for key in ("recent_returns", "recent_success"):
        if not isinstance(meta.get(key), list) or not all(_is_number(x) for x in meta[key]):
            fail(f"meta.json {key}", "is not a list of numbers")
    if meta["phase"] not in ("collect", "update"):
        fail("meta.json phase", f"is {meta['phase']!r}, expected 'collect' or 'update'")
    buffer = meta["buffer"]
    if not isinstance(buffer, dict) or set(buffer) != {"position", "first"} or not all(map(_is_int, buffer.values())):
        fail("meta.json buffer", f"is {buffer!r}, expected {{'position': int, 'first': int}}")
    steps = rank_config(cfg, world_size).trainer.batch_size // env.num_agents
    position, first = buffer["position"], buffer["first"]
    update = meta["phase"] == "update"
    expected_first = steps - cfg.trainer.burn_in if position == steps and not update else 0
    if not 0 <= position <= steps or first != expected_first or (update and position != steps):
        fail(
            "meta.json buffer",
            f"is {buffer!r}, which does not fit phase {meta['phase']!r} and a rollout of {steps} steps "
            f"(position 0..{steps}; first {expected_first})",
        )
    return world_size


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _stand_in(cfg: Config, policy: Policy, env: VecEnv, obs: np.ndarray, meta: dict) -> SimpleNamespace:
    """An object with a Trainer's parts as `_rank_state` reads them, shaped like a run of `cfg` (one rank's)
    at the buffer position `meta` gives; the buffer on the meta device, so nothing is allocated for it."""
    from carrystate.buffer import SegmentBuffer
    from carrystate.normalize import ReturnScale
    from carrystate.state import StateStore

    t, agents = cfg.trainer, env.num_agents
    store = StateStore(policy.state_shapes)
    for start, sub in lane_slices(env):
        store.register(start, sub.num_agents)
    buffer = SegmentBuffer.for_spaces(
        agents,
        env.single_observation_space,
        env.single_action_space,
        policy.initial_state(1, "meta"),
        batch_size=t.batch_size,
        horizon=t.bptt_horizon,
        burn_in=t.burn_in,
        device="meta",
    )
    buffer.position = meta["buffer"]["position"]
    return SimpleNamespace(
        store=store,
        sample_gen=_generator(t.device),
        learner=SimpleNamespace(
            generator=torch.Generator(),
            return_scale=ReturnScale(agents, t.gamma, t.reward_clip) if t.norm_reward else None,
        ),
        rollout=SimpleNamespace(obs=np.asarray(obs), starts=np.ones(agents, bool), valid=np.ones(agents, bool)),
        buffer=buffer,
        env=env,
        rollout_stats=RolloutStats(),
    )


def _generator(device: str):
    """A generator of `device` (for its state's shape); where that device is absent here, a stand-in with
    the shape of its state (CUDA's Philox: seed and offset, 16 bytes)."""
    dev = torch.device(device)
    if dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available()):
        return torch.Generator(dev)
    return SimpleNamespace(get_state=lambda: torch.zeros(16, dtype=torch.uint8))


def _check_tensors(saved: dict[str, Tensor], expected: dict[str, Tensor], file: str, fail) -> None:
    for name in expected:
        if name not in saved:
            fail(f"{file}", f"lacks {name!r}")
    for name, t in saved.items():
        if name not in expected:
            fail(f"{file}", f"holds {name!r}, which a checkpoint of this config does not have")
        want = expected[name]
        if tuple(t.shape) != tuple(want.shape):
            fail(f"{file} {name!r}", f"has shape {tuple(t.shape)}, expected {tuple(want.shape)}")
        if t.dtype != want.dtype:
            fail(f"{file} {name!r}", f"has dtype {t.dtype}, expected {want.dtype}")


def _check_rng(state: Tensor, device: str, name: str, fail) -> None:
    """The RNG state loads into a fresh generator of its device (where that device is here)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return  # its shape and dtype were checked
    try:
        torch.Generator(dev).set_state(state)
    except (RuntimeError, ValueError, TypeError) as err:
        fail(f"tensors.safetensors {name!r}", f"is not a valid RNG state ({err})")


def _check_structure(saved, expected, where: str, fail) -> None:
    """`saved` (from JSON) has the structure of `expected`: the same keys, list lengths where the length is
    fixed by the layout, the same types; numpy bit-generator states load into a fresh generator."""
    if expected is None or saved is None:
        if saved is not None or expected is not None:
            fail(where, f"is {_short(saved)}, expected {_short(expected)}")
        return
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            fail(where, f"is {_short(saved)}, expected a mapping with keys {sorted(expected)}")
        if set(saved) != set(expected):
            fail(where, f"has keys {sorted(saved)}, expected {sorted(expected)}")
        for k in expected:
            _check_structure(saved[k], expected[k], f"{where}.{k}", fail)
        if "bit_generator" in expected:
            if saved["bit_generator"] != expected["bit_generator"]:
                name = expected["bit_generator"]
                fail(f"{where}.bit_generator", f"is {_short(saved['bit_generator'])}, expected {name!r}")
            try:
                getattr(np.random, str(saved["bit_generator"]))().state = saved
            except (AttributeError, TypeError, ValueError, OverflowError) as err:
                fail(where, f"is not a valid numpy RNG state ({err})")
        return
    if isinstance(expected, list):
        if not isinstance(saved, list):
            fail(where, f"is {_short(saved)}, expected a list")
        if all(_is_number(x) for x in expected):  # a series of numbers, of any length
            if not all(_is_number(x) for x in saved):
                fail(where, "is not a list of numbers")
            return
        if len(saved) != len(expected):  # one entry per rank
            fail(where, f"has {len(saved)} entries, expected {len(expected)}")
        for i, (s, e) in enumerate(zip(saved, expected)):
            _check_structure(s, e, f"{where}[{i}]", fail)
        return
    if _is_number(expected) and _is_number(saved) and (isinstance(expected, float) or _is_int(saved)):
        return
    if type(saved) is not type(expected):
        fail(where, f"is {_short(saved)}, expected a value of type {type(expected).__name__}")


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_optimizer(saved: dict, policy: Policy, cfg: Config, fail) -> None:
    """The optimizer state loads into a fresh optimizer of these weights, and each parameter's state tensors
    (moments, momentum) have that parameter's shape."""
    from carrystate.optim import make_optimizer

    scratch = make_optimizer(policy, cfg.trainer)
    try:
        scratch.load_state_dict(copy.deepcopy(saved))
    except Exception as err:  # noqa: BLE001 - any refusal means the file does not fit these weights
        fail("optimizer.pt", f"does not fit the weights ({type(err).__name__}: {err})")
    names = {p: n for n, p in policy.named_parameters()}
    for opt in getattr(scratch, "optimizers", [scratch]):
        for p, state in opt.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    fail(
                        "optimizer.pt",
                        f"holds {key} of shape {tuple(value.shape)} for {names.get(p, '?')} of shape {tuple(p.shape)}",
                    )


def load_policy(path: Path | str, device: str = "cpu") -> tuple[Policy, Config]:
    """The policy of a checkpoint (folder or run folder) and the config it was trained with, after `check`
    found the whole checkpoint sound (what a resume would refuse, this refuses too)."""
    policy, cfg, _ = load_policy_and_spaces(path, device)
    return policy, cfg


def load_policy_and_spaces(path: Path | str, device: str = "cpu") -> tuple[Policy, Config, tuple]:
    """`load_policy`, and the (observation, action) spaces of one agent of the env it was trained on."""
    from carrystate.envs import make_env
    from carrystate.policy import Policy

    ckpt = load_checkpoint(Path(path))
    cfg = ckpt["config"]
    world_size = ckpt["meta"].get("world_size", 1)
    if not _is_int(world_size) or world_size < 1:
        _fail(ckpt["path"], "meta.json world_size", f"is {world_size!r}, expected an integer >= 1")
    env = make_env(rank_config(cfg, world_size).env, seed=cfg.trainer.seed)
    try:
        spaces = env.single_observation_space, env.single_action_space
        policy = Policy(cfg.policy, *spaces)
        check(ckpt, policy, env, env.reset(seed=cfg.trainer.seed))
    finally:
        env.close()
    policy.load_state_dict(ckpt["model"])
    return policy.to(device), cfg, spaces
