"""End-to-end benchmark: agent-steps per second of whole training, against sb3-contrib RecurrentPPO at
equal settings (envs, rollout length, minibatch, epochs, LSTM width), and against the floor.

The floor is the time training cannot go below with this network on this machine: stepping the envs
for one rollout, one forward per rollout step (the faster of a fused nn.LSTM call and the policy's own
step), and a fused forward+backward (ignoring resets) plus an optimizer step per minibatch of every epoch.
The trainer's time over the floor is its overhead; both are timed in alternation, round by round, because
this machine's speed drifts by tens of percent over minutes.

    python -m benchmarks.end_to_end --json out.json      # from the checkout root
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import gymnasium as gym
import numpy as np
import torch

import carrystate
from carrystate.envs import make_env
from carrystate.envs.memory import TMaze
from carrystate.optim import make_optimizer

TASKS = {
    "tmaze": ["env.name=tmaze"],
    "cartpole_novel": ["env.name=gymnasium", "env.gymnasium.id=CartPole-v1", "env.gymnasium.hide_velocity=true"],
}
COMMON = [
    "env.num_envs=64",
    "trainer.batch_size=8192",
    "trainer.bptt_horizon=64",
    "trainer.minibatch_size=2048",
    "trainer.update_epochs=4",
    "policy.hidden_size=64",
    "policy.encoder_sizes=[64]",
    "trainer.learning_rate=0.001",
]


class TMazeGym(gym.Env):
    """The built-in T-maze as a single gymnasium env (for sb3, which steps gym.Env copies)."""

    def __init__(self):
        self.inner = TMaze(1)
        self.observation_space = self.inner.single_observation_space
        self.action_space = self.inner.single_action_space

    def reset(self, seed=None, options=None):
        return self.inner.reset(seed=seed)[0], {}

    def step(self, action):
        r = self.inner.step(np.array([action]))
        return r.final_obs[0] if r.terminated[0] else r.obs[0], float(r.reward[0]), bool(r.terminated[0]), False, {}


def make_trainer(task: str, extra: list[str] = ()) -> carrystate.Trainer:
    cfg = carrystate.load_config(None, COMMON + TASKS[task] + list(extra) + ["trainer.total_timesteps=1000000000"])
    return carrystate.Trainer(cfg, quiet=True)


def carrystate_sps(tr: carrystate.Trainer, iterations: int) -> dict:
    """Agent-steps per second over `iterations` whole iterations, after one warm-up iteration."""
    tr.train(stop_after=1)
    t0, steps = time.perf_counter(), tr.global_step
    tr.train(stop_after=iterations)
    wall = time.perf_counter() - t0
    return {"sps": (tr.global_step - steps) / wall, "seconds_per_iteration": wall / iterations}


def floor_parts(tr: carrystate.Trainer) -> dict:
    """The floor's parts as functions: env stepping for one rollout, one forward per rollout step, and a fused
    forward+backward (ignoring resets) plus an optimizer step per minibatch of every epoch. The forward is the
    faster of nn.LSTM with T=1 (one fused call) and the policy's own step, which the rollout uses. The parts
    run a copy of the trainer's policy with an optimizer of its own, so their steps are not training."""
    cfg = tr.cfg
    env = make_env(cfg.env, seed=5)
    env.reset()
    n, steps = env.num_agents, tr.buffer.steps
    space = env.single_action_space
    acts = [np.random.default_rng(0).integers(0, space.n, size=n) for _ in range(steps)]
    policy = copy.deepcopy(tr.policy)
    core, optimizer = policy.core, make_optimizer(policy, cfg.trainer)
    obs = torch.zeros(n, *env.single_observation_space.shape)
    b, t = tr.buffer, cfg.trainer
    mb = t.minibatch_size // t.bptt_horizon

    def env_part():
        for a in acts:
            env.step(a)

    @torch.no_grad()
    def forward_fused():  # nn.LSTM with T=1
        state = policy.initial_state(n)
        for _ in range(steps):
            y, state = core.fused(policy.encoder(obs).unsqueeze(1), state)
            policy.actor(y), policy.critic(y)

    @torch.no_grad()
    def forward_step():  # the rollout's own step where it is faster (the C++ step on the CPU)
        state = policy.initial_state(n)
        for _ in range(steps):
            _, _, state = policy.step(obs, state)

    def learn_part():
        for _ in range(t.update_epochs):
            for idx in b.minibatch_plan(mb, torch.Generator().manual_seed(0)):
                y, _ = core.fused(policy.encoder(b.obs[idx]), tuple(s[:, idx] for s in b.start_state))
                loss = policy.actor(y).sum() + policy.critic(y).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    return {"env": env_part, "forward_fused": forward_fused, "forward_step": forward_step, "learn": learn_part}


