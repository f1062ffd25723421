"""The one test of a checkpoint's contents, used by resume and by `load_policy` (eval, probe) alike: every entry a
checkpoint of its config must hold is there, with the expected shape, dtype or type, and nothing else. What a
checkpoint of a config holds comes from the parts themselves: `expected_state` builds them for that config on the
`meta` device (nothing allocated) at the saved buffer position and takes their state dicts, as a save does.
"""

from __future__ import annotations

import copy
import numbers
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from carrystate.config import Config
from carrystate.distributed import DistContext, rank_config
from carrystate.errors import CheckpointError
from carrystate.run_state import FORMAT, merge_rank_states, rank_view, split, upgraded
from carrystate.wiring import build_parts

if TYPE_CHECKING:
    from carrystate.envs.base import VecEnv
    from carrystate.policy import Policy

CUDA_GENERATOR_STATE = torch.zeros(16, dtype=torch.uint8)  # Philox seed and offset: a CUDA generator's state


def check_resume(ckpt: dict, run_cfg: Config, policy: Policy, env: VecEnv, dist: DistContext) -> None:
    """Raise a CheckpointError listing what keeps `ckpt` from continuing a run of `run_cfg` (settings that change
    the network, the agents or the buffer's layout), or naming what in it is unusable (`check`)."""
    saved_cfg, meta = ckpt["config"], upgraded(ckpt["meta"])
    diffs = config_differences(saved_cfg, run_cfg)
    saved_agents = meta.get("num_agents", env.num_agents)
    if saved_agents != env.num_agents:
        diffs.append(f"agents: checkpoint {saved_agents}, this run {env.num_agents}")
    if not diffs:
        _check_world_size(meta.get("world_size"), dist, ckpt["path"])
        check(ckpt, policy, env)
        kept = rank_view(ckpt["tensors"], meta, dist)[1]["buffer"]
        if kept["first"] < kept["position"] or saved_cfg.trainer.burn_in:
            diffs = buffer_differences(saved_cfg, run_cfg)
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this run:\n  " + "\n  ".join(diffs))


def config_differences(saved: Config, current: Config) -> list[str]:
    """Settings that make a checkpoint's weights, optimizer state or carried state unusable in `current`."""
    diffs = []
    a, b = saved.policy.model_dump(), current.policy.model_dump()
    diffs += [f"policy.{k}: checkpoint {a[k]!r}, this run {b[k]!r}" for k in a if a[k] != b[k]]
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
    why = " (the checkpoint holds rollout steps laid out by it)"
    return _trainer_differences(saved, current, ("batch_size", "bptt_horizon", "burn_in"), why)


def _trainer_differences(saved: Config, current: Config, keys: tuple[str, ...], why: str = "") -> list[str]:
    diffs = []
    for key in keys:
        a, b = getattr(saved.trainer, key), getattr(current.trainer, key)
        if a != b:
            diffs.append(f"trainer.{key}: checkpoint {a!r}, this run {b!r}{why}")
    return diffs


def _check_world_size(saved, ctx: DistContext, path) -> None:
    if saved != ctx.world_size:
        raise CheckpointError(
            f"checkpoint {path} holds the carried state of {saved!r} rank(s) but this run has {ctx.world_size}; "
            f"resume it with {saved} process(es) in all (e.g. torchrun --standalone --nproc-per-node {saved} "
            f"-m carrystate.cli train --resume RUN_DIR)"
        )


