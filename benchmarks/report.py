"""Render BENCHMARKS.md from the JSON results in benchmarks/results/ (CPU runs here, CUDA runs from a GPU).

Sections this module does not generate (e.g. "## Data-parallel (torch.distributed)") are kept as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from carrystate import registry
from carrystate.policy import unroll

OWN = (
    "## Learner",
    "## Learner memory",
    "## Rollout step",
    "## End to end",
    "## MettaGrid",
    "## Targets",
    "## How to run",
)
IMPLS = [*unroll.names(), "loop_graphed", "torchrl"]  # the learner table's columns, after `fused`


def _fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def _learner_table(rows: list[dict]) -> list[str]:
    present = [i for i in IMPLS if any(r.get(i) for r in rows)]
    head = "| hidden | horizon | rows | resets | fused ms | " + " | ".join(f"{i} ×fused" for i in present) + " |"
    out = [head, "|" + "---|" * (5 + len(present))]
    for r in rows:
        f = r.get("fused")
        cells = [_fmt(r[i] / f if r.get(i) and f else None) for i in present]
        out.append(
            f"| {r['hidden']} | {r['horizon']} | {r['rows']} | {_fmt(r['resets'], 'd')} | {_fmt(f)} | "
            + " | ".join(cells)
            + " |"
        )
    return out


def _memory_table(rows: list[dict]) -> list[str]:
    out = [
        "| horizon | rows (16,384 steps) | episode length | saved for backward MiB | CUDA peak MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['horizon']} | {r['rows']} | {r['episode_len']} | {r['saved_MiB']:.1f} | "
            f"{_fmt(r.get('peak_MiB'), '.1f')} |"
        )
    return out


def _label(data: dict) -> str:
    return data["info"].get("label") or data["info"]["device"]


def _best_exact(rows: list[dict]) -> list[tuple[dict, str, float]]:
    best = []
    for r in rows:
        ratios = {i: r[i] / r["fused"] for i in IMPLS if r.get(i) and i != "torchrl"}
        name = min(ratios, key=ratios.get)
        best.append((r, name, ratios[name]))
    return best


def _mettagrid_section(mg: dict) -> list[str]:
    """Whole MettaGrid training beside PufferLib, its time split and floors, and the env-stepping layouts."""
    rows = mg["settings"]
    lines = [
        "## MettaGrid: whole training beside PufferLib",
        "",
        "`configs/mettagrid_arena.yaml` (arena maps of 25×25 with 24 agents each, token encoder, LSTM 128, 64-step "
        "segments, 256 steps per agent per rollout, 6,144-step minibatches) at 4 and 8 maps and 1 and 2 epochs, "
        f"with the config's env layout (workers {rows[0]['workers']}, double buffer "
        f"{str(rows[0]['double_buffer']).lower()}, shared workers {str(rows[0].get('shared_workers', False)).lower()})"
        f". One torch thread. Per setting, {rows[0]['rounds']} "
        "alternating rounds of two carrystate iterations, PufferLib training for as long in its own process "
        "(`benchmarks/pufferlib_mettagrid.py`, when it is installed), and each floor part; medians over rounds. "
        "The split of a carrystate iteration: env = waiting for the env, encoder and core = their forward at "
        "rollout shapes timed alone, learner = the whole update, glue = the rest (sampling, buffer and state "
        "writes, bookkeeping). Floors: env stepping alone, and env stepping with one policy forward per step. "
        "Encoder fwd+bwd: one minibatch through the token encoder against an MLP encoder of the same widths "
        "on the same observations.",
        "",
        "| maps (agents) | epochs | carrystate SPS | PufferLib SPS | ratio | s/iteration: env / encoder / core / "
        "learner / glue | floor SPS: env / env + forward | encoder fwd+bwd: token / MLP (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp, e = r["split"], r["encoder_minibatch"]
        lines.append(
            f"| {r['maps']} ({r['agents']}) | {r['update_epochs']} | {r['carrystate_sps']:,.0f} | "
            f"{_fmt(r['pufferlib_sps'], ',.0f')} | {_fmt(r['ratio_to_pufferlib'])}× | "
            f"{r['seconds_per_iteration']:.2f}: {sp['env']:.2f} / {sp['encoder']:.2f} / {sp['core']:.2f} / "
            f"{sp['learner']:.2f} / {sp['glue']:.2f} | {r['floor_sps']['env']:,.0f} / "
            f"{r['floor_sps']['env_forward']:,.0f} | {1e3 * e['token_seconds']:.0f} / {1e3 * e['mlp_seconds']:.0f} "
            f"({e['ratio']:.2f}×) |"
        )
    if all("bf16" in r for r in rows):
        lines += [
            "",
            "bf16 (`trainer.precision=bf16`, its own trainer in the same rounds) beside PufferLib at its own "
            "`precision=bfloat16` (autocast), for as long; rollout = the policy's seconds in an iteration's rollout:",
            "",
            "| maps (agents) | epochs | carrystate bf16 SPS | over fp32 | PufferLib bf16 SPS | ratio to PufferLib "
            "fp32 / bf16 | rollout s: fp32 / bf16 | learner s: fp32 / bf16 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            b = r["bf16"]
            lines.append(
                f"| {r['maps']} ({r['agents']}) | {r['update_epochs']} | {b['carrystate_sps']:,.0f} | "
                f"{b['over_fp32']:.2f}× | {_fmt(b['pufferlib_sps'], ',.0f')} | {_fmt(b['ratio_to_pufferlib_fp32'])}× / "
                f"{_fmt(b['ratio_to_pufferlib_bf16'])}× | {b['rollout_seconds']['fp32']:.2f} / "
                f"{b['rollout_seconds']['bf16']:.2f} | {b['learner_seconds']['fp32']:.2f} / "
                f"{b['learner_seconds']['bf16']:.2f} |"
            )
    if mg.get("layouts"):
        lay = mg["layouts"]
        lines += [
            "",
            f"Env layouts at {lay[0]['maps']} maps, {lay[0]['update_epochs']} epoch, one iteration of each per "
            f"round in alternation ({lay[0]['rounds']} rounds, medians):",
            "",
            "| env.workers | env.double_buffer | env.shared_workers | SPS |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['workers']} | {str(r['double_buffer']).lower()} | {str(r.get('shared_workers', False)).lower()} | "
            f"{r['sps']:,.0f} |"
            for r in lay
        ]
    return lines + [""]


def _allocator_section(rows: list[dict]) -> list[str]:
    """The MettaGrid update with the C library's allocator defaults against `trainer.keep_freed_memory`."""
    r0 = rows[0]
    lines = [
        "### The allocator: `trainer.keep_freed_memory`",
        "",
        f"The MettaGrid arena's update ({r0['maps']} maps, {r0['update_epochs']} epochs) with glibc's default "
        "malloc settings (`trainer.keep_freed_memory=false`) against the trainer's (true: freed memory stays in the "
        "process), each in a fresh process, alternating over "
        f"{r0['rounds']} rounds; per process the median of {r0['updates']} updates of one rollout, then medians over "
        "rounds (`python -m benchmarks.allocator`). Page faults: minor faults per update (getrusage). Separate "
        "processes drift with this machine, so one fault's cost is also timed alone (allocate-and-free cycles that "
        f"fault against ones that do not: {1e6 * r0.get('fault_seconds', float('nan')):.2f} µs) and multiplied by "
        "the faults removed: the time saved per update, estimated.",
        "",
        "| precision | update s: default / kept | speedup | page faults per update: default / kept | saved per update, "
        "estimated |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['precision']} | {r['default_seconds']:.3f} / {r['keep_seconds']:.3f} | {r['speedup']:.2f}× | "
        f"{r['default_faults']:,.0f} / {r['keep_faults']:,.0f} | {1e3 * r.get('saved_seconds', float('nan')):.0f} ms "
        f"({r.get('saved_seconds', float('nan')) / r['default_seconds']:.0%}) |"
        for r in rows
    ]
    return lines + [""]


