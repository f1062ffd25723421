"""Issue 5 experiment (partial): CartPole without velocity, carrystate against sb3-contrib RecurrentPPO with the
rl-baselines3-zoo hyperparameters for CartPoleNoVel-v1, same step budget, same machine; the final policy's
mean return on 100 fresh episodes, the learning curve (mean return of the episodes ending in each batch),
and wall time.

    python experiments/cartpole_vs_sb3.py [--steps 100000] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from common import returns_curve, save, sb3_batch_returns, train

from carrystate.envs.gym_adapter import HideVelocity


def sb3_run(steps: int, seed: int) -> dict:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    make = lambda: HideVelocity(gym.make("CartPole-v1"), "CartPole-v1")  # noqa: E731
    venv = VecNormalize(make_vec_env(make, n_envs=8, seed=seed), norm_reward=True)
    lin = lambda v: lambda f: f * v  # noqa: E731
    model = RecurrentPPO(
        "MlpLstmPolicy",
        venv,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=lin(1e-3),
        clip_range=lin(0.2),
        seed=seed,
        device="cpu",
        policy_kwargs=dict(
            ortho_init=False,
            activation_fn=torch.nn.ReLU,
            lstm_hidden_size=64,
            enable_critic_lstm=True,
            net_arch=dict(pi=[64], vf=[64]),
        ),
    )
    cb = sb3_batch_returns()
    t0 = time.perf_counter()
    model.learn(steps, callback=cb)
    wall = time.perf_counter() - t0
    venv.training, venv.norm_reward = False, False
    returns, state, obs = [], None, venv.reset()
    starts = np.ones(8, dtype=bool)
    ep = np.zeros(8)
    while len(returns) < 100:
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=False)
        obs, _, done, infos = venv.step(action)
        ep += venv.get_original_reward()
        for i in np.flatnonzero(done):
            returns.append(ep[i])
            ep[i] = 0
        starts = done
    return {"eval_return": float(np.mean(returns[:100])), "wall_s": wall, "sps": steps / wall, "curve": cb.curve}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        ours = train(
            "configs/cartpole_novel.yaml", [f"trainer.seed={seed}", f"trainer.total_timesteps={a.steps}"], episodes=100
        )
        ours.pop("trainer")
        rows.append(
            {
                "trainer": "carrystate",
                "seed": seed,
                "eval_return": ours["eval_return"],
                "wall_s": ours["wall_s"],
                "sps": ours["sps"],
                "steps": ours["steps"],
                "curve": returns_curve(ours["history"]),
            }
        )
        print(rows[-1], flush=True)
        save("cartpole_vs_sb3", rows)
        theirs = sb3_run(a.steps, seed)
        rows.append({"trainer": "sb3-contrib RecurrentPPO", "seed": seed, "steps": a.steps, **theirs})
        print(rows[-1], flush=True)
        save("cartpole_vs_sb3", rows)


if __name__ == "__main__":
    main()
