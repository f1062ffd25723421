"""Benchmarks: the learner's unrolls against the fused call and torchrl, whole training against sb3-contrib
and against the floor, learner memory against the horizon, MettaGrid training against PufferLib (when
mettagrid is installed); `run` writes BENCHMARKS.md from the results.

They live outside the package, at the top of a checkout, and use carrystate's public API; `carrystate bench`
runs them. Each part also has its own command line, run from the checkout root
(`python -m benchmarks.learner --help`).
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch


def run(
    out_dir: Path,
    quick: bool = False,
    markdown: Path | None = None,
    only: str | None = None,
    pufferlib_python: str | None = None,
) -> dict:
    """Run the CPU benchmarks (or `only` one part: learner, end_to_end, mettagrid), save their JSON under
    `out_dir`, and write `markdown` (BENCHMARKS.md) from every part's saved results."""
    from . import end_to_end, learner, report

    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    info = {
        "device": f"CPU {platform.machine()} ({_cpu_name()}), {torch.get_num_threads()} torch thread",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    results = {}
    if only in (None, "learner"):
        hiddens, horizons = ([128], [16, 64]) if quick else ([128, 256], [16, 64, 256])
        results["learner"] = cpu = {
            "info": info,
            "rollout_step": learner.bench_rollout_step(device, repeats=3 if quick else 7),
            "memory": learner.bench_memory(device, 128, [16, 64, 256, 1024], 16384, [20, 200, 0], "auto"),
            "learner": learner.bench_learner(device, hiddens, horizons, 256, 3 if quick else 7),
        }
        (out_dir / "learner_cpu.json").write_text(json.dumps(cpu, indent=1))
    if only in (None, "end_to_end"):
        results["end_to_end"] = e2e = end_to_end.run_all(
            iterations=2 if quick else 5, sb3_iterations=1 if quick else 2, rounds=4 if quick else 10
        )
        (out_dir / "end_to_end_cpu.json").write_text(json.dumps(e2e, indent=1))
    if only in (None, "mettagrid") and _has_mettagrid():
        from . import mettagrid

        settings = mettagrid.SETTINGS[:1] if quick else mettagrid.SETTINGS
        results["mettagrid"] = mg = mettagrid.run_all(1 if quick else 3, pufferlib_python, settings)
        mg["info"] = info
        (out_dir / "mettagrid_cpu.json").write_text(json.dumps(mg, indent=1))
    if markdown is not None:
        report.write(markdown, out_dir)
    return results


def _has_mettagrid() -> bool:
    try:
        import mettagrid  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
