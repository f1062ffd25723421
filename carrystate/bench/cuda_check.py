"""CUDA checks: the trainer runs on a GPU, and replay equals rollout there with every unroll.

    python benchmarks/cuda_check.py      # prints one line per check; exits non-zero on a failure
"""

from __future__ import annotations

import sys
import time

import torch

from carrystate.config import load_config
from carrystate.trainer import Trainer


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    ok = True
    over = ["trainer.device=cuda", "env.num_envs=256", "trainer.batch_size=65536", "trainer.minibatch_size=8192",
            "policy.hidden_size=128", "trainer.total_timesteps=327680", "env.tmaze.length_min=8", "env.tmaze.length_max=80"]
    tr = Trainer(load_config(None, over), quiet=True)
    t0 = time.perf_counter()
    s = tr.train()
    print(f"train on cuda: {s.global_step} steps in {time.perf_counter() - t0:.1f}s ({s.sps:,.0f} SPS), "
          f"success {s.success_rate}", flush=True)
    b = tr.buffer
    tr.rollout.collect(tr.policy, b, tr.sample_gen)  # weights unchanged since: replay must equal rollout
    for impl in ("chunked", "packed", "bucketed", "loop"):
        tr.policy.core.impl = impl
        with torch.no_grad():
            params, values, _ = tr.policy.sequence(b.obs, b.start_state, b.starts)
            logp, _ = tr.policy.actor.log_prob_entropy(params, b.actions)
        dv, dl = (values - b.values).abs().max().item(), (logp - b.logprobs).abs().max().item()
        good = dv < 1e-5 and dl < 1e-5
        ok &= good
        print(f"replay == rollout on cuda [{impl}]: max |dv| {dv:.2e}, max |dlogp| {dl:.2e} -> {'ok' if good else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
