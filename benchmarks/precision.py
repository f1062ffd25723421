"""trainer.precision=bf16 against fp32 on a shipped config: whole training, the two trainers' iterations in
alternating rounds (5 rounds of N iterations each after one warm-up iteration), medians. One torch thread.

    python -m benchmarks.precision configs/cartpole_novel.yaml [--iterations 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import carrystate


def compare(config: str, iterations: int, rounds: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    over = ["trainer.total_timesteps=1000000000", "diagnostics.staleness_segments=0"]
    trainers = {
        p: carrystate.Trainer(carrystate.load_config(config, [*over, f"trainer.precision={p}"]), quiet=True)
        for p in ("fp32", "bf16")
    }
    seconds: dict[str, list[float]] = {p: [] for p in trainers}
    try:
        for tr in trainers.values():
            tr.train(stop_after=1)  # warm-up
        for _ in range(rounds):
            for p, tr in trainers.items():
                t0 = time.perf_counter()
                tr.train(stop_after=iterations)
                seconds[p].append((time.perf_counter() - t0) / iterations)
    finally:
        for tr in trainers.values():
            tr.env.close()
    med = {p: float(np.median(v)) for p, v in seconds.items()}
    return {"fp32_seconds": med["fp32"], "bf16_seconds": med["bf16"], "bf16_speed_over_fp32": med["fp32"] / med["bf16"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--iterations", type=int, default=1, help="iterations per trainer per round")
    a = p.parse_args()
    print(a.config, compare(a.config, a.iterations))


if __name__ == "__main__":
    main()
