"""Issue 5 experiment: where truncated backpropagation stops learning a dependency. Passive T-maze with corridor
length L ∈ {16, 32, 64, 96, 128, 256} against bptt_horizon ∈ {16, 64}, a fixed budget per run, success rate
of the final policy on 300 fresh episodes.

    python experiments/tmaze_sweep.py [--steps N] [--seeds 1 2 3] [--resume]
"""

from __future__ import annotations

import argparse

from common import load, save, train

LENGTHS = (16, 32, 64, 96, 128, 256)
HORIZONS = (16, 64)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--resume", action="store_true", help="keep the rows already saved and run only missing cells")
    a = p.parse_args()
    rows = load("tmaze_sweep", []) if a.resume else []
    done = {(r["length"], r["bptt_horizon"], r["seed"]) for r in rows if r["steps"] >= a.steps}
    for seed in a.seeds:
        for L in LENGTHS:
            for H in HORIZONS:
                if (L, H, seed) in done:
                    continue
                r = train(
                    None,
                    [
                        f"env.tmaze.length_min={L}",
                        f"env.tmaze.length_max={L}",
                        "env.num_envs=32",
                        "trainer.batch_size=8192",
                        f"trainer.bptt_horizon={H}",
                        "trainer.minibatch_size=2048",
                        f"trainer.total_timesteps={a.steps}",
                        f"trainer.seed={seed}",
                        "trainer.gamma=0.995",
                        "diagnostics.staleness_segments=0",
                    ],
                )
                r.pop("trainer")
                row = {
                    "length": L,
                    "bptt_horizon": H,
                    "seed": seed,
                    "eval_success": r["eval_success"],
                    "steps": r["steps"],
                    "wall_s": r["wall_s"],
                    "sps": r["sps"],
                }
                print(row, flush=True)
                rows.append(row)
                save("tmaze_sweep", rows)


if __name__ == "__main__":
    main()
