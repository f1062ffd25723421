"""Issue 25: one real sweep, and its best config against the shipped one. The sweep is `configs/cartpole_novel.yaml`'s
own `sweep` section (learning rate, GAE λ, epochs, chrono gates on or off; seeds 101 and 102, apart from the 1–5 the
comparison uses), run by the CLI; this script then reads its study, and trains the sweep's best.yaml and the shipped
config on seeds 1–5, each final policy scored on 100 fresh episodes (as `carrystate eval`).

    carrystate sweep configs/cartpole_novel.yaml --out SWEEP_DIR
    python experiments/sweep_cartpole.py SWEEP_DIR [--seeds 1 2 3 4 5]

Rows go to experiments/results/sweep_cartpole.json; a stopped run resumes (rows already there are skipped).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import optuna
from common import ROOT, load, returns_curve, save, train

NAME = "sweep_cartpole"
SHIPPED = "configs/cartpole_novel.yaml"


def trials_of(folder: Path) -> list[dict]:
    study = optuna.load_study(study_name="cartpole_novel", storage=f"sqlite:///{folder / 'study.db'}")
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "params": t.params,
            "value": t.value,
            "seeds": {k: v for k, v in t.user_attrs.items() if k.startswith("seed_")},
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
        }
        for t in study.trials
        if not t.user_attrs.get("surplus")
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    a = p.parse_args()
    best = ROOT / "experiments" / "results" / f"{NAME}_best.yaml"
    shutil.copy(a.sweep_dir / "best.yaml", best)
    data = load(NAME, {"rows": []})
    data["trials"] = trials_of(a.sweep_dir)
    save(NAME, data)
    for config in ("best", "shipped"):
        for seed in a.seeds:
            if any((r["config"], r["seed"]) == (config, seed) for r in data["rows"]):
                continue
            path = str(best.relative_to(ROOT)) if config == "best" else SHIPPED
            r = train(path, [f"trainer.seed={seed}", "diagnostics.staleness_segments=0"], episodes=100)
            if r.pop("trainer").summary.interrupted:
                raise SystemExit(f"{config} seed {seed}: stopped before its budget; nothing recorded")
            curve = returns_curve(r["history"])
            tenth = max(1, len(curve) // 10)
            row = {
                "config": config,
                "seed": seed,
                "eval_return": r["eval_return"],
                "last10": float(np.mean([v for _, v in curve[-tenth:]])),
                "wall_s": r["wall_s"],
            }
            print(row, flush=True)
            data["rows"].append(row)
            save(NAME, data)


if __name__ == "__main__":
    main()