def check(ckpt: dict, policy: Policy, env: VecEnv) -> None:
    """Raise a CheckpointError naming the checkpoint folder and the entry for the first thing in `ckpt` (as
    `load_checkpoint` returns it) that a checkpoint of its config cannot hold: a missing, extra, wrong-shaped
    or wrong-dtyped weight or tensor, an RNG state that torch refuses, optimizer state that does not fit the
    weights, a counter or meta entry of the wrong type or out of range, a part's JSON state of another
    structure. `policy` and `env` are built from the checkpoint's config (for a resume: the run's, after
    `config_differences` found nothing). Reads, never changes, what it is given (the env is reset)."""
    path, cfg, legacy = ckpt["path"], ckpt["config"], "format" not in ckpt["meta"]
    meta = upgraded(ckpt["meta"])
    fail = lambda where, what: _fail(path, where, what)  # noqa: E731
    world_size = _check_meta(meta, cfg, env, fail)
    buffer = meta["buffer"][0] if world_size > 1 else meta["buffer"]
    if legacy and (meta["phase"], buffer) != ("collect", {"position": 0, "first": 0}):
        fail("meta.json", "has no format (format 1, written between iterations) but a phase or buffer position")
    tensors, rank_meta = expected_state(rank_config(cfg, world_size), policy, env, buffer["position"], meta["phase"])
    if legacy:  # format 1: no rollout.valid, nothing of the buffer
        tensors = {k: v for k, v in tensors.items() if k != "rollout.valid" and not k.startswith("buffer.")}
    if world_size > 1:
        tensors, rank_meta = merge_rank_states([(tensors, rank_meta)] * world_size)
    _check_tensors(ckpt["model"], policy.state_dict(), "model.safetensors", fail)
    for name, weights in ckpt["model"].items():
        if not torch.isfinite(weights).all():
            fail(f"model.safetensors {name!r}", "holds non-finite values (NaN or infinity)")
    _check_tensors(ckpt["tensors"], tensors, "tensors.safetensors", fail)
    for name, saved in ckpt["tensors"].items():
        if name.rsplit(".", 1)[-1] in ("sample", "shuffle", "torch") and ".rng." in f".{name}":
            _check_rng(saved, cfg.trainer.device if name.endswith("sample") else "cpu", name, fail)
    for key in rank_meta:
        _check_structure(meta.get(key), rank_meta[key], f"meta.json {key}", fail)
    _check_optimizer(ckpt["optimizer"], policy, cfg, fail)


def expected_state(cfg: Config, policy: Policy, env: VecEnv, position: int, phase: str) -> tuple[dict, dict]:
    """(tensors, meta) of one rank's parts as a run of `cfg` at buffer `position` in `phase` would save them,
    built on the meta device."""
    device = torch.device(cfg.trainer.device)
    here = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available())
    parts = build_parts(cfg, env, policy, seed=0, device="meta", generator_device=device if here else "cpu")
    parts.buffer.position, parts.buffer.trained = position, phase == "collect" and position == parts.buffer.steps
    tensors, meta = split(parts.per_rank())
    if not here:  # the state of a CUDA generator, on a machine without CUDA
        tensors["rng.sample"] = CUDA_GENERATOR_STATE
    return tensors, meta


def _fail(path, where: str, what: str):
    raise CheckpointError(f"checkpoint {path} is not usable: {where} {what}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_meta(meta: dict, cfg: Config, env: VecEnv, fail) -> int:
    """The counters and the other meta.json entries that the layout depends on; returns the rank count."""
    for key in ("iteration", "global_step", "num_agents", "world_size", "phase", "buffer", "monitor"):
        if key not in meta:
            fail("meta.json", f"lacks {key!r}")
    if meta.get("format", FORMAT) != FORMAT:
        fail("meta.json format", f"is {meta['format']!r}; this version reads formats 1 to {FORMAT}")
    for key, low in (("iteration", 0), ("global_step", 0), ("world_size", 1)):
        if not _is_int(meta[key]) or meta[key] < low:
            fail(f"meta.json {key}", f"is {meta[key]!r}, expected an integer >= {low}")
    world_size = meta["world_size"]
    if meta["num_agents"] != env.num_agents or not _is_int(meta["num_agents"]):
        fail("meta.json num_agents", f"is {meta['num_agents']!r} but the checkpoint's config gives {env.num_agents}")
    if not (meta.get("interrupted") is None or isinstance(meta["interrupted"], str)):
        fail("meta.json interrupted", f"is {meta['interrupted']!r}, expected a signal's name or null")
    _check_structure(meta["monitor"], {"returns": [0.0], "success": [0.0]}, "meta.json monitor", fail)
    if meta["phase"] not in ("collect", "update"):
        fail("meta.json phase", f"is {meta['phase']!r}, expected 'collect' or 'update'")
    buffers = meta["buffer"] if world_size > 1 and isinstance(meta["buffer"], list) else [meta["buffer"]]
    steps = rank_config(cfg, world_size).trainer.batch_size // env.num_agents
    update = meta["phase"] == "update"
    for buffer in buffers:
        if (
            not isinstance(buffer, dict)
            or set(buffer) != {"position", "first"}
            or not all(map(_is_int, buffer.values()))
        ):
            fail("meta.json buffer", f"is {buffer!r}, expected {{'position': int, 'first': int}}")
        position, first = buffer["position"], buffer["first"]
        expected_first = steps - cfg.trainer.burn_in if position == steps and not update else 0
        if not 0 <= position <= steps or first != expected_first or (update and position != steps):
            fail(
                "meta.json buffer",
                f"is {buffer!r}, which does not fit phase {meta['phase']!r} and a rollout of {steps} steps "
                f"(position 0..{steps}; first {expected_first})",
            )
    return world_size


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
