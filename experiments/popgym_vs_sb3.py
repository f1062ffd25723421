"""Issue 5 experiment: POPGym memory tasks, carrystate against sb3-contrib RecurrentPPO at equal settings (one
LSTM of 128 units shared by actor and critic, 64-unit layers, 64 envs x 64 steps per batch, minibatch 1024,
4 epochs, lr 1e-3, ent 0.01), the same step budget, on this machine. Scored as POPGym scores: the maximum over
training of the mean episodic return per batch (MMER), mean +- std over seeds. Both see the previous action:
carrystate through its adapter (configs/popgym.yaml holds its settings), sb3 through POPGym's own
PreviousAction + Flatten wrappers, with the settings read from the same file. That file has used a GRU (issue 13)
and, since issue 27, an LSTM with chrono-initialised gates; the 1M comparison in EXPERIMENTS.md was measured with
the LSTM with zero biases, as sb3-contrib's starts (`--set policy.chrono_tmax=0` for equal networks).

    python experiments/popgym_vs_sb3.py [--steps 1000000] [--seeds 1 2 3] [--envs ...] [--trainers carrystate sb3]
        [--name NAME] [--config configs/popgym.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import ROOT, load, returns_curve, save, sb3_batch_returns, train

import carrystate

ENVS = ("RepeatPreviousEasy", "RepeatPreviousMedium", "RepeatFirstMedium", "PositionOnlyCartPoleEasy")
CONFIG = "configs/popgym.yaml"


def carrystate_run(env_id: str, steps: int, seed: int, overrides: list[str] = (), config: str = CONFIG) -> dict:
    r = train(
        config,
        [
            f"env.popgym.id={env_id}",
            f"trainer.total_timesteps={steps}",
            f"trainer.seed={seed}",
            "diagnostics.staleness_segments=0",
            *overrides,
        ],
        episodes=100,
    )
    return {
        "steps": r["steps"],
        "wall_s": r["wall_s"],
        "sps": r["sps"],
        "curve": returns_curve(r["history"]),
        "eval": r["eval_return"],  # the final policy on 100 fresh episodes (carrystate.evaluate, as `carrystate eval`)
    }


def random_run(env_id: str, steps: int, seed: int) -> dict:
    """Uniformly random actions, batched like the carrystate runs: the MMER a policy gets for nothing (a
    maximum over hundreds of noisy batch means lies above the random policy's mean return)."""
    from carrystate.envs import make_env

    cfg = carrystate.load_config(ROOT / CONFIG, [f"env.popgym.id={env_id}"])
    env = make_env(cfg.env, seed=seed)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    per_batch = cfg.trainer.batch_size // env.num_agents
    curve, done, t0 = [], 0, time.perf_counter()
    while done < steps:
        returns = []
        for _ in range(per_batch):
            returns += env.step(rng.integers(0, env.single_action_space.n, env.num_agents)).episode_returns
        done += per_batch * env.num_agents
        if returns:
            curve.append((done, float(np.mean(returns))))
    wall = time.perf_counter() - t0
    return {"steps": done, "wall_s": wall, "sps": done / wall, "curve": curve}


def sb3_run(env_id: str, steps: int, seed: int) -> dict:
    import popgym.envs
    from popgym.wrappers import Flatten, PreviousAction
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    cfg = carrystate.load_config(ROOT / CONFIG)
    t, n_envs = cfg.trainer, cfg.env.num_envs
    cls = next(c for c in popgym.envs.ALL if c.__name__ == env_id)
    torch.set_num_threads(1)
    venv = make_vec_env(lambda: Flatten(PreviousAction(cls())), n_envs=n_envs, seed=seed)

    cb = sb3_batch_returns()
    model = RecurrentPPO(
        "MlpLstmPolicy",
        venv,
        n_steps=t.batch_size // n_envs,
        batch_size=t.minibatch_size,
        n_epochs=t.update_epochs,
        learning_rate=t.learning_rate,
        ent_coef=t.ent_coef,
        gamma=t.gamma,
        gae_lambda=t.gae_lambda,
        clip_range=t.clip_coef,
        vf_coef=t.vf_coef,
        max_grad_norm=t.max_grad_norm,
        seed=seed,
        device="cpu",
        policy_kwargs=dict(
            lstm_hidden_size=cfg.policy.hidden_size,
            shared_lstm=True,
            enable_critic_lstm=False,
            net_arch=dict(pi=cfg.policy.encoder_sizes, vf=cfg.policy.encoder_sizes),
        ),
    )
    t0 = time.perf_counter()
    model.learn(steps, callback=cb)
    wall = time.perf_counter() - t0
    return {"steps": model.num_timesteps, "wall_s": wall, "sps": model.num_timesteps / wall, "curve": cb.curve}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument(
        "--trainers", nargs="+", default=["carrystate", "sb3", "random"], choices=["carrystate", "sb3", "random"]
    )
    p.add_argument("--name", default="popgym_vs_sb3", help="results file (rows are appended to it)")
    p.add_argument("--config", default=CONFIG, help=f"carrystate's config (sb3 and random read {CONFIG})")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for carrystate on top of --config")
    a = p.parse_args()
    rows = load(a.name, [])
    for env_id in a.envs:
        for seed in a.seeds:
            for trainer in a.trainers:
                if trainer == "carrystate":
                    out = carrystate_run(env_id, a.steps, seed, a.set, a.config)
                else:
                    out = {"sb3": sb3_run, "random": random_run}[trainer](env_id, a.steps, seed)
                row = {
                    "env": env_id,
                    "trainer": trainer,
                    "seed": seed,
                    "budget": a.steps,
                    "config": a.config if trainer == "carrystate" else CONFIG,
                    "overrides": a.set if trainer == "carrystate" else [],
                    "mmer": max((r for _, r in out["curve"]), default=float("nan")),
                    **out,
                }
                rows = [
                    r
                    for r in rows
                    if (r["env"], r["trainer"], r["seed"], r["budget"]) != (env_id, trainer, seed, a.steps)
                ]
                rows.append(row)
                print(
                    {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "curve"},
                    flush=True,
                )
                save(a.name, rows)


if __name__ == "__main__":
    main()
