"""MettaGrid benchmark: agent-steps per second of whole training on the arena of `configs/mettagrid_arena.yaml`
(24 agents per map) at 4 and 8 maps, 1 and 2 epochs, with where the time goes and two floors, beside
PufferLib 3 on the same settings when it is installed.

Per setting, in alternating rounds (this machine's speed drifts by tens of percent over minutes): carrystate
trains for whole iterations, then (when available) PufferLib trains for about as long in its own process,
then each floor part runs once. Reported:
- agent-steps/s of both trainers (agent-steps of the timed iterations over their wall time; medians over
  rounds) and their ratio;
- the time split of a carrystate iteration: env (waiting for the env), encoder and core (their share of the
  rollout's policy time, timed alone at rollout shapes), learner, and glue (the rest: sampling, buffer and
  state-store writes, bookkeeping);
- floors: env stepping alone (the config's env, random actions) and env stepping plus one policy forward per
  step, per 1,000 agent-steps;
- the token encoder's forward+backward on a minibatch against the MLP encoder's on the same observations;
- the bf16 rows: carrystate at `trainer.precision=bf16` (its own trainer, in the same rounds) beside PufferLib at
  `precision=bfloat16`, with the ratios to both PufferLib precisions and the rollout and learner seconds of each
  carrystate precision.

PufferLib runs in a separate interpreter (`--pufferlib-python`, default: this one if it imports pufferlib),
through `benchmarks/pufferlib_mettagrid.py`; how to install it on a CPU-only machine is in BENCHMARKS.md.

    python -m benchmarks.mettagrid --json out.json [--rounds 3] [--pufferlib-python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import carrystate
from carrystate.envs import make_env
from carrystate.policy.encoders import MLPEncoder

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mettagrid_arena.yaml"
AGENTS = 24
SETTINGS = [(4, 1), (8, 1), (4, 2), (8, 2)]  # (maps, update epochs), as in issue 16's table
PRECISIONS = ("fp32", "bf16")  # trainer.precision of the two trainers, each beside PufferLib at the same
SPLIT = {"env": "perf/env_seconds", "policy": "perf/policy_seconds", "learner": "perf/learn_seconds"}


def overrides(maps: int, epochs: int) -> list[str]:
    return [
        f"env.num_envs={maps}",
        f"trainer.batch_size={maps * AGENTS * 256}",
        f"trainer.update_epochs={epochs}",
        "trainer.total_timesteps=1000000000",
        "diagnostics.staleness_segments=0",
        "trainer.precision=fp32",  # the fp32 rows whatever the config ships; the bf16 rows set bf16
    ]


def pufferlib_python(requested: str | None) -> str | None:
    """The interpreter that runs PufferLib: `requested`, else this one if it imports pufferlib, else none."""
    if requested:
        return requested
    try:
        import pufferlib.pufferl  # noqa: F401
    except Exception:  # noqa: BLE001 - PufferLib is optional
        return None
    return sys.executable


def pufferlib_round(python: str, maps: int, epochs: int, seconds: float, precision: str = "fp32") -> dict:
    """One PufferLib training run of about `seconds` after its warm-up, in its own process, at its `precision`
    (float32, or bfloat16 autocast) for carrystate's fp32 or bf16."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "puffer.json"
        cmd = [python, str(ROOT / "benchmarks" / "pufferlib_mettagrid.py"), "--maps", str(maps)]
        cmd += ["--epochs", str(epochs), "--seconds", str(seconds), "--json", str(out)]
        cmd += ["--precision", {"fp32": "float32", "bf16": "bfloat16"}[precision]]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600 + 4 * seconds)
        return json.loads(out.read_text())


