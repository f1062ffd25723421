"""Run fingerprints: a script, not a test. For every shipped config, a fixed short run (two iterations, with a
checkpoint written and the run resumed for a third), then a SHA-256 over the weights, the optimizer state and the
checkpoint's tensors. A move that keeps behaviour leaves every fingerprint unchanged; compare two checkouts with

    python tests/fingerprint.py > before.txt      # on the old checkout
    python tests/fingerprint.py | diff before.txt -

Configs whose env package is not installed are listed as skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = {  # per config: overrides that keep the run short on a laptop
    "default.yaml": ["trainer.batch_size=4096", "trainer.minibatch_size=1024"],
    "recall.yaml": ["trainer.batch_size=4096", "trainer.minibatch_size=1024"],
    "cartpole_novel.yaml": [],
    "tmaze_long.yaml": ["trainer.batch_size=8192"],
    "popgym.yaml": ["trainer.batch_size=4096"],
    "popgym_repeat_previous.yaml": ["trainer.batch_size=4096"],
    "minigrid_memory.yaml": [],
    "metta.yaml": ["env.num_envs=64", "trainer.batch_size=8192", "trainer.minibatch_size=4096"],
}
# configs whose short run is not reproducible from one process to the next on one checkout (MettaGrid's arena gave
# four different fingerprints in four runs, with and without worker processes): listed, not fingerprinted
VARIES = {"mettagrid_arena.yaml": "MettaGrid's arena varies from run to run on one checkout"}
NEEDS = {"popgym": "popgym", "minigrid": "minigrid", "mettagrid": "mettagrid"}


def digest(*dicts) -> str:
    h = hashlib.sha256()
    for d in dicts:
        for k in sorted(d, key=str):
            v = d[k]
            h.update(str(k).encode())
            if torch.is_tensor(v):
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            elif isinstance(v, dict):
                h.update(digest(v).encode())
            elif isinstance(v, list | tuple):
                h.update(digest(dict(enumerate(v))).encode())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()[:16]


def fingerprint(config: str, extra: list[str]) -> str:
    import carrystate
    from carrystate.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        over = [*SMALL.get(config, []), *extra, "trainer.checkpoint_interval=1", "logging.report=false"]
        batch = carrystate.load_config(ROOT / "configs" / config, over).trainer.batch_size
        run = Path(tmp) / "fp"
        carrystate.train(ROOT / "configs" / config, [*over, f"trainer.total_timesteps={2 * batch}"], run_dir=run)
        carrystate.Trainer.resume(run, [f"trainer.total_timesteps={3 * batch}"], quiet=True).train()
        ckpt = load_checkpoint(run)
        return digest(ckpt["model"], ckpt["tensors"], {"optimizer": ckpt["optimizer"]})


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1:] or sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    for name in names:
        if name in VARIES:
            print(f"{name:32s} skipped ({VARIES[name]})", flush=True)
            continue
        need = next((pkg for key, pkg in NEEDS.items() if key in name), None)
        if need and importlib.util.find_spec(need) is None:
            print(f"{name:32s} skipped ({need} not installed)", flush=True)
            continue
        print(f"{name:32s} {fingerprint(name, [])}", flush=True)


if __name__ == "__main__":
    main()
