"""PufferLib 3 training speed on the MettaGrid arena, for comparison with carrystate's mettagrid_arena config.

Measures agent-steps per second of PufferLib's own trainer (pufferlib.pufferl.PuffeRL: rollout with
`evaluate()`, PPO update with `train()`) on `--maps` copies of the arena map that carrystate builds
(`carrystate.envs.mettagrid_adapter.mettagrid_config("arena", 24, 25, 10, 10, 1000, 200)`), wrapped by
mettagrid's own PufferLib env (`MettaGridPufferEnv`), with mettagrid's PufferLib default policy
(`PufferDefaultPolicy`: flattened tokens -> Linear + GELU encoder -> LSTM -> action and value heads), its
LSTM set to 128 units. After one warm-up epoch the trainer runs whole epochs for about `--seconds`;
SPS = agent-steps of those epochs / their wall time. One JSON line is printed (and written to `--json`).

    /tmp/puffer/venv/bin/python benchmarks/pufferlib_mettagrid.py --maps 4 --epochs 1 --seconds 45 --json /tmp/out.json

Installing PufferLib 3 (pufferlib-core 3.0.23) on a CPU-only machine against an already installed CPU torch.
Its metadata pins torch==2.9.0 (a CUDA build from PyPI), hence --no-deps and --no-build-isolation everywhere; the
C++ extension (PufferLib's advantage kernel) then compiles against the installed torch:

    python -m venv --system-site-packages /tmp/puffer/venv   # sees the global torch, numpy, gymnasium, mettagrid
    cd /tmp/puffer && P=/tmp/puffer/venv/bin/pip
    $P install --no-deps setuptools==80.9.0 wheel==0.45.1   # setuptools 65 rejects pyproject's license = "MIT"
    PUFFERLIB_DISABLE_CUDA=1 $P download --no-deps --no-build-isolation --no-binary :all: pufferlib-core==3.0.23
    tar xzf pufferlib_core-3.0.23.tar.gz
    PUFFERLIB_DISABLE_CUDA=1 $P install --no-build-isolation --no-deps ./pufferlib_core-3.0.23   # ~40 s compile
    $P install --no-deps psutil rich-argparse pyro-ppl opt-einsum tqdm
    # rich (+ markdown-it-py, pygments, mdurl) was already there; pufferl imports pyro (its sweeps) at module
    # level, so pyro-ppl is needed even here; nvidia-ml-py and pyro-api are not imported.

Settings differing from carrystate: PufferLib samples minibatch segments by advantage priority (its
prio_alpha/beta) rather than a shuffled pass, computes V-trace advantages in its C++ op, and starts each
64-step segment's LSTM state at zero in the update; ent_coef 0.01, clip 0.2, gae_lambda 0.95, vf_coef 0.5,
max_grad_norm 0.5 are carrystate's defaults (they do not change the speed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

# Run by path, this file's folder leads sys.path, and benchmarks/mettagrid.py would shadow the mettagrid package.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import torch

torch.set_num_threads(1)  # the same single intra-op thread carrystate's CPU benchmarks use (--threads: more)

import pufferlib  # noqa: E402
import pufferlib.pufferl  # noqa: E402
import pufferlib.vector  # noqa: E402
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv  # noqa: E402
from mettagrid.policy.policy_env_interface import PolicyEnvInterface  # noqa: E402
from mettagrid.policy.puffer_default import PufferDefaultPolicy  # noqa: E402
from mettagrid.simulator import Simulator  # noqa: E402

from carrystate.envs.mettagrid_adapter import mettagrid_config  # noqa: E402

AGENTS = 24  # agents per map (configs/mettagrid_arena.yaml: env.mettagrid.agents)


def arena_config():
    # env.mettagrid in configs/mettagrid_arena.yaml: map, agents, size, altars, walls, max_steps, obs_tokens
    return mettagrid_config("arena", AGENTS, 25, 10, 10, 1000, 200)


def make_env(buf=None, seed=0):
    """One map of 24 agents as a PufferLib-native env; PufferLib passes the slice of its buffers in `buf`."""
    logging.getLogger("mettagrid").setLevel(logging.WARNING)
    return MettaGridPufferEnv(Simulator(), arena_config(), buf=buf, seed=seed)


def trainer_config(maps: int, update_epochs: int, data_dir: str, precision: str = "float32") -> dict:
    """Every key PuffeRL reads. Speed-relevant ones follow configs/mettagrid_arena.yaml."""
    return dict(
        env="mettagrid_arena",
        device="cpu",
        seed=1,
        torch_deterministic=False,
        cpu_offload=False,
        compile=False,
        compile_mode="default",
        compile_fullgraph=False,
        precision=precision,  # float32, or bfloat16: PufferLib's autocast around its rollout and update
        use_rnn=True,  # the policy is PufferLib's LSTMWrapper
        batch_size=maps * AGENTS * 256,  # trainer.batch_size: agents x 256 steps per rollout
        bptt_horizon=64,  # trainer.bptt_horizon
        minibatch_size=6144,  # trainer.minibatch_size (96 segments of 64)
        max_minibatch_size=6144,  # no gradient accumulation
        update_epochs=update_epochs,  # trainer.update_epochs (--epochs)
        optimizer="adam",  # as carrystate (PufferLib's other choice, Muon, needs heavyball)
        learning_rate=1e-3,  # trainer.learning_rate
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_eps=1e-8,
        anneal_lr=False,
        gamma=0.99,  # trainer.gamma
        gae_lambda=0.95,  # gae_lambda, clip, vf, ent, grad-norm coefficients: carrystate's defaults
        clip_coef=0.2,
        vf_clip_coef=0.2,  # PufferLib's value clipping
        vf_coef=0.5,
        ent_coef=0.01,
        max_grad_norm=0.5,
        vtrace_rho_clip=1.0,  # PufferLib's V-trace and prioritized minibatches are always computed
        vtrace_c_clip=1.0,
        prio_alpha=0.8,
        prio_beta0=0.2,
        total_timesteps=10**12,  # never reached: we stop by wall time
        checkpoint_interval=10**9,  # never checkpoint
        data_dir=data_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=8, help="copies of the 24-agent arena (env.num_envs)")
    parser.add_argument("--epochs", type=int, default=2, help="PPO update epochs per rollout")
    parser.add_argument("--seconds", type=float, default=45.0, help="timed wall time after one warm-up epoch")
    parser.add_argument(
        "--vec",
        choices=["serial", "multiprocessing"],
        default="serial",
        help="serial: maps stepped in this process (default); multiprocessing: PufferLib's "
        "worker processes, --workers of them, double-buffered like carrystate's config",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32", help="PufferLib's own")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the JSON line here")
    parser.add_argument("--dashboard", action="store_true", help="keep PufferLib's terminal dashboard")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not args.dashboard:
        # PuffeRL redraws a rich dashboard after every epoch; off by default so stdout holds only the result.
        pufferlib.pufferl.PuffeRL.print_dashboard = lambda self, *a, **k: None

    if args.vec == "serial":
        vecenv = pufferlib.vector.make(make_env, backend=pufferlib.vector.Serial, num_envs=args.maps, seed=1)
    else:
        # Two halves of the maps alternate: the policy acts on one while the workers step the other.
        vecenv = pufferlib.vector.make(
            make_env,
            backend=pufferlib.vector.Multiprocessing,
            num_envs=args.maps,
            num_workers=args.workers,
            batch_size=args.maps // 2,
            seed=1,
        )

    # mettagrid's PufferLib default policy; hidden_size sets both its encoder width and the LSTM to 128.
    policy = PufferDefaultPolicy(PolicyEnvInterface.from_mg_cfg(arena_config()), hidden_size=128).network()

    data_dir = tempfile.mkdtemp(prefix="pufferlib_bench_", dir="/tmp")
    config = trainer_config(args.maps, args.epochs, data_dir, args.precision)
    trainer = pufferlib.pufferl.PuffeRL(config, vecenv, policy)
    try:
        trainer.evaluate()  # warm-up epoch: first rollout and update (allocations, first-call costs)
        trainer.train()
        start_steps, start = trainer.global_step, time.perf_counter()
        epochs = 0
        while time.perf_counter() - start < args.seconds:
            trainer.evaluate()
            trainer.train()
            epochs += 1
        seconds = time.perf_counter() - start
        steps = trainer.global_step - start_steps
    finally:
        trainer.utilization.stop()
        vecenv.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    result = {
        "sps": round(steps / seconds, 1),
        "epochs_timed": epochs,
        "seconds": round(seconds, 2),
        "maps": args.maps,
        "agents": args.maps * AGENTS,
        "update_epochs": args.epochs,
        "precision": args.precision,
        "threads": args.threads,
        "pufferlib_version": pufferlib.__version__,
        "torch": torch.__version__,
        "vectorization": "Serial" if args.vec == "serial" else f"Multiprocessing({args.workers} workers)",
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
