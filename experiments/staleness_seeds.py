"""Issue 4 follow-up: the T-maze at update_epochs=16 (the most stale setting) with stored, refresh, burn-in and
zero start states over more seeds, since one seed cannot separate a fix from luck.

    python experiments/staleness_seeds.py [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse

from common import median_of, save, train

MODES = {
    "stored": [],
    "refresh": ["trainer.start_state=refresh"],
    "burn_in=16": ["trainer.burn_in=16"],
    "zero": ["trainer.start_state=zero"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        for mode, extra in MODES.items():
            r = train(
                None,
                [
                    "trainer.total_timesteps=400000",
                    "trainer.update_epochs=16",
                    "trainer.learning_rate=0.0025",
                    f"trainer.seed={seed}",
                    "diagnostics.staleness_segments=32",
                    *extra,
                ],
            )
            r.pop("trainer")
            row = {
                "mode": mode,
                "seed": seed,
                "eval_success": r["eval_success"],
                "kl_first": median_of(r["history"], "memory/kl_first"),
                "wall_s": r["wall_s"],
            }
            print(row, flush=True)
            rows.append(row)
            save("staleness_seeds", rows)


if __name__ == "__main__":
    main()