def over_floor(trainers: dict[str, carrystate.Trainer], rounds: int = 10) -> dict:
    """Each trainer's seconds per iteration against the floor, measured in alternation: every round runs one
    iteration of each trainer, then each floor part once, so that both sides see the same machine (its
    speed drifts by 10-30% over minutes here). Returns the medians over rounds, and each ratio of medians."""
    parts = floor_parts(next(iter(trainers.values())))
    times: dict[str, list[float]] = {k: [] for k in [*trainers, *parts]}
    for _ in range(rounds):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train(stop_after=1)
            times[name].append(time.perf_counter() - t0)
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    floor = {"env": med["env"], "forward": min(med["forward_fused"], med["forward_step"]), "learn": med["learn"]}
    floor["total"] = sum(floor.values())
    return {
        "floor": floor,
        "seconds_per_iteration": {k: med[k] for k in trainers},
        "over_floor": {k: med[k] / floor["total"] for k in trainers},
        "rounds": rounds,
    }


def sb3_sps(task: str, iterations: int) -> dict | None:
    try:
        from sb3_contrib import RecurrentPPO
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        return None
    from carrystate.envs.gym_adapter import HideVelocity

    if task == "tmaze":
        venv = make_vec_env(TMazeGym, n_envs=64)
    else:
        venv = make_vec_env(lambda: HideVelocity(gym.make("CartPole-v1"), "CartPole-v1"), n_envs=64)
    model = RecurrentPPO(
        "MlpLstmPolicy",
        venv,
        n_steps=128,
        batch_size=2048,
        n_epochs=4,
        learning_rate=1e-3,
        policy_kwargs=dict(lstm_hidden_size=64, net_arch=[64], shared_lstm=True, enable_critic_lstm=False),
        device="cpu",
        seed=1,
    )
    model.learn(8192)  # warm-up iteration
    t0 = time.perf_counter()
    model.learn(8192 * iterations, reset_num_timesteps=False)
    wall = time.perf_counter() - t0
    return {"sps": 8192 * iterations / wall, "seconds_per_iteration": wall / iterations}


def run_all(iterations: int = 5, sb3_iterations: int = 2, rounds: int = 10) -> dict:
    results = {}
    for task in TASKS:
        torch.set_num_threads(1)
        tr = make_trainer(task)
        ours = carrystate_sps(tr, iterations)
        # the default staleness diagnostic (a policy copy and 16 segment replays per iteration) is a
        # measurement, not training: the trainer's time without it, against the same floor
        bare = make_trainer(task, ["diagnostics.staleness_segments=0"])
        bare.train(stop_after=1)
        fl = over_floor({"default": tr, "without_diagnostics": bare}, rounds)
        ours["floor_seconds_per_iteration"] = fl["floor"]
        ours["floor_rounds"] = fl["rounds"]
        ours["seconds_per_iteration_beside_floor"] = fl["seconds_per_iteration"]["default"]
        ours["over_floor"] = fl["over_floor"]["default"]
        ours["over_floor_without_diagnostics"] = fl["over_floor"]["without_diagnostics"]
        torch.set_num_threads(1)
        theirs = sb3_sps(task, sb3_iterations)
        results[task] = {
            "carrystate": ours,
            "sb3_recurrent_ppo": theirs,
            "speedup": ours["sps"] / theirs["sps"] if theirs else None,
        }
        print(task, json.dumps(results[task]), flush=True)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations of 8192 agent-steps each")
    p.add_argument("--sb3-iterations", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds of trainer iterations and floor parts")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    results = run_all(a.iterations, a.sb3_iterations, a.rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
