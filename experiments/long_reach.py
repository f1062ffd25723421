"""Issue 4 experiment: T-maze with a 256-step corridor at bptt_horizon 64. Success rate with gradients cut
at every segment (gradient_horizon 64) against gradients through whole rollouts (`episode`), and the
learner's activation memory of one minibatch in each mode.

    python experiments/long_reach.py [--steps N] [--seeds 1 2]
"""

from __future__ import annotations

import argparse

import torch

from common import save, train

from carrystate.bench.learner import activation_bytes

BASE = ["env.tmaze.length_min=256", "env.tmaze.length_max=256", "env.num_envs=32", "trainer.batch_size=32768",
        "trainer.bptt_horizon=64", "trainer.minibatch_size=8192", "trainer.update_epochs=4",
        "policy.hidden_size=64", "trainer.learning_rate=0.001", "trainer.gamma=0.999",
        "diagnostics.staleness_segments=0"]


def learner_memory(trainer) -> float:
    """MiB autograd keeps for backward in one minibatch of this run's learner."""
    b, t = trainer.buffer, trainer.cfg.trainer
    mb_segments = t.minibatch_size // t.bptt_horizon
    plan = (b.minibatch_plan(mb_segments, torch.Generator().manual_seed(0)) if trainer.chain == 1
            else b.chain_plan(trainer.chain, mb_segments, torch.Generator().manual_seed(0)))
    idx = plan[0]
    mb = b.minibatch(idx.flatten())
    return activation_bytes(lambda: sum(x.sum() for x in trainer.unroll(mb, idx, b.start_state))) / 2**20


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3_000_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        for gh in ("64", "episode"):
            r = train(None, BASE + [f"trainer.gradient_horizon={gh}", f"trainer.total_timesteps={a.steps}",
                                    f"trainer.seed={seed}"], episodes=200)
            mem = learner_memory(r.pop("trainer"))
            out = {"gradient_horizon": gh, "seed": seed, "eval_success": r["eval_success"], "steps": r["steps"],
                   "wall_s": r["wall_s"], "sps": r["sps"], "learner_MiB": mem,
                   "curve": [(h["step"], h.get("charts/success_rate")) for h in r["history"]]}
            print({k: v for k, v in out.items() if k != "curve"}, flush=True)
            rows.append(out)
            save("long_reach", rows)


if __name__ == "__main__":
    main()
