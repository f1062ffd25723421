"""What `trainer.keep_freed_memory` buys: the MettaGrid arena's update (4 maps, 2 epochs, fp32 and bf16) with the
C library's default allocator settings against the trainer's, each in a fresh process (the setting is global to a
process and cannot be undone), the two alternating over rounds.

Each child builds the trainer, runs one warm-up iteration, then times `--updates` updates of the same rollout and
counts the minor page faults (getrusage) they take; medians per child, then medians over rounds.

    python -m benchmarks.allocator --json benchmarks/results/allocator_cpu.json [--rounds 3] [--updates 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODES = {"default": "false", "keep": "true"}  # trainer.keep_freed_memory
PRECISIONS = ("fp32", "bf16")

_CHILD = """
import json, resource, sys, time
import numpy as np
import torch
import carrystate
from benchmarks.mettagrid import CONFIG, overrides

precision, keep, updates = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = carrystate.load_config(CONFIG, [*overrides(4, 2), f"trainer.precision={precision}",
                                      f"trainer.keep_freed_memory={keep}"])
tr = carrystate.Trainer(cfg, quiet=True)
tr.train(stop_after=1)
seconds, faults = [], []
for _ in range(updates):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    tr.update()
    seconds.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
tr.env.close()
print(json.dumps({"seconds": float(np.median(seconds)), "faults": float(np.median(faults))}))
"""


def child(precision: str, mode: str, updates: int) -> dict:
    cmd = [sys.executable, "-c", _CHILD, precision, MODES[mode], str(updates)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(rounds: int = 3, updates: int = 6) -> list[dict]:
    runs = {(p, m): [] for p in PRECISIONS for m in MODES}
    for _ in range(rounds):
        for key in runs:
            runs[key].append(child(*key, updates))
    rows = []
    for p in PRECISIONS:
        med = {m: {k: float(np.median([r[k] for r in runs[p, m]])) for k in ("seconds", "faults")} for m in MODES}
        rows.append(
            {
                "precision": p,
                "maps": 4,
                "update_epochs": 2,
                "rounds": rounds,
                "updates": updates,
                **{f"{m}_{k}": v for m in MODES for k, v in med[m].items()},
                "speedup": med["default"]["seconds"] / med["keep"]["seconds"],
            }
        )
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=6, help="timed updates per child")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows = run(a.rounds, a.updates)
    print(json.dumps(rows, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
