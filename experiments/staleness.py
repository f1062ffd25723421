"""Issue 4 experiment: how stale is carried state after an update, against learning rate and update_epochs,
on the default T-maze and CartPole without velocity; and do `refresh` or `burn_in` fix it where it is worst?

    python experiments/staleness.py          # ~15 min on 2 cores; writes experiments/results/staleness.json
"""

from __future__ import annotations

from common import median_of, save, train

KEYS = ["memory/state_distance", "memory/kl_first", "memory/kl_last", "memory/value_gap_first", "memory/value_gap_last"]
TASKS = {
    "tmaze": (None, ["trainer.total_timesteps=400000"]),  # the default task and budget
    # two 32-step rows per agent (batch 512), so every agent has a segment with a past in the rollout
    # seed 2: the config's seed when these results were recorded (the config now names seed 7)
    "cartpole_novel": (
        "configs/cartpole_novel.yaml",
        ["trainer.batch_size=512", "trainer.minibatch_size=256", "trainer.update_epochs=10", "trainer.seed=2"],
    ),
}


def row(task, label, extra):
    config, base = TASKS[task]
    r = train(config, base + extra + ["diagnostics.staleness_segments=32"])
    r.pop("trainer")
    out = {
        "task": task,
        "setting": label,
        "eval_return": r["eval_return"],
        "eval_success": r["eval_success"],
        "steps": r["steps"],
        "wall_s": r["wall_s"],
    }
    out.update({k.split("/")[1]: median_of(r["history"], k) for k in KEYS})
    out["curve"] = [
        {"step": h["step"], "return": h.get("charts/episodic_return"), **{k: h.get(k) for k in KEYS}}
        for h in r["history"]
    ]
    print({k: v for k, v in out.items() if k != "curve"}, flush=True)
    return out


def main():
    rows = []
    for task in TASKS:
        lr0 = 0.0025 if task == "tmaze" else 0.002
        for lr in (0.0003, 0.001, 0.003, 0.01):
            rows.append(row(task, f"lr={lr}", [f"trainer.learning_rate={lr}"]))
        for epochs in (1, 16):
            rows.append(
                row(task, f"epochs={epochs}", [f"trainer.update_epochs={epochs}", f"trainer.learning_rate={lr0}"])
            )
        worst = max((r for r in rows if r["task"] == task), key=lambda r: r["kl_first"])
        extra = (
            [f"trainer.learning_rate={worst['setting'].split('=')[1]}"]
            if worst["setting"].startswith("lr")
            else [f"trainer.update_epochs={worst['setting'].split('=')[1]}", f"trainer.learning_rate={lr0}"]
        )
        for fix in (["trainer.start_state=refresh"], ["trainer.burn_in=16"], ["trainer.start_state=zero"]):
            rows.append(row(task, f"{worst['setting']} + {fix[0].split('.')[1]}", extra + fix))
    save("staleness", rows)


if __name__ == "__main__":
    main()
