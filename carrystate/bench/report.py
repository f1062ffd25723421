"""Render BENCHMARKS.md from the JSON results in benchmarks/results/ (CPU runs here, CUDA runs from a GPU).

Sections this module does not generate (e.g. "## Data-parallel (torch.distributed)") are kept as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OWN = ("## Learner", "## Learner memory", "## End to end", "## Targets", "## How to run")
IMPLS = ["bucketed", "scan", "chunked", "packed", "loop", "loop_graphed", "torchrl"]


def _fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def _learner_table(rows: list[dict]) -> list[str]:
    present = [i for i in IMPLS if any(i in r for r in rows)]
    head = "| hidden | horizon | rows | resets | fused ms | " + " | ".join(f"{i} ×fused" for i in present) + " |"
    out = [head, "|" + "---|" * (5 + len(present))]
    for r in rows:
        f = r.get("fused")
        cells = [_fmt(r[i] / f if r.get(i) and f else None) for i in present]
        out.append(f"| {r['hidden']} | {r['horizon']} | {r['rows']} | {r['resets']} | {_fmt(f)} | " + " | ".join(cells) + " |")
    return out


def _memory_table(rows: list[dict]) -> list[str]:
    out = ["| horizon | rows (16,384 steps) | episode length | saved for backward MiB | CUDA peak MiB |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['horizon']} | {r['rows']} | {r['episode_len']} | {r['saved_MiB']:.1f} | {_fmt(r.get('peak_MiB'), '.1f')} |")
    return out


def _best_exact(rows: list[dict]) -> list[tuple[dict, str, float]]:
    best = []
    for r in rows:
        ratios = {i: r[i] / r["fused"] for i in IMPLS if r.get(i) and i != "torchrl"}
        name = min(ratios, key=ratios.get)
        best.append((r, name, ratios[name]))
    return best


def write(markdown: Path, results: Path) -> None:
    cpu = json.loads((results / "learner_cpu.json").read_text()) if (results / "learner_cpu.json").exists() else None
    cuda = sorted(results.glob("learner_cuda_*.json"))
    e2e = json.loads((results / "end_to_end_cpu.json").read_text()) if (results / "end_to_end_cpu.json").exists() else None
    lines = ["# Benchmarks", "",
             "Written by `carrystate bench` (CPU) from `benchmarks/results/*.json`; the CUDA rows come from "
             "`benchmarks/gpu_run.sh` on a lent GPU machine. Times are medians over repeats; every ratio compares "
             "numbers measured side by side in the same run. `fused` is one `nn.LSTM` call over the whole "
             "segment that ignores resets (the leaky fast path); every other column applies the resets exactly.", ""]
    lines += ["## Learner: forward+backward of one minibatch of segments", "",
              "About one episode end per 50 steps per row (`resets` counts them). `bucketed` (the default) splits rows "
              "into episode fragments and runs them as a few dense fused calls grouped by length; `scan` is a step "
              "loop with a hand-written backward in which a reset is one multiply of the state (LSTM only); `chunked` cuts "
              "the segment at every step where some row resets; `packed` uses a packed sequence; `loop` steps one "
              "timestep at a time with masks; `loop_graphed` is that loop captured as CUDA graphs; `torchrl` is "
              "torchrl's `LSTMModule` in recurrent mode.", ""]
    if cpu:
        lines += [f"### CPU: {cpu['info']['device']}, torch {cpu['info']['torch']}, measured {cpu['info'].get('date', '?')}", ""] + _learner_table(cpu["learner"]) + [""]
    for path in cuda:
        data = json.loads(path.read_text())
        lines += [f"### CUDA: {data['info']['device']}, torch {data['info']['torch']}, measured {data['info'].get('date', '?')}", ""] + _learner_table(data["learner"]) + [""]
    lines += ["## Learner memory against bptt_horizon", "",
              "Fixed minibatch of 16,384 agent-steps (rows = 16,384 / horizon), hidden 128. Bytes autograd saves for "
              "backward, and on CUDA the peak allocation of forward+backward. Memory stays flat as the horizon "
              "grows from 16 to 1024 and does not grow with episode length. The CPU rows use the default unroll "
              "(`scan`), whose saved tensors do not depend on where episodes end at all. `bucketed`, the CUDA "
              "default, adds only the padding of its length buckets (at most 2× a fragment).", ""]
    if cpu and cpu.get("memory"):
        lines += ["CPU:", ""] + _memory_table(cpu["memory"]) + [""]
    for path in cuda:
        data = json.loads(path.read_text())
        if data.get("memory"):
            lines += [f"{data['info']['device']}:", ""] + _memory_table(data["memory"]) + [""]
    if e2e:
        lines += ["## End to end: agent-steps per second of whole training", "",
                  "64 envs, 8,192-step rollouts, 64-step segments, 2,048-step minibatches, 4 epochs, LSTM 64 after a "
                  "64-unit encoder; sb3-contrib `RecurrentPPO` with `n_envs=64, n_steps=128, batch_size=2048, "
                  "n_epochs=4, lstm_hidden_size=64, net_arch=[64], shared_lstm=True, enable_critic_lstm=False`. "
                  "One torch thread each. The floor is env stepping + one fused forward per rollout step + a fused "
                  "forward+backward and optimizer step per minibatch of every epoch.", "",
                  "| task | carrystate SPS | sb3-contrib SPS | speedup | s/iteration | floor s/iteration (env / forward / learn) | over floor | over floor, staleness diagnostic off |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, r in e2e.items():
            c, s, fl = r["carrystate"], r["sb3_recurrent_ppo"], r["carrystate"]["floor_seconds_per_iteration"]
            lines.append(f"| {task} | {c['sps']:,.0f} | {_fmt(s and s['sps'], ',.0f')} | {_fmt(r['speedup'])}× | "
                         f"{c['seconds_per_iteration']:.3f} | {fl['total']:.3f} ({fl['env']:.3f} / {fl['forward']:.3f} / "
                         f"{fl['learn']:.3f}) | {c['over_floor']:.2f}× | {_fmt(c.get('over_floor_without_diagnostics'))}× |")
        lines.append("")
    lines += ["## Targets", ""]
    for label, data in ([("CPU", cpu)] if cpu else []) + [(json.loads(p.read_text())["info"]["device"], json.loads(p.read_text())) for p in cuda]:
        best = _best_exact(data["learner"])
        worst = max(b[2] for b in best)
        lines.append(f"- Learner with exact resets ≤ 1.2× fused, {label}: best exact unroll per shape ranges "
                     f"{min(b[2] for b in best):.2f}–{worst:.2f}× ({'met' if worst <= 1.2 else 'missed'}); "
                     + ", ".join(f"h{r['hidden']}/T{r['horizon']}/B{r['rows']}: {n} {x:.2f}×" for r, n, x in best) + ".")
    if e2e:
        sp = [r["speedup"] for r in e2e.values() if r["speedup"]]
        of = [r["carrystate"]["over_floor"] for r in e2e.values()]
        lines.append(f"- End to end ≥ 20× sb3-contrib: measured {', '.join(f'{x:.1f}×' for x in sp)} "
                     f"({'met' if sp and min(sp) >= 20 else 'missed'}).")
        lines.append(f"- Trainer ≤ 1.5× the floor: measured {', '.join(f'{x:.2f}×' for x in of)} "
                     f"({'met' if max(of) <= 1.5 else 'missed'}).")
    lines += ["", "### What stands in the way", "",
              "- CPU learner (best exact 1.18–1.39× the leaky call): both exact unrolls land at 1.2–1.5×. The "
              "default for an LSTM on the CPU, `scan`, runs about 10 elementwise ops per step forward and 6 backward "
              "as separate PyTorch calls, where oneDNN's fused LSTM runs its whole loop in one kernel with better "
              "GEMM efficiency. `bucketed` pays for padding its length buckets and for gathering and scattering the "
              "fragments. A fused CPU kernel that takes a per-step reset mask (C++ or a compiled scan) would close "
              "the gap; it is not built here.",
              "- GPU learner (3–10× at 64–256 steps): each cuDNN call costs a fixed 0.3–1 ms at these sizes, and "
              "the buckets need several calls plus host syncs for the fragment lengths. The per-step loop captured "
              "as CUDA graphs wins at 16 steps (0.64× at hidden 256, faster than cuDNN's own call) but falls behind "
              "as the horizon grows, and its capture failed at hidden 256, horizon 256, 1024 rows. Meeting 1.2× "
              "needs a persistent fused LSTM kernel (Triton or CUDA) that takes the reset mask, forward and "
              "backward. It is not built here.",
              "- End to end against sb3-contrib (2.6–3.0×): the floor alone allows 37–55k agent-steps/s "
              "on the T-maze here (8,192 steps in 0.15–0.22 s across runs), which is 4–6× sb3-contrib's 8–10k. So "
              "20× is out of reach at these settings on this CPU, whatever the trainer does. sb3-contrib with a "
              "shared LSTM and 64 envs is faster than the target assumed.",
              "- Trainer against the floor (1.6–2.1× here; 1.5–2.2× over three bench runs this day, with the "
              "floor's learn part itself ranging 0.12–0.19 s between runs minutes apart): the learner pays 1.2–1.5× "
              "for exact resets at these small minibatches (32 segments of hidden 64) plus the PPO loss, gradient "
              "clipping and minibatch gathers. The rollout pays per-step Python work for sampling, buffer writes, "
              "the state store and env output checks. The staleness diagnostic costs 3–16% of an iteration.",
              "- Rollout step: sampling is Gumbel-max, and it returns the log-probabilities in the same call. The "
              "state is masked with `masked_fill`, and the state the store already zeroed is not masked twice. "
              "A T-maze rollout of 8,192 steps went from 89–92 to 73–74 ms (three alternating runs). "
              "`torch.lstm_cell` with the LSTM's weights was 1.6× faster than `nn.LSTM` with T=1 at 64 agents and "
              "hidden 64, but 1.2× slower at 1024 agents and hidden 128, so the rollout keeps `nn.LSTM`. The "
              "buffer is preallocated and there is no `.item()` per step, but small per-step tensors are still "
              "allocated by the ops themselves; only a captured graph (CUDA graphs) would remove them.",
              "", "## How to run", "",
              "```bash",
              "carrystate bench                     # CPU: learner, memory, end to end; rewrites BENCHMARKS.md",
              "carrystate bench --quick             # a smaller grid (about 2 minutes)",
              "python -m carrystate.bench.learner --help",
              "bash benchmarks/gpu_run.sh           # on a CUDA machine: checks + learner; save gpu_learner.json as",
              "                                     # benchmarks/results/learner_cuda_<gpu>.json, then carrystate bench --report-only",
              "```", ""]
    kept = _foreign_sections(markdown)
    markdown.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def _foreign_sections(markdown: Path) -> str:
    """Sections of an existing BENCHMARKS.md that this module does not write."""
    if not markdown.exists():
        return ""
    text = markdown.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    return "".join(p for p in parts if p.startswith("## ") and not p.startswith(OWN))
