"""Issue 27, item 1's last candidate: what gradient reach (`carrystate probe`) and the `memory/*` staleness diagnostics
say about the LSTM with zero gate biases, the LSTM with its default chrono gates and the GRU on the same task,
POPGym RepeatFirstMedium (`configs/popgym.yaml` with 8,192-step rollouts, seed 1, 2M agent-steps, staleness
measured on 32 segments every iteration). Gradient reach is probed on the policy as built (before any update) and
on the trained one: the mean norm of the gradient of an agent's last-step loss with respect to the observation k
steps earlier, through the training unroll, on fresh rollouts.

    python experiments/lstm_gru_reach.py [--steps 2000000] [--seed 1]

Rows go to experiments/results/lstm_gru_reach.json (a stopped run resumes: rows already there are skipped).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import ROOT, fresh_episodes, load, median_of, returns_curve, save

from carrystate.config import load_config
from carrystate.diagnostics import probe
from carrystate.trainer import Trainer

NAME = "lstm_gru_reach"
CONFIG = ROOT / "configs/popgym.yaml"
# 8,192-step rollouts (the config's 4,096 fill one segment per agent): the staleness diagnostic replays a segment
# from the state its agent's previous segment in the rollout ends with, so every agent needs two
TASK = ["env.popgym.id=RepeatFirstMedium", "diagnostics.staleness_segments=32", "trainer.batch_size=8192"]
CORES = {
    "lstm_zero_bias": ["policy.core=lstm", "policy.chrono_tmax=0"],
    "lstm_chrono128": ["policy.core=lstm"],  # the default
    "gru": ["policy.core=gru"],
}
KEYS = ["memory/state_distance", "memory/kl_first", "memory/kl_last", "memory/value_gap_first", "memory/value_gap_last"]
LAGS = [0, 1, 4, 16, 32, 48, 63]


def reach(policy, cfg, seed: int) -> list[float]:
    curve = probe(policy, cfg, [cfg.trainer.bptt_horizon], seed=seed)["curves"][str(cfg.trainer.bptt_horizon)]
    return [float(v) for v in curve]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--name", default=NAME, help="results file under experiments/results")
    a = p.parse_args()
    for core, over in CORES.items():
        rows = load(a.name, [])
        if any((r["core"], r["seed"], r["budget"]) == (core, a.seed, a.steps) for r in rows):
            continue
        cfg = load_config(CONFIG, [*TASK, *over, f"trainer.seed={a.seed}", f"trainer.total_timesteps={a.steps}"])
        torch.set_num_threads(1)
        tr = Trainer(cfg, run_dir=None, quiet=True)
        before = reach(tr.policy, cfg, seed=10_000 + a.seed)
        tr.summary = tr.train()
        if tr.summary.interrupted:
            raise SystemExit(f"{core}: stopped before its budget; nothing recorded")
        after = reach(tr.policy, cfg, seed=10_000 + a.seed)
        stats = fresh_episodes(tr.policy, cfg, 10_000 + a.seed, 100)
        curve = returns_curve(tr.history)
        tenth = max(1, len(curve) // 10)
        row = {
            "core": core,
            "seed": a.seed,
            "budget": a.steps,
            "overrides": over,
            "eval_return": float(np.mean(stats.episode_returns)),
            "last10": float(np.mean([v for _, v in curve[-tenth:]])),
            "reach_before": before,
            "reach_after": after,
            **{k.split("/")[1]: median_of(tr.history, k) for k in KEYS},
            "memory_curve": [{"step": h["step"], **{k: h.get(k) for k in KEYS}} for h in tr.history],
            "curve": curve,
        }
        show = {k: v for k, v in row.items() if "curve" not in k and "reach" not in k}
        show.update({f"reach_{w}@{k}": f"{row[f'reach_{w}'][k]:.2e}" for w in ("before", "after") for k in LAGS})
        print(show, flush=True)
        save(a.name, [*load(a.name, []), row])


if __name__ == "__main__":
    main()
