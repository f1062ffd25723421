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
from common import ROOT, fresh_episodes, load, save, train_chunk

import carrystate

KEYS = ("charts/success_rate", "charts/episodic_return", "charts/episodic_length", "charts/SPS")
EVAL_EPISODES = 300


def cue_split(tr, seed: int, episodes: int) -> dict:
    """Success on fresh episodes split by where the agent starts: beside the cue (x = 1, the cue in view at the
    first step; a quarter of starts) or further along (the cue behind it: it must turn round to see it). Run
    through `carrystate.load`'s Agent on the raw gymnasium env, its Dict observations as they come."""
    import gymnasium as gym

    from carrystate.agent import Agent

    env = gym.make("MiniGrid-MemoryS7-v0")
    agent = Agent(tr.policy, tr.cfg, tr.env.single_observation_space, env.action_space, seed=seed)
    wins = {True: [], False: []}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + episode)
        in_view = int(env.unwrapped.agent_pos[0]) == 1
        state, done, total = agent.initial_state(), False, 0.0
        while not done:
            action, state = agent.act(obs, state)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total, done = total + reward, terminated or truncated
        wins[in_view].append(total > 0)
    env.close()
    return {
        "success_cue_in_view": float(np.mean(wins[True])),
        "episodes_cue_in_view": len(wins[True]),
        "success_cue_behind": float(np.mean(wins[False])),
        "episodes_cue_behind": len(wins[False]),
    }


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
            train_chunk(tr, 20)
            row.update(
                steps=tr.global_step,
                wall_s=time.perf_counter() - t0,
                curve=[{"step": h["step"], **{k: h[k] for k in KEYS if k in h}} for h in tr.history],
            )
            save(name, rows)
            last = row["curve"][-1]
            print(seed, row["steps"], round(row["wall_s"]), {k: round(v, 3) for k, v in last.items()}, flush=True)
        stats = fresh_episodes(tr.policy, cfg, 10_000 + seed, EVAL_EPISODES)
        row.update(cue_split(tr, 20_000 + seed, EVAL_EPISODES))
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
