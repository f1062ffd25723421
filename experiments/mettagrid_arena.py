"""Issue 5 experiment: MettaGrid arena with 24 agents per map (configs/mettagrid_arena.yaml), a learning curve of
mean reward per agent over >= 5M agent-steps, and the agent-steps per second. The untrained policy's score on the
same maps is measured first, so the curve has its own baseline.

    python experiments/mettagrid_arena.py [--steps 5013504] [--seeds 1 2 3] [--name NAME] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import ROOT, fresh_episodes, save, train_chunk

import carrystate

KEYS = (
    "charts/reward_per_agent_step",
    "charts/episodic_return",
    "charts/SPS",
    "perf/env_seconds",
    "perf/policy_seconds",
    "perf/learn_seconds",
)


def score(policy, cfg, seed: int, episodes: int) -> float:
    """Mean episodic return per agent of `policy` on fresh maps."""
    return float(np.mean(fresh_episodes(policy, cfg, seed, episodes).episode_returns))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5_013_504)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--chunk", type=int, default=5, help="iterations between saves of the partial curve")
    p.add_argument("--name", default="mettagrid_arena", help="results file (experiments/results/NAME.json)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides on top of configs/mettagrid_arena.yaml")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        cfg = carrystate.load_config(
            ROOT / "configs/mettagrid_arena.yaml",
            [f"trainer.seed={seed}", f"trainer.total_timesteps={a.steps}", "diagnostics.staleness_segments=0", *a.set],
        )
        tr = carrystate.Trainer(cfg, quiet=True)
        agents = cfg.env.num_envs * cfg.env.mettagrid.agents
        row = {
            "seed": seed,
            "overrides": a.set,
            "agents": agents,
            "untrained_return": score(tr.policy, cfg, 10_000 + seed, agents),
        }
        print(row, flush=True)
        rows.append(row)
        t0 = time.perf_counter()
        while tr.iteration < tr.num_iterations:
            train_chunk(tr, a.chunk)
            row.update(
                steps=tr.global_step,
                wall_s=time.perf_counter() - t0,
                curve=[{"step": h["step"], **{k: h[k] for k in KEYS if k in h}} for h in tr.history],
            )
            row["sps"] = row["steps"] / row["wall_s"]
            save(a.name, rows)
            print(
                {k: row[k] for k in ("seed", "steps", "wall_s", "sps")},
                {k: round(v, 4) for k, v in row["curve"][-1].items()},
                flush=True,
            )
        row["final_return"] = score(tr.policy, cfg, 10_000 + seed, agents)
        print({k: v for k, v in row.items() if k != "curve"}, flush=True)
        save(a.name, rows)
        tr.env.close()


if __name__ == "__main__":
    main()