def floor_parts(tr: carrystate.Trainer, steps: int) -> dict:
    """Env stepping alone, and env stepping with one policy forward per step, for `steps` steps of every
    agent; and the encoder's and the core's shares of a rollout step, timed alone at rollout shapes."""
    env = make_env(tr.cfg.env, seed=7)
    obs = np.array(env.reset(seed=7))
    n, space = env.num_agents, env.single_action_space
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, space.n, size=n) for _ in range(steps)]
    policy = tr.policy
    sample = torch.as_tensor(obs)

    def env_alone():
        for a in actions:
            env.step(a)

    @torch.no_grad()
    def env_forward():
        state, o = policy.initial_state(n), obs
        for a in actions:
            _, _, state = policy.step(torch.as_tensor(o), state)
            o = env.step(a).obs

    @torch.no_grad()
    def encoder():
        for _ in range(steps):
            policy.encoder(sample)

    @torch.no_grad()
    def core():
        x, state = policy.encoder(sample), policy.initial_state(n)
        for _ in range(steps):
            policy.core.step(x, state)

    return {"env": env_alone, "env_forward": env_forward, "encoder": encoder, "core": core, "_env": env}


def encoder_ratio(tr: carrystate.Trainer, repeats: int = 5) -> dict:
    """Forward+backward of one minibatch of observations through the token encoder and through an MLP encoder
    of the same widths on the same (flattened) observations."""
    cfg, buf = tr.cfg, tr.buffer
    rows = cfg.trainer.minibatch_size // cfg.trainer.bptt_horizon
    obs = buf.obs[:rows]  # [segments, horizon, tokens, 3] as stored (uint8)
    token = tr.policy.encoder
    mlp = MLPEncoder(tuple(obs.shape[2:]), cfg.policy.encoder_sizes)
    times = {}
    for name, enc in (("token", token), ("mlp", mlp)):
        params = list(enc.parameters())
        samples = []
        for _ in range(repeats + 1):
            for p in params:
                p.grad = None
            t0 = time.perf_counter()
            enc(obs).sum().backward()
            samples.append(time.perf_counter() - t0)
        times[name] = float(np.median(samples[1:]))
    for p in token.parameters():
        p.grad = None
    return {"token_seconds": times["token"], "mlp_seconds": times["mlp"], "ratio": times["token"] / times["mlp"]}


def trainer_round(tr: carrystate.Trainer, puffer: str | None, iterations: int, out: dict) -> None:
    """One round of one precision: `iterations` of carrystate (its seconds per iteration and the env, policy and
    learner seconds of each), then PufferLib at the same precision for about as long."""
    first, t0 = len(tr.history), time.perf_counter()
    tr.train(stop_after=iterations)
    wall = time.perf_counter() - t0
    out["seconds"].append(wall / iterations)
    for h in tr.history[first:]:
        for key, metric in SPLIT.items():
            out[key].append(h[metric])
    if puffer:
        t = tr.cfg.trainer
        out["pufferlib_sps"].append(
            pufferlib_round(puffer, tr.cfg.env.num_envs, t.update_epochs, wall, t.precision)["sps"]
        )