def _plan_section(rows: list[dict]) -> list[str]:
    """The rollout's policy seconds with the policy's rollout plan against its modules."""
    lines = [
        "### The rollout plan",
        "",
        "The MettaGrid arena's rollout (24 agents per map, two batches) in fp32 and in bf16, each with the policy's "
        "rollout plan (the parts' frozen calls: the same kernels as the modules, bit for bit, without their per-call "
        "work; policy/network.py) and with its modules, one rollout and update of each of the four ways in turn "
        "per round; the rollout's policy seconds (its wall time less its env waits), medians over rounds "
        "(`python -m benchmarks.precision configs/mettagrid_arena.yaml --plan MAPS`).",
        "",
        "| maps | rounds | fp32 s: modules / plan | speedup | bf16 s: modules / plan | speedup |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['maps']} | {r['rounds']} | {r['fp32_modules_policy_seconds']:.3f} / {r['fp32_plan_policy_seconds']:.3f} "
        f"| {r['fp32_modules_over_plan']:.2f}× | {r['bf16_modules_policy_seconds']:.3f} / "
        f"{r['bf16_plan_policy_seconds']:.3f} | {r['bf16_modules_over_plan']:.2f}× |"
        for r in rows
    ]
    return lines + [""]


BF16_RUNS = [f"mettagrid_cpu_12-08_run{n}.json" for n in (11, 12, 13, 14)]  # the whole bench runs of the final code


