"""What `trainer.keep_freed_memory` buys: the MettaGrid arena's update (4 maps, 2 epochs, fp32 and bf16) with the
C library's default allocator settings against the trainer's, each in a fresh process (the setting is global to a
process and cannot be undone), the two alternating over rounds.

Each child builds the trainer, runs one warm-up iteration, then times `--updates` updates of the same rollout and
counts the minor page faults (getrusage) they take; medians per child, then medians over rounds. Update times
of separate processes drift with this machine, so the cost of one fault is also measured on its own (`fault_cost`)
and multiplied by the faults the setting removes: the time it saves per update, estimated.

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


# The cost of one page fault here: 50 cycles of four 8 MiB tensors allocated and freed, with glibc's thresholds
# fixed at its initial 128 KiB (every cycle maps and faults its memory in anew) and with the trainer's setting.
_FAULT_COST = """
import ctypes, resource, sys, time, torch
from carrystate.trainer import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
else:
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 128 << 10)
    libc.mallopt(-1, 128 << 10)
def cycle():
    held = [torch.ones(2 << 20) for _ in range(4)]
    del held
for _ in range(3):
    cycle()
f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for _ in range(50):
    cycle()
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def fault_cost(rounds: int) -> float:
    """Seconds per minor page fault: the faulting cycles' extra time over the kept ones' per fault (median)."""
    costs = []
    for _ in range(rounds):
        (t_def, f_def), (t_keep, f_keep) = (
            map(float, _python(_FAULT_COST, mode).split()) for mode in ("default", "keep")
        )
        costs.append((t_def - t_keep) / max(1.0, f_def - f_keep))
    return float(np.median(costs))


def _python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True, text=True,
                         timeout=1800)  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def child(precision: str, mode: str, updates: int) -> dict:
    return json.loads(_python(_CHILD, precision, MODES[mode], str(updates)))


def run(rounds: int = 3, updates: int = 6) -> list[dict]:
    runs = {(p, m): [] for p in PRECISIONS for m in MODES}
    for _ in range(rounds):
        for key in runs:
            runs[key].append(child(*key, updates))
    cost = fault_cost(rounds)
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
                "fault_seconds": cost,  # one page fault's cost, from the microbenchmark above
                "saved_seconds": cost * (med["default"]["faults"] - med["keep"]["faults"]),  # per update, estimated
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
