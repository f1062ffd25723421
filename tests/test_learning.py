"""Learning with a fixed step budget: the LSTM solves the default T-maze, the memoryless control cannot, and a
window core can exactly when the corridor fits in its window."""

from __future__ import annotations

import numpy as np

from carrystate.config import load_config
from carrystate.envs import make_env
from carrystate.trainer import Trainer
from carrystate.wiring import evaluate

BUDGET = 400_000  # agent-steps, the default config's budget


def _train_and_score(core: str, *overrides: str) -> float:
    cfg = load_config(None, [f"policy.core={core}", f"trainer.total_timesteps={BUDGET}", "trainer.seed=1", *overrides])
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


def test_window_core_solves_tmaze_whose_cue_lies_inside_its_window_and_not_outside():
    """The default T-maze's cue comes 8-24 steps before the junction: a window of 32 steps sees it there, a
    window of 4 never does (and is a memoryless policy for this task). Frames of 16 features keep it fast."""
    inside = _train_and_score("window", "policy.window=32", "policy.encoder_sizes=[16]")
    outside = _train_and_score("window", "policy.window=4", "policy.encoder_sizes=[16]")
    assert inside >= 0.9, f"window 32 success {inside:.3f} after {BUDGET} steps"
    assert 0.35 <= outside <= 0.65, f"window 4 success {outside:.3f} should be near chance (0.5)"


def test_continuous_actions_train_on_pendulum():
    """Box actions end to end: a short run on Pendulum-v1 (time limit = truncation) runs and improves nothing
    in particular, but every phase works with a Gaussian head and truncation bootstraps."""
    cfg = load_config(
        None,
        [
            "env.name=gymnasium",
            "env.gymnasium.id=Pendulum-v1",
            "env.num_envs=4",
            "trainer.batch_size=1024",
            "trainer.bptt_horizon=32",
            "trainer.minibatch_size=256",
            "trainer.total_timesteps=2048",
            "trainer.learning_rate=0.0003",
        ],
    )
    trainer = Trainer(cfg, quiet=True)
    summary = trainer.train()
    assert summary.global_step == 2048 and trainer.buffer.truncated.any()
    assert trainer.buffer.final_values[trainer.buffer.truncated].abs().min() > 0
