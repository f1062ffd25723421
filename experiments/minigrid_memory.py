"""Issue 15 experiment: MiniGrid-MemoryS7 from configs/minigrid_memory.yaml (Dict observations, per-entry encoders),
seeds 1-3, beside a memoryless control (`policy.core=none`, the same network without recurrence). A success is an
episode that ends at the matching object (a positive return); a memoryless policy can only guess which of the two
objects matches, so it is capped near 50%. Each run is evaluated on 300 fresh episodes (`carrystate.evaluate`, as
`carrystate eval` does); `python experiments/report.py` tabulates and plots them in EXPERIMENTS.md.

    python experiments/minigrid_memory.py --core gru [--seeds 1 2 3] [--steps N] [--set key=value ...]
    python experiments/minigrid_memory.py --core none          # the control; one process per core runs in parallel
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import ROOT, fresh_episodes, load, save

import carrystate

KEYS = ("charts/success_rate", "charts/episodic_return", "charts/episodic_length", "charts/SPS")
EVAL_EPISODES = 300


def run(core: str, seeds: list[int], steps: int, overrides: list[str], name: str) -> None:
    torch.set_num_threads(1)
    rows = load(name, [])
    for seed in seeds:
        cfg = carrystate.load_config(
            ROOT / "configs/minigrid_memory.yaml",
            [
                f"policy.core={core}",
                f"trainer.seed={seed}",
                f"trainer.total_timesteps={steps}",
                "diagnostics.staleness_segments=0",
                *overrides,
            ],
        )
        tr = carrystate.Trainer(cfg, quiet=True)
        t0 = time.perf_counter()
        row = {"core": core, "seed": seed, "overrides": overrides}
        rows = [r for r in rows if r["seed"] != seed] + [row]
        while tr.iteration < tr.num_iterations:
            tr.train(stop_after=20)
            row.update(
                steps=tr.global_step,
                wall_s=time.perf_counter() - t0,
                curve=[{"step": h["step"], **{k: h[k] for k in KEYS if k in h}} for h in tr.history],
            )
            save(name, rows)
            last = row["curve"][-1]
            print(seed, row["steps"], round(row["wall_s"]), {k: round(v, 3) for k, v in last.items()}, flush=True)
        stats = fresh_episodes(tr.policy, cfg, 10_000 + seed, EVAL_EPISODES)
        curve = [h["charts/success_rate"] for h in tr.history if "charts/success_rate" in h]
        row.update(
            eval_success=float(np.mean(stats.success)),
            eval_return=float(np.mean(stats.episode_returns)),
            eval_episodes=len(stats.success),
            last10_success=float(np.mean(curve[-max(1, len(curve) // 10) :])),
        )
        print({k: v for k, v in row.items() if k != "curve"}, flush=True)
        save(name, rows)
        tr.env.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--core", choices=["lstm", "gru", "none"], default="gru")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=None, help="agent-steps (default: the config's total_timesteps)")
    p.add_argument("--name", default=None, help="results file (default experiments/results/minigrid_memory_CORE)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides on top of configs/minigrid_memory.yaml")
    a = p.parse_args()
    steps = a.steps or carrystate.load_config(ROOT / "configs/minigrid_memory.yaml").trainer.total_timesteps
    run(a.core, a.seeds, steps, a.set, a.name or f"minigrid_memory_{a.core}")


if __name__ == "__main__":
    main()