def bench_setting(maps: int, epochs: int, rounds: int, puffer: str | None, iterations: int = 2) -> dict:
    torch.set_num_threads(1)
    configs = {
        p: carrystate.load_config(CONFIG, [*overrides(maps, epochs), f"trainer.precision={p}"]) for p in PRECISIONS
    }
    trainers = {p: carrystate.Trainer(c, quiet=True) for p, c in configs.items()}
    for each in trainers.values():
        each.train(stop_after=1)  # warm-up
    tr, cfg = trainers["fp32"], trainers["fp32"].cfg
    runs = {p: {k: [] for k in ("seconds", *SPLIT, "pufferlib_sps")} for p in trainers}
    steps = cfg.trainer.batch_size // tr.env.num_agents
    parts = floor_parts(tr, steps)
    env = parts.pop("_env")
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(rounds):
        trainer_round(tr, puffer, iterations, runs["fp32"])
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        trainer_round(trainers["bf16"], puffer, iterations, runs["bf16"])
    env.close()
    trainers["bf16"].env.close()
    med = {k: float(np.median(v)) for k, v in times.items()}
    run, bf16 = ({k: float(np.median(v)) if v else None for k, v in runs[p].items()} for p in PRECISIONS)
    per_iteration, env_s, policy_s, learn_s = run["seconds"], run["env"], run["policy"], run["learner"]
    puffer_sps = runs["fp32"]["pufferlib_sps"]
    encoder_s, core_s = med["encoder"], med["core"]
    row = {
        "maps": maps,
        "agents": maps * AGENTS,
        "update_epochs": epochs,
        "batch_size": cfg.trainer.batch_size,
        "workers": cfg.env.workers,
        "double_buffer": cfg.env.double_buffer,
        "shared_workers": cfg.env.shared_workers,
        "rounds": rounds,
        "carrystate_sps": cfg.trainer.batch_size / per_iteration,
        "seconds_per_iteration": per_iteration,
        "split": {
            "env": env_s,
            "encoder": encoder_s,
            "core": core_s,
            "learner": learn_s,
            "glue": max(0.0, per_iteration - env_s - learn_s - encoder_s - core_s),
        },
        "floor_sps": {
            "env": cfg.trainer.batch_size / med["env"],
            "env_forward": cfg.trainer.batch_size / med["env_forward"],
        },
        "encoder_minibatch": encoder_ratio(tr),
        "pufferlib_sps": run["pufferlib_sps"],
        "pufferlib_rounds": puffer_sps,
    }
    row["ratio_to_pufferlib"] = row["carrystate_sps"] / row["pufferlib_sps"] if puffer_sps else None
    # trainer.precision=bf16 beside fp32 (the rows above) and PufferLib at bfloat16; rollout = the policy's time in it
    sps16, puffer16 = cfg.trainer.batch_size / bf16["seconds"], bf16["pufferlib_sps"]
    row["bf16"] = {
        "carrystate_sps": sps16,
        "over_fp32": sps16 / row["carrystate_sps"],
        "rollout_seconds": {"fp32": policy_s, "bf16": bf16["policy"]},
        "learner_seconds": {"fp32": learn_s, "bf16": bf16["learner"]},
        "pufferlib_sps": puffer16,
        "pufferlib_rounds": runs["bf16"]["pufferlib_sps"],
        "ratio_to_pufferlib_fp32": sps16 / row["pufferlib_sps"] if puffer_sps else None,
        "ratio_to_pufferlib_bf16": sps16 / puffer16 if puffer16 else None,
    }
    tr.env.close()
    print(json.dumps(row), flush=True)
    return row


# (env.workers, env.double_buffer, env.shared_workers)
LAYOUTS = [(0, False, False), (1, False, False), (2, False, False), (1, True, False), (2, True, False), (1, True, True)]


def bench_layouts(maps: int = 8, epochs: int = 1, rounds: int = 3, layouts=LAYOUTS) -> list[dict]:
    """Whole-training agent-steps/s for each way of stepping the env (in process, in 1 or 2 worker processes,
    with or without double buffering, the two batches on workers of their own or shared), one iteration of each
    per round, in alternation."""
    torch.set_num_threads(1)
    trainers = {}
    for workers, double, shared in layouts:
        layout = [f"env.workers={workers}", f"env.double_buffer={str(double).lower()}"]
        layout.append(f"env.shared_workers={str(shared).lower()}")
        cfg = carrystate.load_config(CONFIG, [*overrides(maps, epochs), *layout])
        trainers[(workers, double, shared)] = tr = carrystate.Trainer(cfg, quiet=True)
        tr.train(stop_after=1)  # warm-up
    times: dict[tuple, list[float]] = {k: [] for k in trainers}
    for _ in range(rounds):
        for key, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train(stop_after=1)
            times[key].append(time.perf_counter() - t0)
    rows = []
    for (workers, double, shared), tr in trainers.items():
        per_iteration = float(np.median(times[(workers, double, shared)]))
        rows.append(
            {
                "maps": maps,
                "update_epochs": epochs,
                "workers": workers,
                "double_buffer": double,
                "shared_workers": shared,
                "sps": tr.cfg.trainer.batch_size / per_iteration,
                "rounds": rounds,
            }
        )
        tr.env.close()
    print(json.dumps(rows), flush=True)
    return rows


def run_all(rounds: int = 3, puffer: str | None = None, settings=SETTINGS) -> dict:
    puffer = pufferlib_python(puffer)
    return {
        "layouts": bench_layouts(rounds=rounds),
        "settings": [bench_setting(m, e, rounds, puffer) for m, e in settings],
        "pufferlib_python": puffer,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    p.add_argument("--pufferlib-python", default=None, help="interpreter with PufferLib installed")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    out = run_all(a.rounds, a.pufferlib_python)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
