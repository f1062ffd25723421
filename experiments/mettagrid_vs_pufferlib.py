r"""Issue 27 item 4: carrystate and PufferLib 3 side by side on the MettaGrid arena, with a PufferLib driver check.

Each arm trains on the arena of `configs/mettagrid_arena.yaml` (8 maps of 25×25, 24 agents each: 192 agent rows,
49,152 agent-steps per rollout) and records, per rollout, the reward per agent-step: the total reward of the rollout
over its agent-steps, the same measure for both trainers (carrystate's `charts/reward_per_agent_step`; for PufferLib,
the raw rewards the env hands its trainer, summed in a wrapper round `vecenv.recv`, before PufferLib clips them).

    python experiments/mettagrid_vs_pufferlib.py ARM [--seeds 1 2 3] [--steps 5013504] [--name mettagrid_vs_pufferlib]

Arms:
- `carrystate`: `configs/mettagrid_arena.yaml` as shipped. `--import NAME ...` instead copies the curves of runs that
  `experiments/mettagrid_arena.py` already made (e.g. `mettagrid_arena_cpp mettagrid_arena_cpp_b`, or
  `mettagrid_arena_chrono`) and records which file each came from.
- `carrystate_mlp`: the same with `policy.encoder=mlp` (the flattened tokens through an MLP, as PufferLib's policy).
- `puffer_ours`: PufferLib 3's trainer (`pufferlib.pufferl.PuffeRL`) with mettagrid's PufferLib default policy
  (`PufferDefaultPolicy`, hidden 128: flattened tokens -> Linear + GELU -> LSTM 128) at carrystate's PPO settings.
- `puffer_metta`: the same trainer and policy with the recipe issue 27 quotes for PufferLib's Metta env
  (`METTA_RECIPE`); batch geometry as carrystate's, so both arms make 102 updates in 5M agent-steps.
- `puffer_cartpole`: the driver check: the same driver code on PufferLib's own native CartPole (`pufferlib.ocean`)
  with its shipped config (`config/default.ini` + `config/ocean/cartpole.ini`: Muon, lr 0.05, γ 0.95, 4,096 envs,
  262,144-step rollouts); the curve is the mean episode length of each rollout (200 is the cap).

The PufferLib arms need PufferLib 3 (`pufferlib-core` 3.0.23, see `benchmarks/pufferlib_mettagrid.py` for the CPU
install into /tmp/puffer/venv); this script re-runs itself under `--puffer-python` for them. `puffer_cartpole` also
needs PufferLib's CartPole binding, which `pufferlib-core` does not ship, and Muon (heavyball 1.7.2); from the
`pufferlib` 3.0.0 source archive on PyPI (it carries raylib):

    PY=/tmp/puffer/venv/bin/python && $PY -m pip install --no-deps heavyball==1.7.2
    SP=$($PY -c "import pufferlib,os;print(os.path.dirname(pufferlib.__file__))")
    NP=$($PY -c "import numpy;print(numpy.get_include())")
    INC=$($PY -c "import sysconfig;print(sysconfig.get_paths()['include'])")
    EXT=$($PY -c "import sysconfig;print(sysconfig.get_config_var('EXT_SUFFIX'))")
    cd pufferlib-3.0.0 && mkdir -p $SP/ocean/cartpole && touch $SP/ocean/__init__.py $SP/ocean/cartpole/__init__.py
    cp pufferlib/ocean/cartpole/cartpole.py $SP/ocean/cartpole/
    gcc -O2 -shared -fPIC pufferlib/ocean/cartpole/binding.c -I pufferlib/ocean -I raylib-5.5_linux_amd64/include \
      -I $NP -I $INC -o $SP/ocean/cartpole/binding$EXT raylib-5.5_linux_amd64/lib/libraylib.a -lm -lpthread -ldl

Rows go to experiments/results/NAME.json, one per (arm, source, seed, steps), saved when a run ends; rows already
there are skipped, so an interrupted sweep resumes by running the same command. One torch thread per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PUFFER_ARMS = ("puffer_ours", "puffer_metta", "puffer_cartpole")
ARMS = ("carrystate", "carrystate_mlp", *PUFFER_ARMS)
AGENTS, MAPS = 24, 8  # configs/mettagrid_arena.yaml: env.mettagrid.agents, env.num_envs

# carrystate's PPO settings (configs/mettagrid_arena.yaml and the trainer defaults it keeps), in PuffeRL's keys
OURS = dict(
    batch_size=MAPS * AGENTS * 256,  # 49,152: 256 steps per agent per rollout
    bptt_horizon=64,
    minibatch_size=6144,
    max_minibatch_size=6144,
    update_epochs=2,
    optimizer="adam",
    learning_rate=1e-3,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_eps=1e-5,
    anneal_lr=False,
    gamma=0.99,
    gae_lambda=0.95,
    clip_coef=0.2,
    vf_clip_coef=0.2,  # carrystate clips the value loss by clip_coef
    vf_coef=0.5,
    ent_coef=0.01,
    max_grad_norm=0.5,
    vtrace_rho_clip=1.0,  # PufferLib always runs V-trace; at 1.0/1.0 its first epoch is GAE
    vtrace_c_clip=1.0,
    prio_alpha=0.0,  # uniform minibatch segments with unit weights, as carrystate's shuffled pass
    prio_beta0=0.2,
)

# Issue 27's recipe for PufferLib's Metta env; the keys it does not name take PufferLib's config/default.ini values,
# except the batch geometry, which stays carrystate's.
METTA_RECIPE = dict(
    OURS,
    learning_rate=3e-4,
    anneal_lr=True,  # cosine over the run's updates
    clip_coef=0.1,
    ent_coef=0.0021,
    gamma=0.977,
    gae_lambda=0.916,
    vf_coef=0.44,
    vf_clip_coef=0.1,
    prio_alpha=0.0,
    update_epochs=1,  # default.ini
    max_grad_norm=1.5,  # default.ini
    adam_beta1=0.95,  # default.ini
    adam_eps=1e-12,  # default.ini
)

# config/default.ini [train] with config/ocean/cartpole.ini on top (device cpu; total_timesteps set by --steps)
CARTPOLE = dict(
    bptt_horizon=64,
    minibatch_size=32768,
    max_minibatch_size=32768,
    update_epochs=1,
    optimizer="muon",
    learning_rate=0.05,
    adam_beta1=0.95,
    adam_beta2=0.999,
    adam_eps=1e-12,
    anneal_lr=True,
    gamma=0.95,
    gae_lambda=0.90,
    clip_coef=0.2,
    vf_clip_coef=0.2,
    vf_coef=2.0,
    ent_coef=0.001,
    max_grad_norm=1.5,
    vtrace_rho_clip=1.0,
    vtrace_c_clip=1.0,
    prio_alpha=0.8,
    prio_beta0=0.2,
)
CARTPOLE_ENVS = 4096  # cartpole.ini [env] num_envs; batch_size auto = envs x bptt_horizon


def load_rows(name: str) -> list[dict]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def add_row(name: str, row: dict) -> None:
    """Append `row` to the results file (read again first: each run appends once, at its end)."""
    rows = load_rows(name) + [row]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1, default=float))


def has_row(name: str, arm: str, source: str, seed: int, steps: int) -> bool:
    return any(
        (r["arm"], r["source"], r["seed"], r["target_steps"]) == (arm, source, seed, steps) for r in load_rows(name)
    )


def last10(curve: list[dict], key: str = "reward_per_agent_step") -> float:
    """Mean of `key` over the last tenth of the rollouts (at least one)."""
    vals = [p[key] for p in curve]
    tail = vals[-max(1, len(vals) // 10) :]
    return sum(tail) / len(tail)


# ---- carrystate arms (main interpreter) ----


def run_carrystate(arm: str, seed: int, steps: int, chunk: int = 10) -> dict:
    sys.path.insert(0, str(HERE))
    import torch
    from common import train_chunk

    import carrystate

    torch.set_num_threads(1)
    overrides = [f"trainer.seed={seed}", f"trainer.total_timesteps={steps}", "diagnostics.staleness_segments=0"]
    overrides += ["policy.encoder=mlp"] if arm == "carrystate_mlp" else []
    cfg = carrystate.load_config(ROOT / "configs/mettagrid_arena.yaml", overrides)
    tr = carrystate.Trainer(cfg, quiet=True)
    t0 = time.perf_counter()
    while tr.iteration < tr.num_iterations:
        train_chunk(tr, chunk)
        print({"arm": arm, "seed": seed, "steps": tr.global_step, "s": round(time.perf_counter() - t0)}, flush=True)
    wall = time.perf_counter() - t0
    tr.env.close()
    curve = [{"step": h["step"], "reward_per_agent_step": h["charts/reward_per_agent_step"]} for h in tr.history]
    return {"overrides": overrides, "steps": tr.global_step, "wall_s": wall, "curve": curve}


def import_carrystate(names: list[str], steps: int, out: str) -> None:
    """Rows of `experiments/mettagrid_arena.py` runs (their `charts/reward_per_agent_step` curves) as `carrystate`."""
    for name in names:
        for r in load_rows(name):
            if r.get("steps") != steps or not r.get("curve") or has_row(out, "carrystate", name, r["seed"], steps):
                continue
            curve = [
                {"step": p["step"], "reward_per_agent_step": p["charts/reward_per_agent_step"]} for p in r["curve"]
            ]
            row = dict(arm="carrystate", source=name, seed=r["seed"], target_steps=steps, steps=r["steps"])
            row.update(overrides=r.get("overrides", []), wall_s=r["wall_s"], curve=curve, last10=last10(curve))
            add_row(out, row)
            print({k: v for k, v in row.items() if k != "curve"}, flush=True)


# ---- PufferLib arms (PufferLib's interpreter) ----


def puffer_config(settings: dict, seed: int, steps: int, data_dir: str) -> dict:
    """Every key PuffeRL reads."""
    return dict(
        settings,
        env="carrystate_comparison",
        device="cpu",
        seed=seed,
        torch_deterministic=False,
        cpu_offload=False,
        compile=False,
        compile_mode="default",
        compile_fullgraph=False,
        precision="float32",
        use_rnn=True,
        total_timesteps=steps,
        checkpoint_interval=10**9,
        data_dir=data_dir,
    )


def run_puffer(arm: str, seed: int, steps: int) -> dict:
    """PufferLib's own loop (`evaluate()` then `train()` until `total_timesteps`), measured per rollout."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import pufferlib
    import pufferlib.models
    import pufferlib.pufferl
    import pufferlib.vector

    pufferlib.pufferl.PuffeRL.print_dashboard = lambda self, *a, **k: None  # stdout holds our progress lines only
    torch.manual_seed(seed)
    np.random.seed(seed)
    if arm == "puffer_cartpole":
        from pufferlib.ocean.cartpole.cartpole import Cartpole

        vecenv = pufferlib.vector.make(
            Cartpole, backend=pufferlib.vector.Serial, num_envs=1, env_kwargs=dict(num_envs=CARTPOLE_ENVS), seed=seed
        )
        # config/ocean/cartpole.ini: policy_name Policy (pufferlib.models.Default), rnn_name Recurrent (LSTMWrapper)
        policy = pufferlib.models.LSTMWrapper(vecenv.driver_env, pufferlib.models.Default(vecenv.driver_env))
        settings = dict(CARTPOLE, batch_size=CARTPOLE_ENVS * CARTPOLE["bptt_horizon"])
    else:
        import logging

        from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
        from mettagrid.policy.policy_env_interface import PolicyEnvInterface
        from mettagrid.policy.puffer_default import PufferDefaultPolicy
        from mettagrid.simulator import Simulator

        from carrystate.envs.mettagrid_adapter import mettagrid_config

        def arena():  # env.mettagrid of configs/mettagrid_arena.yaml
            return mettagrid_config("arena", AGENTS, 25, 10, 10, 1000, 200)

        def make_env(buf=None, seed=0):
            logging.getLogger("mettagrid").setLevel(logging.WARNING)
            return MettaGridPufferEnv(Simulator(), arena(), buf=buf, seed=seed)

        vecenv = pufferlib.vector.make(make_env, backend=pufferlib.vector.Serial, num_envs=MAPS, seed=seed)
        policy = PufferDefaultPolicy(PolicyEnvInterface.from_mg_cfg(arena()), hidden_size=128).network()
        settings = OURS if arm == "puffer_ours" else METTA_RECIPE

    # Raw rewards and agent-steps of each rollout, counted where PuffeRL receives them.
    tally = {"reward": 0.0, "agent_steps": 0}
    recv = vecenv.recv

    def counted_recv():
        out = recv()
        tally["reward"] += float(np.sum(out[1]))
        tally["agent_steps"] += int(np.sum(out[7]))
        return out

    vecenv.recv = counted_recv
    data_dir = tempfile.mkdtemp(prefix="puffer_vs_", dir="/tmp")
    config = puffer_config(settings, seed, steps, data_dir)
    trainer = pufferlib.pufferl.PuffeRL(dict(config), vecenv, policy)
    curve, t0 = [], time.perf_counter()
    try:
        while trainer.global_step < steps:
            tally.update(reward=0.0, agent_steps=0)
            trainer.stats = defaultdict(list)
            stats = trainer.evaluate()
            point = {"step": trainer.global_step, "reward_per_agent_step": tally["reward"] / tally["agent_steps"]}
            if arm == "puffer_cartpole":  # the env logs its finished episodes' mean length
                point["episode_length"] = float(np.mean(stats["episode_length"])) if stats["episode_length"] else None
            trainer.train()
            point.update(
                {k: trainer.losses[k] for k in ("approx_kl", "entropy", "explained_variance") if k in trainer.losses}
            )
            curve.append(point)
            if len(curve) % 10 == 0 or trainer.global_step >= steps:
                print({"arm": arm, "seed": seed, "s": round(time.perf_counter() - t0), **point}, flush=True)
    finally:
        trainer.utilization.stop()
        vecenv.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    wall = time.perf_counter() - t0
    config = {k: v for k, v in config.items() if k not in ("data_dir", "env")}
    return {"settings": config, "steps": trainer.global_step, "wall_s": wall, "curve": curve,
            "pufferlib_version": pufferlib.__version__}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arm", choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=5_013_504, help="agent-steps per run (102 rollouts of 49,152)")
    p.add_argument("--name", default="mettagrid_vs_pufferlib", help="results file (experiments/results/NAME.json)")
    p.add_argument("--import", dest="imports", nargs="+", default=None, help="carrystate only: copy these runs")
    p.add_argument("--puffer-python", default="/tmp/puffer/venv/bin/python", help="interpreter with PufferLib 3")
    a = p.parse_args()

    if a.imports:
        if a.arm != "carrystate":
            raise SystemExit(f"--import copies carrystate runs; arm {a.arm!r} must be trained")
        import_carrystate(a.imports, a.steps, a.name)
        return
    if a.arm in PUFFER_ARMS:
        try:
            import pufferlib.pufferl  # noqa: F401
        except ImportError:  # run again under PufferLib's interpreter, with the same arguments
            if os.environ.get("CARRYSTATE_PUFFER_CHILD"):
                raise
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, PYTHONPATH=path, CARRYSTATE_PUFFER_CHILD="1")
            raise SystemExit(subprocess.call([a.puffer_python, __file__, *sys.argv[1:]], env=env)) from None

    for seed in a.seeds:
        if has_row(a.name, a.arm, "trained here", seed, a.steps):
            print(f"{a.arm} seed {seed} at {a.steps:,}: already in {a.name}.json", flush=True)
            continue
        run = run_puffer(a.arm, seed, a.steps) if a.arm in PUFFER_ARMS else run_carrystate(a.arm, seed, a.steps)
        key = "episode_length" if a.arm == "puffer_cartpole" else "reward_per_agent_step"
        row = dict(arm=a.arm, source="trained here", seed=seed, target_steps=a.steps, **run)
        row["last10"] = last10([c for c in run["curve"] if c.get(key) is not None], key)
        row["sps"] = row["steps"] / row["wall_s"]
        add_row(a.name, row)
        print({k: v for k, v in row.items() if k not in ("curve", "settings")}, flush=True)


if __name__ == "__main__":
    main()
