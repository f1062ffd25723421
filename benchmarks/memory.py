"""Peak memory of one learner forward+backward on the CPU, measured as the growth of the peak resident set
of a fresh process (so nothing allocated before can hide it). Works for every unroll, including activation
checkpointing, whose saved tensors autograd hooks cannot see.

    python benchmarks/memory.py '{"mode": "chain", "rows": 64, "segments": 8, "horizon": 64, "hidden": 256}'
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def _measure(spec: dict) -> float:
    import gymnasium as gym
    import numpy as np
    import torch

    from carrystate.config import PolicyConfig
    from carrystate.policy import Policy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, C, H, hid = spec["rows"], spec["segments"], spec["horizon"], spec["hidden"]
    policy = Policy(
        PolicyConfig(hidden_size=hid, encoder_sizes=[hid]),
        gym.spaces.Box(-1, 1, (8,), np.float32),
        gym.spaces.Discrete(4),
    )
    obs = torch.randn(n, C, H, 8)
    resets = torch.rand(n, C, H) < spec.get("reset_rate", 0.0)
    state = policy.initial_state(n)
    # warm up allocator and kernels on a tiny problem, then take the baseline
    p, v = policy.chain(obs[:1, :1], tuple(s[:, :1] for s in state), resets[:1, :1])
    (p.sum() + v.sum()).backward()
    policy.zero_grad(set_to_none=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if spec["mode"] == "chain":
        p, v = policy.chain(obs, state, resets)
    else:  # plain backpropagation through all C*H steps
        p, v, _ = policy.sequence(obs.view(n, C * H, 8), state, resets.view(n, C * H), end_state=False)
    (p.sum() + v.sum()).backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB → MiB


def peak_mib(spec: dict) -> float:
    """Run `_measure(spec)` in a fresh interpreter and return the peak growth in MiB."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(_measure(json.loads(sys.argv[1])))