def _bf16_paragraph(results: Path) -> str:
    """What stands in the way of the bf16 targets: the final code's whole bench runs (read from their results)
    and what moved it."""
    runs = [json.loads((results / name).read_text()) for name in BF16_RUNS if (results / name).exists()]

    def shown(x: float, goal: float) -> str:  # a third decimal where two would round across the goal
        return f"{x:.2f}" if (x >= goal) == (round(x, 2) >= goal) else f"{x:.3f}"

    def ratios(key: str, goal: float) -> str:
        return ", ".join(
            f"run {11 + i} " + " / ".join(shown(s["bf16"][key], goal) for s in run["settings"]) + "×"
            for i, run in enumerate(runs)
        )

    def met(key: str, goal: float) -> str:
        whole = [str(11 + i) for i, run in enumerate(runs) if all(s["bf16"][key] >= goal for s in run["settings"])]
        listed = whole[0] if len(whole) == 1 else f"{', '.join(whole[:-1])} and {whole[-1]}"
        named = f" (run{'s' if len(whole) > 1 else ''} {listed})" if whole else ""
        return f"met at every setting in {len(whole)} of {len(runs)} runs{named}"

    over = [s["bf16"]["over_fp32"] for run in runs for s in run["settings"]]
    return (
        f"- bf16 (`trainer.precision=bf16`). Whole bench runs 11 to {10 + len(runs)} on 2026-12-08, on the final "
        "code, with (8) and (9) below (the table above is the last of them; `results/mettagrid_cpu_12-08_run11.json` "
        "on). "
        f"Settings in order 4 / 8 maps × 1 epoch, then × 2 epochs. Against PufferLib in fp32 (target 1.5×): "
        f"{ratios('ratio_to_pufferlib_fp32', 1.5)}: {met('ratio_to_pufferlib_fp32', 1.5)}. Against PufferLib in bf16 "
        f"(target 1.2×): {ratios('ratio_to_pufferlib_bf16', 1.2)}: {met('ratio_to_pufferlib_bf16', 1.2)}. bf16 ran "
        "at "
        f"{min(over):.2f}–{max(over):.2f}× carrystate fp32. Runs 7 to 10, before (8) and (9): 1.22–1.76× "
        "against PufferLib fp32 (met at 11 of 16 settings) and 1.00–1.59× against its bf16 (7 of 16, at no setting "
        "in every run; `_run7.json` to `_run10.json`); runs 5 and 6, before (5) to (7): 1.21–1.81× (4 of 8) and "
        "0.93–1.43× (3 of 8); the runs before are listed in EXPERIMENTS.md (issue 26). Both trainers' rounds "
        "spread widely from run to run (PufferLib fp32 at 4 maps, 1 epoch: 20.5k agent-steps/s in run 10, 13.4k "
        "and 11.8k in runs 11 and 12; its bf16 there 17.9k, 15.1k, 13.8k and 21.4k in runs 11 to 14, so the setting "
        "that misses moves from run to run). What moved it, in the order it came: (1) the C++ scan's elementwise "
        "passes read each bf16 product and write the next product's bf16 operand themselves, and the input product "
        "and its gradient stay bf16 (separate conversions and mixed-dtype adds had taken about a quarter of the bf16 "
        "learner's time). (2) Small products taken without gradients (the heads and the encoder's layer at the "
        "rollout's 48–96 rows) run as fp32 GEMMs of bf16-rounded operands, which gives the same values "
        "(`precision.Linear`): a bf16 GEMM call costs 40–60 µs here whatever its size, against 7–25 µs for those "
        "products in fp32. (3) `env.shared_workers`: one worker process steps both batches in turn, so the env and "
        "the policy each have a core (1.05–1.29× the worker-per-batch layout in the layout tables of runs 3 to 10). "
        "(4) A minibatch's segments are gathered with `index_select` (0.4 against 5.6 ms for the observations). "
        "(5) `trainer.keep_freed_memory`: with glibc's defaults an update faulted its large temporaries in anew, "
        "tens of thousands of pages at about 1 µs each (the allocator table above). (6) The rollout writes the "
        "buffer through numpy views of its tensors. (7) The LSTM step of a 4-map bf16 rollout (48 rows per batch) "
        "takes its products on fp32 units (`precision.SMALL_PRODUCT`), though the AMX step alone is the faster "
        "(0.18 against 0.22 ms): a whole rollout's policy time on fp32 units against the AMX step's measured 0.42 "
        "against 0.52 s, 0.52 against 0.56 s and 0.48 against 0.48 s in three measurements (`python -m "
        "benchmarks.precision configs/mettagrid_arena.yaml --small-step 4`); at 96 rows the threshold keeps the "
        "AMX step. (8) The rollout plan: in a rollout the policy's parts run as plain calls over weight copies "
        "made once per rollout, the modules' kernels in the same order (equal bit for bit), without the per-call "
        "work of `nn.Module`, autocast and the precision checks (the rollout plan table above). (9) Fewer calls "
        "per rollout step: one categorical choice is sampled in one C++ call (`policy/kernels/heads_cpu.cpp`), the "
        "token sum skips its autograd node, and the actions go into the env's shared block instead of being "
        "pickled into the pipe. What is left: PufferLib's bfloat16 runs its LSTM as oneDNN's fused bf16 LSTM, "
        "which carries the state in bf16 where carrystate's contract keeps it fp32; the bf16 rollout still takes "
        "longer than fp32's (the roundings and conversions around its products); and at 2 epochs the learner is "
        "over half of a bf16 iteration, so those settings have the least margin."
    )


