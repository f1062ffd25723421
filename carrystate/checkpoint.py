"""Checkpoints: weights and carried recurrent state in safetensors, optimizer state loaded with
`weights_only=True` (never arbitrary unpickling), counters and config in JSON. Written atomically:
everything goes to a temporary folder that is fsynced and renamed into place.

Layout: `<run>/checkpoints/iter_<NNNNNN>/{model.safetensors, state.safetensors, optimizer.pt, meta.json}`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from carrystate.config import Config, config_from_dict


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, iteration: int, *, policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, torch.Tensor], meta: dict, config: Config) -> Path:
    """Write checkpoint `iter_<iteration>` atomically and return its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(weights, tmp / "model.safetensors")
    save_file(state, tmp / "state.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "meta.json").write_text(json.dumps({**meta, "iteration": iteration,
                                               "config": config.model_dump(mode="json")}, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def latest_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest one of a run folder."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    found = sorted((path / "checkpoints").glob("iter_*")) if (path / "checkpoints").is_dir() else []
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (expected {path}/checkpoints/iter_*/ or a checkpoint folder)")
    return found[-1]


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint folder: {'config', 'model', 'state', 'optimizer', 'meta'} (tensors on CPU)."""
    path = latest_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    return {
        "path": path,
        "config": config_from_dict(meta["config"]),
        "model": load_file(path / "model.safetensors"),
        "state": load_file(path / "state.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "meta": meta,
    }
