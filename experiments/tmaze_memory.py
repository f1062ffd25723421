"""Issue 13 experiment: the passive T-maze with corridors of L = 64 and 128 steps at bptt_horizon 64, 2M
agent-steps per run, seeds 1-5 (fixed before any tuning), for a ladder of settings; each final policy's success
rate on 300 fresh episodes (`carrystate.evaluate`, as `carrystate eval`), and its learning curve.

    python experiments/tmaze_memory.py [--steps 2000000] [--seeds 1 2 3 4 5] [--lengths 64 128]
                                       [--settings baseline ...] [--resume]
"""

from __future__ import annotations

import argparse

from common import load, save, train

BASE = [
    "env.num_envs=32",
    "trainer.batch_size=8192",
    "trainer.bptt_horizon=64",
    "trainer.minibatch_size=2048",
    "trainer.gamma=0.995",
    "diagnostics.staleness_segments=0",
]
SETTINGS = {
    "before issue 13": ["trainer.norm_reward=false", "policy.obs_norm=false"],  # the defaults until issue 13
    "defaults": [],  # rewards scaled by the return's running std, observations normalised
    "forget_bias+episode_gradients": ["policy.forget_bias=1.0", "trainer.gradient_horizon=episode"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--resume", action="store_true", help="keep the rows already saved and run only missing cells")
    a = p.parse_args()
    rows = load("tmaze_memory", []) if a.resume else []
    done = {(r["setting"], r["length"], r["seed"]) for r in rows if r["steps"] >= a.steps}
    for setting in a.settings:
        for L in a.lengths:
            for seed in a.seeds:
                if (setting, L, seed) in done:
                    continue
                over = [
                    f"env.tmaze.length_min={L}",
                    f"env.tmaze.length_max={L}",
                    f"trainer.seed={seed}",
                    f"trainer.total_timesteps={a.steps}",
                ]
                r = train(None, BASE + SETTINGS[setting] + over)
                r.pop("trainer")
                curve = [(h["step"], h["charts/success_rate"]) for h in r["history"] if "charts/success_rate" in h]
                row = {
                    "setting": setting,
                    "overrides": SETTINGS[setting],
                    "length": L,
                    "seed": seed,
                    "eval_success": r["eval_success"],
                    "steps": r["steps"],
                    "wall_s": r["wall_s"],
                    "sps": r["sps"],
                    "curve": curve,
                }
                print({k: v for k, v in row.items() if k != "curve"}, flush=True)
                rows.append(row)
                save("tmaze_memory", rows)


if __name__ == "__main__":
    main()
