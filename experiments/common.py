"""Shared helpers for experiments: run a config, score it, save JSON, and a run-many-seeds loop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import carrystate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def train(config: str | None, overrides: list[str], episodes: int = 300) -> dict:
    """Train, then evaluate the final policy on fresh episodes; returns history, score and timing."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tr = carrystate.train(ROOT / config if config else None, overrides)
    wall = time.perf_counter() - t0
    stats = fresh_episodes(tr.policy, tr.cfg, 10_000 + tr.cfg.trainer.seed, episodes)
    return {
        "overrides": overrides,
        "config": config,
        "steps": tr.summary.global_step,
        "wall_s": wall,
        "sps": tr.summary.sps,
        "eval_return": float(np.mean(stats.episode_returns)),
        "eval_success": float(np.mean(stats.success)) if stats.success else None,
        "history": tr.history,
        "trainer": tr,
    }


def train_chunk(tr, iterations: int) -> None:
    """`iterations` more iterations of `tr`; exits the experiment if none ran (a SIGINT/SIGTERM asked the trainer to
    stop, after which `train` returns at once, and a `while` loop over chunks would spin)."""
    before = tr.iteration
    tr.train(stop_after=iterations)
    if tr.iteration == before and before < tr.num_iterations:
        raise SystemExit(f"stopped at iteration {before} of {tr.num_iterations}")


def fresh_episodes(policy, cfg, seed: int, episodes: int):
    """`policy` run on `episodes` fresh episodes of `cfg`'s env, seeded `seed`."""
    return carrystate.evaluate(policy, cfg, episodes, seed=seed)


def load(name: str, default=None):
    """The rows saved under `name` by `save`, or `default` if there are none yet."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else default


def save(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=float))
    return path


def median_of(history: list[dict], key: str) -> float:
    """Median over iterations of a logged scalar (robust to the first iterations' transients)."""
    vals = [h[key] for h in history if key in h]
    return float(np.median(vals)) if vals else float("nan")


def sb3_batch_returns():
    """An sb3 callback whose `curve` lists (agent-steps, mean return of the episodes that ended in that rollout
    batch) after every rollout: the same measure as carrystate's `charts/episodic_return` history."""
    from stable_baselines3.common.callbacks import BaseCallback

    class BatchReturns(BaseCallback):
        def _on_training_start(self):
            self.curve, self.batch = [], []

        def _on_step(self):
            self.batch += [float(i["episode"]["r"]) for i in self.locals["infos"] if "episode" in i]
            return True

        def _on_rollout_end(self):
            if self.batch:
                self.curve.append((self.num_timesteps, float(np.mean(self.batch))))
            self.batch = []

    return BatchReturns()


def returns_curve(history: list[dict]) -> list[tuple[int, float]]:
    """(agent-steps, mean episodic return of the batch) for every carrystate iteration where episodes ended."""
    return [(h["step"], h["charts/episodic_return"]) for h in history if "charts/episodic_return" in h]
