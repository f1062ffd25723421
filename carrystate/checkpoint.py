"""Checkpoints: everything needed to continue a run, written atomically, verified on load.

A checkpoint is a folder `<run>/checkpoints/iter_<NNNNNN>/` with
- `model.safetensors`: the policy weights;
- `tensors.safetensors`: the carried recurrent state (`store.*`), RNG states (`rng.*`), the rollout's
  current observation (`rollout.*`), the built-in env's arrays (`env.*`) and the part of the segment buffer
  the run still needs (`buffer.*`; what each entry must be is `run_state.check`'s);
- `optimizer.pt`: the optimizer state, read back with `torch.load(weights_only=True)` (no arbitrary
  unpickling: a crafted file cannot run code);
- `meta.json`: counters, the config, JSON-able extras, and the SHA-256 of every other file.

Writes go to a temporary folder (`.tmp_iter_<NNNNNN>`) that is fsynced and renamed into place, so a crash or a
second Ctrl-C leaves the previous checkpoints untouched. A checkpoint is deleted (pruned beyond the newest `keep`,
or replaced by one of the same iteration) by renaming it to `.trash_iter_<NNNNNN>` first, one atomic step, so a
kill at any moment leaves every `iter_*` folder whole. What a kill left behind is dealt with when the run next
starts, under its writer lock (`remove_unfinished`). On load, a checkpoint whose files are missing, truncated or
do not match their checksums is skipped with a warning and the one before it is used; when none is usable, one
CheckpointError line says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from carrystate.config import Config, config_from_dict
from carrystate.errors import CheckpointError

FILES = ("model.safetensors", "tensors.safetensors", "optimizer.pt")
TRASH = ".trash_"  # the name prefix of a checkpoint folder that is being deleted


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    *,
    model: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    optimizer: dict,
    meta: dict,
    config: Config,
    keep: int = 3,
) -> Path:
    """Write checkpoint `iter_<iteration>` atomically, drop all but the newest `keep`, return its folder."""
    for name, t in model.items():
        if not torch.isfinite(t).all():
            raise CheckpointError(
                f"refusing to checkpoint non-finite weights ({name}); the last good checkpoint is kept"
            )
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"iter_{iteration:06d}", root / f".tmp_iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model.items()}, tmp / "model.safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "tensors.safetensors")
    torch.save(optimizer, tmp / "optimizer.pt")
    sums = {name: _sha256(tmp / name) for name in FILES}
    full_meta = {**meta, "iteration": iteration, "config": config.model_dump(mode="json"), "sha256": sums}
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    replaced = _set_aside(final) if final.exists() else None  # the same iteration again: a stop came during its save
    os.replace(tmp, final)
    _fsync(root)
    pruned = [_set_aside(old) for old in (checkpoints(run_dir)[:-keep] if keep > 0 else [])]
    for trash in filter(None, [replaced, *pruned]):
        shutil.rmtree(trash)
    return final


def _set_aside(path: Path) -> Path:
    """Rename the checkpoint folder `path` to its trash name (one atomic step: no `iter_*` folder is ever half
    deleted) and return that name, for the caller to delete."""
    trash = path.with_name(TRASH + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    return trash


def _missing(path: Path) -> str | None:
    """The first file that the checkpoint folder `path` lacks, or None when it has them all."""
    return next((name for name in (*FILES, "meta.json") if not (path / name).is_file()), None)


def remove_unfinished(run_dir: Path) -> list[Path]:
    """Clear what kills left in the run's checkpoints folder, and return the folders removed. Call it when the run
    starts, holding its writer lock (`locks.hold_run_folder`): another writer's save in progress looks the same.
    - `.tmp_iter_*`: a save that never finished: removed.
    - `.trash_iter_*`: a checkpoint set aside for deletion. While it still holds every file and no `iter_*` has
      its name (a kill came between setting it aside and the rename of its replacement, or straight after a prune's
      rename), it is put back, so the run keeps its newest checkpoint; otherwise it is removed.
    - `iter_*` lacking a file: what a prune of an earlier version (which deleted in place) left when killed
      midway: removed, with one warning."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = sorted(root.glob(".tmp_iter_*"))
    for trash in sorted(root.glob(TRASH + "iter_*")):
        original = trash.with_name(trash.name.removeprefix(TRASH))
        if _missing(trash) is None and not original.exists():
            os.replace(trash, original)
        else:
            removed.append(trash)
    damaged = [(path, name) for path in checkpoints(run_dir) if (name := _missing(path))]
    if damaged:
        warnings.warn(
            "removed incomplete checkpoints (as a deletion killed midway leaves them): "
            + ", ".join(f"{path} (no {name})" for path, name in damaged),
            stacklevel=2,
        )
    removed += [_set_aside(path) for path, _ in damaged]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (temporary folders of interrupted writes excluded)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(root.glob("iter_*")) if root.is_dir() else []


def _read(path: Path) -> dict:
    meta = json.loads((path / "meta.json").read_text())
    for name, digest in meta["sha256"].items():
        if _sha256(path / name) != digest:
            raise CheckpointError(f"{path / name} does not match its checksum (truncated or corrupted)")
    try:
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a class or a call in the pickle: refused, never run
        raise CheckpointError(f"{path / 'optimizer.pt'} holds more than tensors and plain data") from None
    return {
        "path": path,
        "meta": meta,
        "config": config_from_dict(meta["config"]),
        "model": load_file(path / "model.safetensors"),
        "tensors": load_file(path / "tensors.safetensors"),
        "optimizer": optimizer,
    }


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint folder, or the newest intact checkpoint of a run folder (warning about any newer
    one that is damaged). Returns {'path', 'meta', 'config', 'model', 'tensors', 'optimizer'}, on CPU.
    Raises one CheckpointError line when there is no checkpoint, or none is usable."""
    path = Path(path)
    if (path / "meta.json").is_file():
        candidates = [path]
    else:
        candidates = checkpoints(path)[::-1]
        if not candidates:
            raise CheckpointError(
                f"no checkpoint in {path} (expected {path}/checkpoints/iter_*/ or a checkpoint folder)"
            )
    damaged: list[tuple[Path, str]] = []  # (checkpoint, why), newest first
    for candidate in candidates:
        try:
            ckpt = _read(candidate)
        except Exception as err:  # noqa: BLE001 - any damage means: try the previous one
            why = str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"
            damaged.append((candidate, " ".join(why.split())))
            continue
        for bad, why in damaged:
            warnings.warn(f"checkpoint {bad} is unusable ({why}); using {candidate.name}", stacklevel=2)
        return ckpt
    (newest, why), count = damaged[0], len(damaged)
    if candidates == [path]:
        raise CheckpointError(f"no usable checkpoint: {path} is damaged ({why})")
    if count == 1:
        raise CheckpointError(f"no usable checkpoint in {path}: its one checkpoint, {newest.name}, is damaged ({why})")
    raise CheckpointError(
        f"no usable checkpoint in {path}: all {count} checkpoints are damaged (the newest, {newest.name}: {why})"
    )
