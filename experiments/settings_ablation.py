"""Issue 13 experiment: what each learning setting does, one change at a time, on seeds 1-5 (fixed before any
tuning). The default T-maze (configs/default.yaml, 400k agent-steps; score: success on 300 fresh episodes) and
CartPole without velocity (configs/cartpole_novel.yaml, 100k; score: mean return on 100 fresh episodes), each
evaluated with `carrystate.evaluate` as `carrystate eval` does. The chosen defaults and configs come from here.

    python experiments/settings_ablation.py [--tasks tmaze cartpole] [--seeds 1 2 3 4 5]
"""

from __future__ import annotations

import argparse

from common import save, train

TASKS = {
    "tmaze": (
        None,
        {
            "before issue 13 (no normalisation)": ["trainer.norm_reward=false", "policy.obs_norm=false"],
            "norm_reward": ["policy.obs_norm=false"],
            "norm_reward + obs_norm (the defaults)": [],
            "defaults + separate critic": ["policy.critic=separate"],
            "norm_reward + separate critic": ["policy.critic=separate", "policy.obs_norm=false"],
        },
    ),
    "cartpole": (
        "configs/cartpole_novel.yaml",
        {
            "the config (obs_norm, norm_reward, separate critic)": [],
            "without obs_norm": ["policy.obs_norm=false"],
            "without norm_reward": ["trainer.norm_reward=false"],
            "shared critic": ["policy.critic=shared"],
        },
    ),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    a = p.parse_args()
    rows = []
    for task in a.tasks:
        config, arms = TASKS[task]
        for arm, overrides in arms.items():
            for seed in a.seeds:
                r = train(
                    config,
                    overrides + [f"trainer.seed={seed}", "diagnostics.staleness_segments=0"],
                    episodes=300 if task == "tmaze" else 100,
                )
                r.pop("trainer")
                score = r["eval_success"] if task == "tmaze" else r["eval_return"]
                rows.append(
                    {
                        "task": task,
                        "setting": arm,
                        "overrides": overrides,
                        "seed": seed,
                        "score": score,
                        "steps": r["steps"],
                        "wall_s": r["wall_s"],
                    }
                )
                print(rows[-1], flush=True)
                save("settings_ablation", rows)


if __name__ == "__main__":
    main()
