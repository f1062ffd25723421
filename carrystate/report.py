"""The run's HTML report: `runs/<run>/report.html`, plots of what the run logged, read back from its TensorBoard
events (so it serves a finished run, a running one and a stopped one alike).

Self-contained: every plot is a PNG (matplotlib's Agg canvas) embedded as a base64 data URI; no script, no
network. Sections: episodic return and success rate against agent-steps; throughput (SPS) and where an
iteration's time went (env, policy, learner); the losses; the staleness of carried state (`memory/*`, see
diagnostics.py), each with its meaning; and any other scalar the run logged.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

REPORT_NAME = "report.html"

RESULTS = ("charts/episodic_return", "charts/success_rate")
TIME_SPLIT = ("perf/env_seconds", "perf/policy_seconds", "perf/learn_seconds")
MEANINGS = {
    "charts/episodic_return": "Mean undiscounted return of the episodes that ended in the iteration's rollout.",
    "charts/success_rate": "Fraction of the rollout's ended episodes that the task counts as solved.",
    "charts/SPS": "Agent-steps per second since the run (or its resume) started, rollout and update included.",
    "perf/env_seconds": "Seconds of the iteration's rollout spent stepping the environments.",
    "perf/policy_seconds": "Seconds of the iteration's rollout spent in the policy (choosing actions).",
    "perf/learn_seconds": "Seconds of the iteration spent in the update (advantages, epochs, diagnostics).",
    "losses/policy_loss": "PPO's clipped surrogate loss (lower is better for the policy).",
    "losses/value_loss": "Squared error of the value head against the GAE returns (clipped when clip_vloss).",
    "losses/entropy": "Mean entropy of the action distribution: how much the policy still explores.",
    "losses/approx_kl": "Approximate KL between the rollout policy and the updated one: how far an update moved.",
    "losses/clipfrac": "Fraction of samples whose probability ratio left the PPO clip range.",
    "losses/explained_variance": "How much of the returns' variance the rollout's value estimates explain (1: all).",
    "memory/state_distance": "Relative distance (0 to 2) between a segment's start state recomputed with the "
    "updated weights and with the rollout's weights: how stale a stored start state is after the update.",
    "memory/kl_first": "KL between the updated policy's actions from the fresh and from the stale start state, at "
    "the first step of a segment: what the staleness costs the policy there.",
    "memory/kl_last": "The same KL at the segment's last step: whether the stale start state still matters after "
    "a whole segment.",
    "memory/value_gap_first": "R2D2's value discrepancy |V(stale) - V(fresh)| / max |V(fresh)| at a segment's "
    "first step.",
    "memory/value_gap_last": "The same value discrepancy at the segment's last step.",
    "memory/replay_rounding": "Float rounding between the rollout's batched steps and the replay of a segment (not "
    "staleness; near 1e-7, larger means the replay does not reproduce the rollout).",
}


class ReportError(ValueError):
    """The folder is not a run folder (no TensorBoard events), or its events cannot be read."""


def read_scalars(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag in `run_dir`/tb: tag -> (agent-steps, values), in step order (a resumed run's events
    files together, the later value kept where a step repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir / "tb"
    files = sorted(tb.glob("events.out.tfevents.*")) if tb.is_dir() else []
    if not files:
        raise ReportError(f"{run_dir} is not a run folder: no TensorBoard events in {tb}")
    series: dict[str, dict[int, float]] = {}
    for file in files:  # each resume writes its own file; EventAccumulator on the folder would mix them
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        try:
            events.Reload()
        except Exception as err:  # noqa: BLE001 (a damaged file: say which)
            raise ReportError(f"cannot read {file}: {type(err).__name__}: {err}") from None
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return {tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in series.items()}


def _png(panels: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], stacked: bool = False) -> str:
    """A row of panels (title, [(label, x, y)]) as a PNG data URI; `stacked`: areas summed (the time split)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(panels), 3.2), dpi=90, layout="constrained")
    for ax, (title, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        if stacked:
            ax.stackplot(lines[0][1], *[y for _, _, y in lines], labels=[label for label, _, _ in lines], alpha=0.8)
        else:
            for label, x, y in lines:
                ax.plot(x, y, marker="." if len(x) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("agent-steps")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _meanings(tags: list[str]) -> str:
    items = "".join(
        f"<li><code>{html.escape(t)}</code>: {html.escape(MEANINGS.get(t, 'logged by the run.'))}</li>" for t in tags
    )
    return f"<ul>{items}</ul>"


def _panels(scalars, tags: list[str], per_row: int = 3) -> str:
    rows = [tags[i : i + per_row] for i in range(0, len(tags), per_row)]
    return "".join(
        f'<img alt="{html.escape(", ".join(row))}" src="{_png([(t, [(t, *scalars[t])]) for t in row])}">'
        for row in rows
    )


def render(run_dir: Path) -> str:
    """The report of `run_dir` as one HTML page (see the module doc)."""
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    shown: set[str] = set()
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>carrystate report: {html.escape(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;display:block;margin:.5em 0}td,th{padding:.2em .8em;text-align:left}</style>",
        f"</head><body><h1>Run {html.escape(run_dir.name)}</h1>",
    ]
    parts.append(_overview(run_dir, scalars))

    parts.append("<h2>Episodic return and success rate</h2>")
    results = [t for t in RESULTS if t in scalars]
    shown.update(results)
    if results:
        parts.append(_panels(scalars, results) + _meanings(results))
    else:
        parts.append("<p>No episode ended in the logged iterations.</p>")

    parts.append("<h2>Throughput and time split</h2>")
    split = [t for t in TIME_SPLIT if t in scalars]
    shown.update(split + ["charts/SPS"])
    panels = []
    if "charts/SPS" in scalars:
        panels.append(("charts/SPS", [("SPS", *scalars["charts/SPS"])]))
    if split:
        x = scalars[split[0]][0]
        panels.append(
            ("seconds per iteration: env, policy, learner", [(t.split("/")[1], x, scalars[t][1]) for t in split])
        )
    if panels:
        for title, lines in panels:
            stacked = title.startswith("seconds")
            parts.append(f'<img alt="{html.escape(title)}" src="{_png([(title, lines)], stacked=stacked)}">')
        parts.append(_meanings([t for t in ("charts/SPS", *split) if t in scalars]))

    for heading, prefix, empty in (
        ("Losses", "losses/", "No losses logged."),
        (
            "Staleness of carried state",
            "memory/",
            "Not measured (diagnostics.staleness_segments=0, a memoryless core, or one segment per agent).",
        ),
    ):
        tags = sorted(t for t in scalars if t.startswith(prefix))
        shown.update(tags)
        parts.append(f"<h2>{heading}</h2>")
        parts.append(_panels(scalars, tags) + _meanings(tags) if tags else f"<p>{html.escape(empty)}</p>")

    other = sorted(set(scalars) - shown)
    if other:
        parts.append("<h2>Other scalars</h2>" + _panels(scalars, other))
    parts.append("</body></html>")
    return "\n".join(parts)


def _overview(run_dir: Path, scalars) -> str:
    """What the run is (env, core, steps logged) and, once it has ended, its summary."""
    rows = []
    if (run_dir / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        env, policy = cfg.get("env", {}), cfg.get("policy", {})
        rows.append(("environment", f"{env.get('name')} ({env.get('num_envs')} copies)"))
        rows.append(("policy", f"{policy.get('core')}, hidden {policy.get('hidden_size')}"))
    steps = max((int(x[-1]) for x, _ in scalars.values()), default=0)
    iterations = max((len(x) for x, _ in scalars.values()), default=0)
    rows.append(("logged", f"{iterations} iterations, {steps:,} agent-steps"))
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        rows.append(("final mean return (last 200 episodes)", f"{s.get('mean_return', float('nan')):.3f}"))
        if s.get("success_rate") is not None:
            rows.append(("final success rate", f"{s['success_rate']:.1%}"))
        if s.get("interrupted"):
            rows.append(("stopped by", s["interrupted"]))
    else:
        rows.append(("state", "running, or ended without a summary"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write(run_dir: Path | str) -> Path:
    """Write `run_dir`/report.html (atomically: a reader never sees half a page) and return its path."""
    run_dir = Path(run_dir)
    page = render(run_dir)
    out, tmp = run_dir / REPORT_NAME, run_dir / f".{REPORT_NAME}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
