"""Issue 26: how far training's replay is from the rollout in each precision, for every unroll of the LSTM and the
GRU (and the other cores under auto), over random episode ends: the largest |replay − rollout| of the log-probs
and values of the actions taken, and of the start states (the state a segment's replay ends with, against the
start state the rollout stored for the agent's next segment, where no episode ends between them), relative to
the largest state entry (`*_rel`: each gap over the largest |entry| of what it compares). Policies of the
shipped size (MLP encoder, hidden 128; one and two layers; every other pattern with the heads' weights scaled to a
trained policy's logits and values, ×100 and ×10), 16 agents × 4 segments of 64 steps, each step ending an agent's
episode with probability 1/40; 10 end patterns each.

    python experiments/bf16_exactness.py      # writes experiments/results/bf16_exactness.json
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import ROOT, save

sys.path.insert(0, str(ROOT))
from carrystate import registry
from tests.helpers import USER_CORE, ScriptedEnv, collect, make_policy

AGENTS, HORIZON, ROWS, PATTERNS = 16, 64, 4, 10


def gaps(core: str, impl: str, precision: str, layers: int, pattern: int) -> dict[str, float]:
    rng = np.random.default_rng(pattern)
    steps = HORIZON * ROWS
    ends = {(a, t): "term" for a in range(AGENTS) for t in range(steps) if rng.random() < 1 / 40}
    policy = make_policy(core, obs_dim=8, hidden=128, layers=layers, impl=impl, precision=precision, seed=pattern)
    if pattern % 2:  # heads at a trained policy's scale: logits and values of order 1, not the init's 0.01
        with torch.no_grad():
            policy.actor.linear.weight.mul_(100)
            policy.critic.weight.mul_(10)
    env = ScriptedEnv(AGENTS, steps, obs_dim=8, ends=ends, seed=pattern)
    _, _, (buf,) = collect(policy, env, AGENTS * steps, HORIZON, seed=pattern)
    with torch.no_grad():
        params, values, end = policy.sequence(buf.obs, buf.start_state, buf.starts)
        logp, _ = policy.actor.log_prob_entropy(params, buf.actions)
    carried = ~buf.starts[:, 0].clone()  # row r + 1 continues row r's episode (same agent)
    carried[torch.arange(len(carried)) % ROWS == 0] = False
    state_gap, scale = 0.0, 1e-12
    for e, s in zip(end, buf.start_state):
        nxt = s[:, 1:][:, carried[1:]]
        state_gap = max(state_gap, float((e[:, :-1][:, carried[1:]] - nxt).abs().max()) if nxt.numel() else 0.0)
        scale = max(scale, float(s.abs().max()))
    d_logp, d_value = float((logp - buf.logprobs).abs().max()), float((values - buf.values).abs().max())
    return {
        "logprob": d_logp,
        "value": d_value,
        "logprob_rel": d_logp / float(buf.logprobs.abs().max()),
        "value_rel": d_value / float(buf.values.abs().max()),
        "state_rel": state_gap / scale,
    }


def main():
    cases = [(c, "auto") for c in ["lstm", "gru", "window", USER_CORE]]
    cases += [(c, u) for u, spec in registry.UNROLLS.items() if u != "triton" for c in spec.cores]
    rows = []
    for precision in ("fp32", "bf16"):
        for core, impl in cases:
            if precision == "bf16" and not registry.UNROLLS.get(impl, registry.UNROLLS["scan"]).bf16:
                continue
            worst = dict.fromkeys(["logprob", "value", "logprob_rel", "value_rel", "state_rel"], 0.0)
            for layers in (1, 2):
                for pattern in range(PATTERNS):
                    g = gaps(core, impl, precision, layers, pattern)
                    worst = {k: max(worst[k], g[k]) for k in worst}
            row = {"precision": precision, "core": core, "unroll": impl, **worst}
            print(row, flush=True)
            rows.append(row)
    save("bf16_exactness", rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
