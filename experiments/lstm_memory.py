"""Issue 27 experiment: does the LSTM learn the memory tasks the GRU learns, and what makes it? Each task is a
shipped config at its budget; each setting is a list of overrides on top of it (one change at a time against
the task's `baseline`). Every run's final policy is scored on fresh episodes (`carrystate.evaluate`, as
`carrystate eval`), and its learning curve kept; `python experiments/report.py` tabulates them in EXPERIMENTS.md.

    python experiments/lstm_memory.py TASK [--settings NAME ...] [--seeds 1 2 3 4 5] [--steps N] [--name FILE]

Rows already in the results file (same task, setting, seed and budget) are skipped, so a stopped run resumes;
give processes that run side by side their own `--name`.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import load, returns_curve, save, train

# task: (config, overrides that pick the task, default budget, fresh episodes, score key)
TASKS = {
    "popgym_first": (
        "configs/popgym.yaml",
        ["env.popgym.id=RepeatFirstMedium", "policy.chrono_tmax=0"],
        5_000_000,
        100,
        "eval_return",
    ),
    "minigrid": ("configs/minigrid_memory.yaml", [], 3_000_000, 300, "eval_success"),
    # the config without its own LSTM initialisation: each setting brings its own
    "tmaze128": (
        "configs/tmaze_long.yaml",
        ["policy.forget_bias=0", "policy.chrono_tmax=0"],
        2_000_000,
        300,
        "eval_success",
    ),
    # item 3: shorter and longer corridors of the same config (gradient reach: --set trainer.gradient_horizon=64)
    **{
        f"tmaze{L}": (
            "configs/tmaze_long.yaml",
            ["policy.forget_bias=0", "policy.chrono_tmax=0", f"env.tmaze.length_min={L}", f"env.tmaze.length_max={L}"],
            2_000_000,
            300,
            "eval_success",
        )
        for L in (96, 192)
    },
    "tmaze256": (
        "configs/tmaze_long.yaml",
        # experiments/long_reach.py's settings: 1,024 steps per agent per rollout, so an episode fits in one
        [
            "policy.forget_bias=0",
            "policy.chrono_tmax=0",
            "env.tmaze.length_min=256",
            "env.tmaze.length_max=256",
            "trainer.batch_size=32768",
            "trainer.minibatch_size=8192",
            "trainer.learning_rate=0.001",
            "trainer.gamma=0.999",
        ],
        5_000_000,
        300,
        "eval_success",
    ),
    "cartpole": ("configs/cartpole_novel.yaml", [], 100_000, 100, "eval_return"),
}
LSTM = ["policy.core=lstm"]
SETTINGS = {
    "lstm": LSTM,  # every bias 0, recurrent weights orthogonal as one [4H, H] matrix
    "lstm_chrono128": [*LSTM, "policy.chrono_tmax=128"],
    "lstm_chrono64": [*LSTM, "policy.chrono_tmax=64"],
    "lstm_chrono32": [*LSTM, "policy.chrono_tmax=32"],
    "lstm_chrono128_forget_only": [*LSTM, "policy.chrono_tmax=128", "policy.chrono_input=false"],
    "lstm_chrono128_log": [*LSTM, "policy.chrono_tmax=128", "policy.chrono_spread=log"],
    "lstm_chrono512": [*LSTM, "policy.chrono_tmax=512"],
    "lstm_forget1": [*LSTM, "policy.forget_bias=1.0"],
    "gru": ["policy.core=gru"],
    # a layer-normalised LSTM cell, as a user's core (experiments/ln_lstm.py): zero biases, then chrono gates
    "ln_lstm": ["policy.core=ln_lstm:LayerNormLSTM"],
    "ln_lstm_chrono128": ["policy.core=ln_lstm:LayerNormLSTM", "policy.core_options.chrono_tmax=128"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=list(TASKS))
    p.add_argument("--settings", nargs="+", default=["lstm_chrono128"], choices=list(SETTINGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--steps", type=int, default=None, help="agent-steps (default: the task's budget)")
    p.add_argument("--name", default="lstm_memory", help="results file under experiments/results")
    p.add_argument("--set", nargs="*", default=[], help="further overrides, recorded with each row")
    a = p.parse_args()
    config, task_over, budget, episodes, score = TASKS[a.task]
    steps = a.steps or budget
    for setting in a.settings:
        for seed in a.seeds:
            rows = load(a.name, [])
            key = (a.task, setting, seed, steps, a.set)
            if any((r["task"], r["setting"], r["seed"], r["budget"], r["extra"]) == key for r in rows):
                continue
            over = [*task_over, *SETTINGS[setting], *a.set, f"trainer.seed={seed}", f"trainer.total_timesteps={steps}"]
            r = train(config, [*over, "diagnostics.staleness_segments=0"], episodes=episodes)
            if r.pop("trainer").summary.interrupted:  # a stop signal ended the run early: record nothing
                raise SystemExit(f"{a.task} {setting} seed {seed}: stopped before its budget; nothing recorded")
            curve = returns_curve(r["history"])
            success = [(h["step"], h["charts/success_rate"]) for h in r["history"] if "charts/success_rate" in h]
            tenth = max(1, len(curve) // 10)
            row = {
                "task": a.task,
                "setting": setting,
                "extra": a.set,
                "seed": seed,
                "budget": steps,
                "overrides": over,
                "score": r[score],
                "score_kind": score,
                "eval_return": r["eval_return"],
                "eval_success": r["eval_success"],
                "last10": float(np.mean([v for _, v in curve[-tenth:]])) if curve else None,
                "steps": r["steps"],
                "wall_s": r["wall_s"],
                "sps": r["sps"],
                "curve": curve,
                "success_curve": success,
            }
            print({k: v for k, v in row.items() if "curve" not in k}, flush=True)
            save(a.name, [*load(a.name, []), row])


if __name__ == "__main__":
    main()
