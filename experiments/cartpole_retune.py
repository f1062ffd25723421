"""Issue 13, 2026-11-30: configs/cartpole_novel.yaml after the CPU kernels and Adam changed their rounding. The
config with each override, seeds 1-5 (fixed before tuning), 100k agent-steps, the final policy on 100 fresh
episodes per seed (env seeds 10,000 + seed, as tests/test_learning_cartpole.py scores it).

    python experiments/cartpole_retune.py [key=value ...]      # appends a row to results/cartpole_retune.json
"""

from __future__ import annotations

import sys

import numpy as np
from common import load, save, train


def main():
    overrides = sys.argv[1:]
    scores = []
    for seed in (1, 2, 3, 4, 5):
        per_seed = [f"trainer.seed={seed}", "diagnostics.staleness_segments=0", *overrides]
        scores.append(train("configs/cartpole_novel.yaml", per_seed, episodes=100)["eval_return"])
        print(overrides, seed, scores[-1], flush=True)
    row = {"overrides": overrides, "seeds": [1, 2, 3, 4, 5], "returns": scores, "mean": float(np.mean(scores))}
    save("cartpole_retune", [*load("cartpole_retune", []), row])
    print(row, flush=True)


if __name__ == "__main__":
    main()
