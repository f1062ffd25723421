"""Learning with a fixed step budget: the LSTM solves the default T-maze, the memoryless control cannot."""

from __future__ import annotations

import numpy as np

from carrystate.config import load_config
from carrystate.envs import make_env
from carrystate.rollout import evaluate
from carrystate.trainer import Trainer

BUDGET = 400_000  # agent-steps, the default config's budget


def _train_and_score(core: str) -> float:
    cfg = load_config(None, [f"policy.core={core}", f"trainer.total_timesteps={BUDGET}", "trainer.seed=1"])
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    env = make_env(cfg.env, seed=999)  # fresh episodes the policy has not seen
    stats = evaluate(trainer.policy, env, episodes=500, seed=999)
    return float(np.mean(stats.success))


def test_lstm_solves_default_tmaze_while_memoryless_core_stays_at_chance():
    lstm = _train_and_score("lstm")
    none = _train_and_score("none")
    assert lstm >= 0.9, f"LSTM success {lstm:.3f} after {BUDGET} steps"
    assert 0.35 <= none <= 0.65, f"feed-forward success {none:.3f} should be near chance (0.5)"
