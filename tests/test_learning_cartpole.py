"""Learning check: the LSTM policy solves CartPole-v1 without velocity (a memory task) within 150k steps.

Slow (about 1-1.5 minutes on one CPU thread); excluded by default, run with `pytest -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carrystate.config import load_config
from carrystate.envs import make_env
from carrystate.rollout import evaluate
from carrystate.trainer import Trainer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cartpole_novel.yaml"
# A fixed training seed that passes, as the core issue allows ("on at least one fixed seed"). With the C++
# scan (on an AVX-512 CPU) seeds 1-8 gave 416, 487, 337, 109, 332, 486, 490, 311: the task is not solved on
# every seed at this budget, and EXPERIMENTS.md reports the spread. Rounding differs between unrolls and
# CPUs, and trajectories with it: seed 5 gave 500 with the torch-op loop and 332 with the C++ kernels.
SEED = 7
EVAL_SEED, EVAL_EPISODES = 10_000, 100


@pytest.mark.slow
def test_lstm_solves_cartpole_without_velocity_within_150k_steps():
    cfg = load_config(CONFIG, [f"trainer.seed={SEED}", "trainer.torch_threads=1"])
    assert cfg.env.gymnasium.hide_velocity and cfg.policy.core == "lstm"
    assert cfg.trainer.total_timesteps == 150_000
    trainer = Trainer(cfg, run_dir=None, quiet=True)
    summary = trainer.train()
    assert summary.global_step <= 150_000 + cfg.trainer.batch_size

    # Measure: mean undiscounted return of the policy as it stands after 150k agent-steps, over 100
    # fresh episodes (env seeds disjoint from training), sampling actions as in training. We do not
    # use Summary.mean_return (last 200 *training* episodes): at ~500 steps per episode those 200
    # episodes span ~70-100k steps, i.e. most of the learning phase, so it lags far behind the policy
    # (for the seed-2 run before the sampler change, ~250 while its final policy scored ~496).
    env = make_env(cfg.env, seed=EVAL_SEED)
    try:
        stats = evaluate(trainer.policy, env, EVAL_EPISODES, deterministic=False, seed=EVAL_SEED)
    finally:
        env.close()
    mean_return = float(np.mean(stats.episode_returns))
    assert len(stats.episode_returns) == EVAL_EPISODES
    assert mean_return >= 400, f"eval mean return {mean_return:.1f}; {summary.text()}"
