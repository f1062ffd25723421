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
second Ctrl-C leaves the previous checkpoints untouched; a temporary folder that a kill left behind is removed
when the run next starts (`remove_unfinished`). On load, a checkpoint whose files are missing, truncated or do
not match their checksums is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from carrystate.config import Config, config_from_dict
from carrystate.errors import CheckpointError

FILES = ("model.safetensors", "tensors.safetensors", "optimizer.pt")


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
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_unfinished(run_dir: Path) -> list[Path]:
    """Delete the temporary folders of checkpoint writes that never finished (a kill -9 or power cut during a
    save); returns them. Call it before the run writes again: a write in progress is such a folder too."""
    root = Path(run_dir) / "checkpoints"
    unfinished = sorted(root.glob(".tmp_iter_*")) if root.is_dir() else []
    for path in unfinished:
        shutil.rmtree(path, ignore_errors=True)
    return unfinished


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (temporary folders of interrupted writes excluded)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(root.glob("iter_*")) if root.is_dir() else []


def _read(path: Path) -> dict:
    meta = json.loads((path / "meta.json").read_text())
    for name, digest in meta["sha256"].items():
        if _sha256(path / name) != digest:
            raise CheckpointError(f"{path / name} does not match its checksum (truncated or corrupted)")
    return {
        "path": path,
        "meta": meta,
        "config": config_from_dict(meta["config"]),
        "model": load_file(path / "model.safetensors"),
        "tensors": load_file(path / "tensors.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
    }


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint folder, or the newest intact checkpoint of a run folder (warning about any newer
    one that is damaged). Returns {'path', 'meta', 'config', 'model', 'tensors', 'optimizer'}, on CPU."""
    path = Path(path)
    if (path / "meta.json").is_file():
        candidates = [path]
    else:
        candidates = checkpoints(path)[::-1]
        if not candidates:
            raise CheckpointError(
                f"no checkpoint in {path} (expected {path}/checkpoints/iter_*/ or a checkpoint folder)"
            )
    problems = []
    for candidate in candidates:
        try:
            ckpt = _read(candidate)
        except Exception as err:  # noqa: BLE001 - any damage means: try the previous one
            problems.append(f"{candidate.name}: {err}")
            warnings.warn(f"checkpoint {candidate} is unusable ({err}); trying the previous one", stacklevel=2)
            continue
        return ckpt
    raise CheckpointError("no usable checkpoint:\n  " + "\n  ".join(problems))