def write(markdown: Path, results: Path) -> None:
    cpu = json.loads((results / "learner_cpu.json").read_text()) if (results / "learner_cpu.json").exists() else None
    cuda = sorted(results.glob("learner_cuda_*.json"))
    e2e = (
        json.loads((results / "end_to_end_cpu.json").read_text())
        if (results / "end_to_end_cpu.json").exists()
        else None
    )
    lines = [
        "# Benchmarks",
        "",
        "Written by `carrystate bench` (CPU) from `benchmarks/results/*.json`; the CUDA rows come from "
        "`benchmarks/gpu_run.sh` on a lent GPU machine. Times are medians over repeats; every ratio compares "
        "numbers measured side by side in the same run. `fused` is one `nn.LSTM` call over the whole "
        "segment that ignores resets (the leaky fast path); every other column applies the resets exactly.",
        "",
    ]
    lines += [
        "## Learner: forward+backward of one minibatch of segments",
        "",
        "About one episode end per 50 steps per row (`resets` counts them). The default unroll is `scan` for an "
        "LSTM on the CPU and `triton` for an LSTM on CUDA. `policy.sequence_impl`: "
        + registry.describe_unrolls()
        + " Beside them, `loop_graphed` is `loop` captured as CUDA graphs and `torchrl` is torchrl's "
        "`LSTMModule` in recurrent mode.",
        "",
    ]
    if cpu:
        lines += (
            [
                f"### CPU: {cpu['info']['device']}, torch {cpu['info']['torch']}, measured "
                f"{cpu['info'].get('date', '?')}",
                "",
            ]
            + _learner_table(cpu["learner"])
            + [""]
        )
    for path in cuda:
        data = json.loads(path.read_text())
        lines += [
            f"### CUDA: {_label(data)}; torch {data['info']['torch']}, measured {data['info'].get('date', '?')}",
            "",
        ]
        if data["info"].get("how"):
            lines += [f"How: {data['info']['how']}.", ""]
        lines += _learner_table(data["learner"]) + [""]
        if data.get("learner_fp32"):
            lines += [
                "The same with TF32 off everywhere (`torch.backends.cudnn.allow_tf32 = False`): both calls in IEEE "
                "fp32, the setting in which the triton unroll matches the step loop to fp32 rounding:",
                "",
            ]
            lines += _learner_table(data["learner_fp32"]) + [""]
    lines += [
        "## Learner memory against bptt_horizon",
        "",
        "Fixed minibatch of 16,384 agent-steps (rows = 16,384 / horizon), hidden 128. Bytes autograd saves for "
        "backward, and on CUDA the peak allocation of forward+backward. Memory stays flat as the horizon "
        "grows from 16 to 1024 and does not grow with episode length. Both tables use the device's default "
        "unroll (`scan` on the CPU, `triton` on CUDA), whose saved tensors do not depend on where episodes end "
        "at all. The CUDA peak of the first row measured is 25 MiB above the same shape with other episode "
        "lengths, which looks like a one-time allocation (cuBLAS workspace) on the first call.",
        "",
    ]
    if cpu and cpu.get("memory"):
        lines += ["CPU:", ""] + _memory_table(cpu["memory"]) + [""]
    for path in cuda:
        data = json.loads(path.read_text())
        if data.get("memory"):
            lines += (
                [f"{data['info']['device']} (`{data.get('memory_impl', 'bucketed')}`):", ""]
                + _memory_table(data["memory"])
                + [""]
            )
    if cpu and cpu.get("rollout_step"):
        lines += [
            "## Rollout step: one recurrent step for every agent",
            "",
            f"{cpu['info']['device']}, no gradient. `LSTMCore.step` (on the CPU the C++ step of "
            "`policy/kernels/scan_cpu.cpp`: the input and recurrent GEMMs and one fused elementwise pass, the scan's "
            "math) against `nn.LSTM` called with T=1; time per step, median over repeats of 50 carried steps.",
            "",
            "| agents | hidden | nn.LSTM T=1 µs | step µs | step / nn.LSTM |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['agents']} | {r['hidden']} | {r['nn_lstm_us']:.1f} | {r['step_us']:.1f} | "
            f"{r['step_us'] / r['nn_lstm_us']:.2f} |"
            for r in cpu["rollout_step"]
        ] + [""]
    if e2e:
        lines += [
            "## End to end: agent-steps per second of whole training",
            "",
            "64 envs, 8,192-step rollouts, 64-step segments, 2,048-step minibatches, 4 epochs, LSTM 64 after a "
            "64-unit encoder; sb3-contrib `RecurrentPPO` with `n_envs=64, n_steps=128, batch_size=2048, "
            "n_epochs=4, lstm_hidden_size=64, net_arch=[64], shared_lstm=True, enable_critic_lstm=False`. "
            "One torch thread each. The floor is env stepping + one forward per rollout step (the faster of a "
            "fused nn.LSTM call with T=1 and the policy's own step) + a fused forward+backward and optimizer "
            "step per minibatch of every epoch. SPS is over whole iterations after a warm-up; the trainer's "
            "s/iteration and the floor are medians over rounds that alternate one iteration of the trainer "
            "(with and without the staleness diagnostic) with each floor part"
            f" ({next(iter(e2e.values()))['carrystate'].get('floor_rounds', 'several')} rounds), and 'over "
            "floor' is their ratio.",
            "",
            "| task | carrystate SPS | sb3-contrib SPS | speedup | s/iteration | floor s/iteration (env / forward / "
            "learn) | over floor | over floor, staleness diagnostic off |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for task, r in e2e.items():
            c, s, fl = r["carrystate"], r["sb3_recurrent_ppo"], r["carrystate"]["floor_seconds_per_iteration"]
            lines.append(
                f"| {task} | {c['sps']:,.0f} | {_fmt(s and s['sps'], ',.0f')} | {_fmt(r['speedup'])}× | "
                f"{c.get('seconds_per_iteration_beside_floor', c['seconds_per_iteration']):.3f} | {fl['total']:.3f} "
                f"({fl['env']:.3f} / {fl['forward']:.3f} / "
                f"{fl['learn']:.3f}) | {c['over_floor']:.2f}× | {_fmt(c.get('over_floor_without_diagnostics'))}× |"
            )
        lines.append("")
    mg = json.loads((results / "mettagrid_cpu.json").read_text()) if (results / "mettagrid_cpu.json").exists() else None
    if mg:
        lines += _mettagrid_section(mg)
    if (results / "allocator_cpu.json").exists():
        lines += _allocator_section(json.loads((results / "allocator_cpu.json").read_text()))
    if (results / "rollout_plan_cpu.json").exists():
        lines += _plan_section(json.loads((results / "rollout_plan_cpu.json").read_text()))
    lines += ["## Targets", ""]
    for label, data in ([("CPU", cpu)] if cpu else []) + [
        (_label(json.loads(p.read_text())), json.loads(p.read_text())) for p in cuda
    ]:
        best = _best_exact(data["learner"])
        worst = max(b[2] for b in best)
        lines.append(
            f"- Learner with exact resets ≤ 1.2× fused, {label}: best exact unroll per shape ranges "
            f"{min(b[2] for b in best):.2f}–{worst:.2f}× ({'met' if worst <= 1.2 else 'missed'}); "
            + ", ".join(f"h{r['hidden']}/T{r['horizon']}/B{r['rows']}: {n} {x:.2f}×" for r, n, x in best)
            + "."
        )
    if e2e:
        sp = [r["speedup"] for r in e2e.values() if r["speedup"]]
        of = [r["carrystate"]["over_floor"] for r in e2e.values()]
        lines.append(
            f"- End to end ≥ 20× sb3-contrib: measured {', '.join(f'{x:.1f}×' for x in sp)} "
            f"({'met' if sp and min(sp) >= 20 else 'missed'})."
        )
        lines.append(
            f"- Trainer ≤ 1.5× the floor: measured {', '.join(f'{x:.3f}×' for x in of)} "
            f"({'met' if max(of) <= 1.5 else 'missed'})."
        )
    if mg:
        ratios = [r["ratio_to_pufferlib"] for r in mg["settings"] if r["ratio_to_pufferlib"]]
        lines.append(
            "- MettaGrid with the token encoder ≥ 1.2× PufferLib at every setting: "
            + (
                f"measured {', '.join(f'{x:.2f}×' for x in ratios)} ({'met' if min(ratios) >= 1.2 else 'missed'})."
                if len(ratios) == len(mg["settings"])
                else "not measured (PufferLib not installed beside the bench)."
            )
        )
        b16 = [r["bf16"] for r in mg["settings"] if "bf16" in r and r["bf16"]["ratio_to_pufferlib_bf16"]]
        if len(b16) == len(mg["settings"]):
            for name, key, goal in (("fp32", "ratio_to_pufferlib_fp32", 1.5), ("bf16", "ratio_to_pufferlib_bf16", 1.2)):
                xs = [b[key] for b in b16]
                lines.append(
                    f"- MettaGrid at trainer.precision=bf16 ≥ {goal}× PufferLib in {name} at every setting: measured "
                    f"{', '.join(f'{x:.2f}×' for x in xs)} ({'met' if min(xs) >= goal else 'missed'})."
                )
    lines += [
        "",
        "### What stands in the way",
        "",
        "- CPU learner (met: `scan`, the CPU default for an LSTM, runs at 0.79–1.16× the leaky fused call over "
        "five bench runs on 2026-11-26): "
        "its loops are C++ (`policy/kernels/scan_cpu.cpp`), one ATen GEMM and one fused, vectorized elementwise pass "
        "per step each way, where the torch-op version ran about 10 PyTorch calls per step and measured "
        "1.18–1.39× in an earlier bench run. At the end-to-end shape (32 segments of 64 steps, hidden 64) "
        "it is 1.03–1.13× fused in four of five runs of the learner bench (one gave 1.43×) where the op loop was "
        "1.9–2.0×. Without "
        "a compiler the op loop runs instead. Copying the input projection into the gate buffer once instead "
        "of inside each step's GEMM call was tried and measured the same (0.99–1.01×, both kernels loaded in "
        "one process), so it was not kept.",
        "- GPU learner (triton, the CUDA default: 0.77–2.34× fused on an H200 with its committed tiles; met at "
        "5 of 12 shapes, all with 1024 rows or 16 steps; before it the best exact unroll on a GPU was `bucketed`, "
        "`packed` or the graphed loop at 2.3–9.7× for 64–256 steps on the H100): each program owns 16 rows and walks "
        "every step in "
        "order, so 256 rows keep only 16 of the H200's 132 SMs busy. Per step a program re-reads W_hh "
        "(256 KB at hidden 128, 1 MB at 256) from L2 and passes h through memory behind a block barrier, "
        "about 24 µs per step forward and backward together at hidden 128 and 83 µs at 256 (256 rows, 256 steps), "
        "where cuDNN spreads each step's matmul over "
        "many SMs. At 1024 rows (64 programs) and hidden 128 it is faster than cuDNN (0.77–0.80×). What would "
        "close the rest is splitting a row block's gate columns over several SMs with a grid-wide barrier per "
        "step (a cooperative persistent kernel, as cuDNN does); it is not built. W_hh does not fit in shared "
        "memory (256 KB at hidden 128), and keeping h and c in registers across steps was built and measured: "
        "no faster with TF32, 5–15× slower in IEEE fp32 (`results/variant_register_triton_cuda_h200.json`). "
        "At 16 steps both calls pay a fixed ~1.2 ms of host-side launch and autograd work on that machine, "
        "so those ratios are noisy (1.17–1.63× at hidden 128 across two runs). With TF32 off the kernel's "
        "matmuls run on FMA units instead of tensor cores: 1.2–4.6× the fused call, which itself barely slows.",
        "- GPU whole training: the T-maze with hidden 128, 256 envs and 65,536-step batches trained at 78.0k "
        "agent-steps/s with `triton` against 47.1k and 50.0k with `bucketed` in the same run on the H200 "
        "(1.6×; `results/cuda_check_h200.txt`). With cuDNN's default TF32 the replay matches the rollout "
        "to 5e-5 instead of 4e-7 (TF32 rounding in both, in different orders); `torch.backends.cudnn."
        "allow_tf32 = False` restores the exact match.",
        "- End to end against sb3-contrib (3.9–4.3× on the T-maze and 3.9–4.7× on CartPole over four bench runs "
        "on 2026-11-26; 2.6–3.0× before the C++ scan): the floor alone allows 53–59k agent-steps/s on the "
        "T-maze here (8,192 steps in 0.140–0.156 s) and 35–40k on CartPole, which is 6.0–6.6× and 5.2–6.2× "
        "sb3-contrib's 8.6–9.1k and 6.4–7.1k in the same runs. So 20× is out of reach at these settings on this CPU, "
        "whatever the "
        "trainer does: the floor's learn part alone (0.12–0.14 s per iteration, the same fused LSTM "
        "forward+backward sb3-contrib runs) is about 1/7 of sb3-contrib's whole iteration (0.90–0.95 s), and "
        "20× would need the whole iteration in 0.045 s. sb3-contrib with a shared LSTM and 64 envs is faster "
        "than the target assumed.",
        "- Trainer against the floor (met in three of four bench runs on 2026-11-26, T-maze 1.501×, 1.443×, "
        "1.442×, 1.483× and CartPole 1.391×, 1.361×, 1.354×, 1.312×; with the staleness diagnostic off "
        "1.28–1.45×; so on the T-maze the margin is within the runs' spread). The "
        "trainer and the floor are now timed in alternating rounds; before, the floor was taken minutes "
        "after the trainer on a machine whose speed drifts by 10–30%, which is how the earlier session's "
        "1.56–1.62× were measured (with the rollout then at 70–74 ms). Per 8,192 T-maze steps the rollout takes "
        "about 50 ms (was 70–74) where env stepping plus one "
        "forward per step take about 20, and the learner about 150–170 ms where the fused forward+backward and "
        "optimizer steps take 120–135. What moved the rollout: the C++ LSTM step (below; 75 → 58 ms), "
        "single-choice sampling and scoring without the split/cat loop, buffer field views made once, "
        "final values written only at truncated steps (zeroed per rollout), the state store reset only when "
        "some episode starts and by a 0/1 multiply instead of `masked_fill`, and one `isfinite` pass per env "
        "output field (58 → 50 ms). What is left: the policy step runs about 30% slower inside the rollout "
        "than alone (probably the env's work between steps evicting its weights and activations from cache), sampling "
        "~40 µs per step, buffer writes ~30 µs and the store ~30 µs. The learner pays ~1.05–1.1× for exact "
        "resets at these small minibatches and ~0.5 ms per minibatch for the PPO loss and the categorical "
        "log-probabilities (about 60 small ops forward and backward; `log_softmax` over 2 actions alone is "
        "0.1 ms). The staleness diagnostic adds ~7 ms per iteration (four replays of 16 segments).",
        "- Rollout step: on the CPU `LSTMCore.step` runs the C++ step (`policy/kernels/scan_cpu.cpp`: per layer "
        "the input GEMM with both biases, the recurrent GEMM in place and one fused elementwise pass, all "
        "layers in one call; the scan's math, so replay reproduces the rollout's state). `nn.LSTM` with T=1 "
        "pays about 60 µs of fixed per-call work (76 µs for 5 agents × hidden 32, where the C++ step takes 12), "
        "so at the end-to-end shape (64 agents, hidden 64) the step takes half the time; at 256–1024 agents "
        "both are the same GEMMs and measure within noise of each other (0.89–1.11× over three runs). The step is used "
        "only without autograd (the rollout, evaluation); with gradients `nn.LSTM` runs. Sampling is "
        "Gumbel-max and returns the log-probabilities in the same call. The buffer is preallocated and "
        "there is no `.item()` per step, but small per-step tensors are still allocated by the ops "
        "themselves; only a captured graph (CUDA graphs) would remove them on a GPU.",
        "- MettaGrid against PufferLib (met in two of three whole bench runs on 2026-12-01, missed at one setting "
        "in the other; missed in both runs on 2026-12-07, 1.16 / 1.26 / 1.15 / 1.21× and 1.21 / 1.14 / 1.08 / "
        "1.10×, while the machine ran everything slower than on 12-01, PufferLib included, and in both on 2026-12-08 "
        "with a worker per batch, 1.18 / 1.14 / 1.21 / 1.14× and 1.30 / 1.15 / 1.09 / 1.04×; with "
        "`env.shared_workers` (runs 3 to 6 of 12-08) 1.26 / 1.51 / 1.31 / 1.26×, 1.33 / 1.18 / 1.30 / 1.32×, "
        "1.31 / 1.43 / 1.12 / 1.48× and 1.48 / 1.29 / 1.13 / 1.24×: met at 13 of 16). Ratios at 4/8 maps × "
        "1/2 epochs "
        "on 12-01: run 1 1.30 / 1.34 / 1.06 / 1.25×, run 2 1.23 / 1.29 / "
        "1.24 / 1.26×, run 3 1.33 / 1.32 / 1.31 / 1.41× (`results/mettagrid_cpu_12-01_run*.json`, run 3 was "
        "`mettagrid_cpu.json` then); a separate 5-round measurement of the "
        "setting run 1 missed (4 maps, 2 epochs) gave 1.20× (`results/mettagrid_cpu_12-01_run1.json`, "
        "`_run2.json`). PufferLib's own rounds spread by up to 20% within a run, and run 1's carrystate rounds at "
        "that setting were the slowest measured (14.3k against 19.2–19.4k in the other three). On 2026-11-30 "
        "the ratios were 0.87–1.05×, and before issue 16 the token encoder ran at 0.25–0.35×. What moved it: "
        "the token encoder's sum is C++ on the CPU (`policy/kernels/tokens_cpu.cpp`), read straight from the "
        "uint8 tokens with no index lists, and its backward adds each row's gradient into the rows its tokens "
        "picked, split by table column, with no sort. A minibatch's forward+backward went 435 ms (pooled encoder) "
        "→ 40–88 ms (`nn.EmbeddingBag`) → 12–25 ms, now 0.46–0.82× the MLP that PufferLib runs on the flattened "
        "tokens. Before that: observations stay uint8 in the buffer; workers write into shared memory; Adam is "
        "fused (`trainer.fused_adam`: 1.4 ms a step against 6.5–13.7). What is left, per iteration: the learner is "
        "40–60% of the time, at parity with PufferLib's per minibatch (the LSTM's forward+backward is the same "
        "GEMMs as the fused call: per step a [96, 128] × [128, 512] product each way); the rollout's LSTM step is "
        "GEMM-bound at 48 rows per lane (0.26 ms); waking a worker through its pipe costs 0.1–0.7 ms per step "
        "depending on what else runs. Among the layouts with a worker per batch the fastest changed from run to run "
        "(1 worker + double buffer at 8 maps in runs 2 and 3 of 12-01, in process in run 1); one worker shared by "
        "both batches (`env.shared_workers`, what the config now ships) was the fastest in all eight runs of 12-08 "
        "that measured it.",
        _bf16_paragraph(results),
        "- Threads. Both trainers run with one torch thread, and PufferLib steps its maps in its own process "
        "(serial, its faster layout here), so it uses one core where carrystate's env worker takes the second. At "
        "2 torch threads PufferLib ran 1.07–1.29× its 1-thread speed over the eight settings and precisions (one "
        "20-second run of each, alternating: `bash benchmarks/pufferlib_threads.sh`, "
        "`results/pufferlib_threads_cpu.jsonl`). The ratios above are at one thread each; carrystate has no setting "
        "that gives its learner the second core while the env worker waits.",
        "",
        "## How to run",
        "",
        "```bash",
        "carrystate bench                     # CPU: learner, memory, end to end; rewrites BENCHMARKS.md",
        "carrystate bench --quick             # a smaller grid (about 2 minutes)",
        "python -m benchmarks.learner --help        # from the checkout root",
        "bash benchmarks/gpu_run.sh           # on a CUDA machine: triton tests, tile tuning, learner, checks; save "
        "gpu_learner.json as",
        "                                     # benchmarks/results/learner_cuda_<gpu>.json, then carrystate bench "
        "--report-only",
        "```",
        "",
    ]
    kept = _foreign_sections(markdown)
    markdown.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def _foreign_sections(markdown: Path) -> str:
    """Sections of an existing BENCHMARKS.md that this module does not write."""
    if not markdown.exists():
        return ""
    text = markdown.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    return "".join(p for p in parts if p.startswith("## ") and not p.startswith(OWN))
