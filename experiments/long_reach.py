"""Issue 4 experiment: T-maze with a 256-step corridor at bptt_horizon 64. Success rate with gradients cut
at every segment (gradient_horizon 64) against gradients through whole rollouts (`episode`), and the
learner's activation memory of one minibatch in each mode.

    python experiments/long_reach.py [--steps N] [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import runpy

from common import ROOT, load, save, train

peak_mib = runpy.run_path(str(ROOT / "benchmarks" / "memory.py"))["peak_mib"]  # learner memory, fresh process

BASE = [
    "env.tmaze.length_min=256",
    "env.tmaze.length_max=256",
    "env.num_envs=32",
    "trainer.batch_size=32768",
    "trainer.bptt_horizon=64",
    "trainer.minibatch_size=8192",
    "trainer.update_epochs=4",
    "policy.hidden_size=64",
    "trainer.learning_rate=0.001",
    "trainer.gamma=0.999",
    "diagnostics.staleness_segments=0",
]


def learner_memory(gradient_horizon: str) -> dict:
    """Peak MiB of one minibatch's forward+backward (8,192 steps, LSTM 64) in a fresh process: this run's
    learner, and for comparison plain backpropagation through the same 16-segment chains."""
    if gradient_horizon == "64":
        return {"learner_MiB": peak_mib({"mode": "full", "rows": 128, "segments": 1, "horizon": 64, "hidden": 64})}
    return {
        "learner_MiB": peak_mib({"mode": "chain", "rows": 8, "segments": 16, "horizon": 64, "hidden": 64}),
        "full_backprop_MiB": peak_mib({"mode": "full", "rows": 8, "segments": 16, "horizon": 64, "hidden": 64}),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--memory-only", action="store_true", help="re-measure memory into the saved results")
    a = p.parse_args()
    if a.memory_only:
        rows = load("long_reach")
        for row in rows:
            row.update(learner_memory(row["gradient_horizon"]))
        save("long_reach", rows)
        return
    rows = []
    for seed in a.seeds:
        for gh in ("64", "episode"):
            r = train(
                None,
                BASE + [f"trainer.gradient_horizon={gh}", f"trainer.total_timesteps={a.steps}", f"trainer.seed={seed}"],
                episodes=200,
            )
            r.pop("trainer")
            mem = learner_memory(gh)
            out = {
                "gradient_horizon": gh,
                "seed": seed,
                "eval_success": r["eval_success"],
                "steps": r["steps"],
                "wall_s": r["wall_s"],
                "sps": r["sps"],
                **mem,
                "curve": [(h["step"], h.get("charts/success_rate")) for h in r["history"]],
            }
            print({k: v for k, v in out.items() if k != "curve"}, flush=True)
            rows.append(out)
            save("long_reach", rows)


if __name__ == "__main__":
    main()
