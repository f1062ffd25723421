"""trainer.precision=bf16 against fp32 on a shipped config: whole training, the two trainers' iterations in
alternating rounds (5 rounds of N iterations each after one warm-up iteration), medians. One torch thread.

    python -m benchmarks.precision configs/cartpole_novel.yaml [--iterations 10]

`--small-step MAPS`: the MettaGrid arena's rollout at MAPS maps (24 agents each, two batches), its policy seconds
(the rollout's wall time less its env waits) in fp32, in bf16 with the LSTM step's products in bf16 GEMMs (the
heads and the encoder's layer on fp32 units), and in bf16 with the step's products on fp32 units too
(`precision.SMALL_PRODUCT` raised above the step's size), one rollout and update of each in turn per round,
medians over rounds; and each way's LSTM step timed alone at a batch's rows:

    python -m benchmarks.precision configs/mettagrid_arena.yaml --small-step 4 [--rounds 6]

`--plan MAPS`: the same rollout's policy seconds in fp32 and bf16, each with the policy's rollout plan (the parts'
frozen calls, policy/network.py) and with its modules (the plan switched off), one rollout and update of each way
in turn per round, medians over rounds:

    python -m benchmarks.precision configs/mettagrid_arena.yaml --plan 4 [--rounds 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import carrystate


def compare(config: str, iterations: int, rounds: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    over = ["trainer.total_timesteps=1000000000", "diagnostics.staleness_segments=0"]
    trainers = {
        p: carrystate.Trainer(carrystate.load_config(config, [*over, f"trainer.precision={p}"]), quiet=True)
        for p in ("fp32", "bf16")
    }
    seconds: dict[str, list[float]] = {p: [] for p in trainers}
    try:
        for tr in trainers.values():
            tr.train(stop_after=1)  # warm-up
        for _ in range(rounds):
            for p, tr in trainers.items():
                t0 = time.perf_counter()
                tr.train(stop_after=iterations)
                seconds[p].append((time.perf_counter() - t0) / iterations)
    finally:
        for tr in trainers.values():
            tr.env.close()
    med = {p: float(np.median(v)) for p, v in seconds.items()}
    return {"fp32_seconds": med["fp32"], "bf16_seconds": med["bf16"], "bf16_speed_over_fp32": med["fp32"] / med["bf16"]}


def arena_trainers(config: str, maps: int) -> dict[str, carrystate.Trainer]:
    """A trainer per precision of the MettaGrid arena `config` at `maps` maps (1 epoch), one torch thread."""
    from benchmarks.mettagrid import overrides

    torch.set_num_threads(1)
    return {
        p: carrystate.Trainer(
            carrystate.load_config(config, [*overrides(maps, 1), f"trainer.precision={p}"]), quiet=True
        )
        for p in ("fp32", "bf16")
    }


def rollout_policy_seconds(tr: carrystate.Trainer) -> float:
    """One rollout's policy seconds (its wall time less its env waits), then the update that follows it."""
    from carrystate.rollout import RolloutStats

    t0 = time.perf_counter()
    stats = tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    seconds = time.perf_counter() - t0 - stats.env_seconds
    tr.rollout.stats = RolloutStats()
    tr.update()
    return seconds


def small_step(config: str, maps: int, rounds: int = 6) -> dict[str, float]:
    """Policy seconds of a rollout per way of running the LSTM step's products (the module docstring)."""
    from carrystate import precision

    trainers = arena_trainers(config, maps)
    # bf16_gemm: SMALL_PRODUCT below the step's 48 × 128 × 512 multiply-adds, above the heads' and encoder layer's
    ways = {"fp32": ("fp32", None), "bf16_gemm": ("bf16", 1 << 21), "bf16_fp32_units": ("bf16", 1 << 40)}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    step: dict[str, list[float]] = {w: [] for w in ways}
    kept = precision.SMALL_PRODUCT
    try:
        for tr in trainers.values():
            tr.train(stop_after=1)  # warm-up
        for _ in range(rounds):
            for way, (p, limit) in ways.items():
                tr = trainers[p]
                precision.SMALL_PRODUCT = kept if limit is None else limit
                seconds[way].append(rollout_policy_seconds(tr))
                step[way].append(step_alone(tr.policy, maps * 12))  # a batch: half the maps' 24 agents each
    finally:
        precision.SMALL_PRODUCT = kept
        for tr in trainers.values():
            tr.env.close()
    out = {f"{way}_policy_seconds": float(np.median(v)) for way, v in seconds.items()}
    return out | {f"{way}_step_alone_seconds": float(np.median(v)) for way, v in step.items()}


def plan_against_modules(config: str, maps: int, rounds: int = 6) -> dict[str, float]:
    """Policy seconds of a rollout with and without the rollout plan, per precision (the module docstring)."""
    trainers = arena_trainers(config, maps)
    seconds: dict[str, list[float]] = {f"{p}_{way}": [] for p in trainers for way in ("plan", "modules")}
    try:
        for tr in trainers.values():
            tr.train(stop_after=1)  # warm-up
        for _ in range(rounds):
            for way in seconds:
                p, kind = way.split("_")
                trainers[p].policy.rollout_plan = kind == "plan"
                seconds[way].append(rollout_policy_seconds(trainers[p]))
    finally:
        for tr in trainers.values():
            tr.env.close()
    out = {"maps": maps, "rounds": rounds}
    out |= {f"{way}_policy_seconds": float(np.median(v)) for way, v in seconds.items()}
    for p in trainers:
        out[f"{p}_modules_over_plan"] = out[f"{p}_modules_policy_seconds"] / out[f"{p}_plan_policy_seconds"]
    return out


@torch.no_grad()
def step_alone(policy, rows: int, calls: int = 200) -> float:
    """Seconds per call of the policy's core step alone at `rows` rows, as the rollout calls it (inside `frozen`;
    under bf16 its input comes as bf16 from the encoder's layer)."""
    from carrystate import precision

    x = torch.randn(rows, policy.core.rnn.input_size)
    state = policy.initial_state(rows)[: policy.actor_state_tensors]
    with precision.frozen(policy.precision, "cpu"):
        if policy.precision == "bf16":
            x = x.to(torch.bfloat16)
        policy.core.step(x, state)  # weight copies made once per rollout, as in one
        t0 = time.perf_counter()
        for _ in range(calls):
            policy.core.step(x, state)
        return (time.perf_counter() - t0) / calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--iterations", type=int, default=1, help="iterations per trainer per round")
    p.add_argument("--small-step", type=int, default=None, metavar="MAPS", help="the rollout comparison (above)")
    p.add_argument("--plan", type=int, default=None, metavar="MAPS", help="plan against modules (above)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the rollout comparisons")
    p.add_argument("--json", default=None, help="with --plan: add the result to this JSON list file")
    a = p.parse_args()
    if a.plan:
        result = plan_against_modules(a.config, a.plan, a.rounds)
        print(a.config, result)
        if a.json:
            path = Path(a.json)
            runs = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps([*runs, result], indent=1) + "\n")
    elif a.small_step:
        print(a.config, f"{a.small_step} maps", small_step(a.config, a.small_step, a.rounds))
    else:
        print(a.config, compare(a.config, a.iterations))


if __name__ == "__main__":
    main()
