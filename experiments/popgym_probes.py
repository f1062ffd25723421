"""Issue 13 probes: which change moves POPGym's Medium Repeat tasks off chance. One seed (1) per setting, 2M
agent-steps, `configs/popgym.yaml` plus each setting's overrides; the score is the mean of the per-batch mean
episodic returns over the last 10% of training (as the 5M experiment scores), the same per quarter of
training, and the mean return of the final policy on 50 fresh episodes. Probes, not results: the settings
that move a task are then run at 5M on seeds 1-5 (popgym_vs_sb3.py --set ...).

    python experiments/popgym_probes.py ENV STEPS SEED NAME:key=value,key=value ...
"""

from __future__ import annotations

import sys

import numpy as np
from common import load, returns_curve, save, train


def main():
    env, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for spec in sys.argv[4:]:
        name, _, joined = spec.partition(":")
        overrides = [o for o in joined.split(",") if o]
        r = train(
            "configs/popgym.yaml",
            [
                f"env.popgym.id={env}",
                f"trainer.total_timesteps={steps}",
                f"trainer.seed={seed}",
                "diagnostics.staleness_segments=0",
                *overrides,
            ],
            episodes=50,
        )
        curve = [v for _, v in returns_curve(r["history"])]
        tenth = max(1, len(curve) // 10)
        quarters = [float(np.mean(curve[i * len(curve) // 4 : (i + 1) * len(curve) // 4])) for i in range(4)]
        row = {
            "env": env,
            "steps": steps,
            "seed": seed,
            "name": name,
            "overrides": overrides,
            "last10": float(np.mean(curve[-tenth:])),
            "quarters": quarters,
            "eval": r["eval_return"],
            "sps": r["sps"],
        }
        rows = [x for x in load("popgym_probes", []) if (x["env"], x["name"], x["seed"]) != (env, name, seed)]
        save("popgym_probes", [*rows, row])
        print(row, flush=True)


if __name__ == "__main__":
    main()
