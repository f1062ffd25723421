"""The run's HTML report: `runs/<run>/report.html`, plots of what the run logged, read back from its TensorBoard
events (so it serves a finished run, a running one and a stopped one alike).

Self-contained: every plot is a PNG (matplotlib's Agg canvas) embedded as a base64 data URI; no script, no
network. Sections: episodic return and success rate against agent-steps; throughput (SPS) and where an
iteration's time went (env, policy, learner); the losses; the staleness of carried state (`memory/*`, see
diagnostics.py), each with its meaning; and any other scalar the run logged. Where the run folder holds
evaluation videos (`carrystate eval RUN --video N`, video.py), the first is shown too, linked by its path relative
to the page (`videos/eval_episode_0.mp4`); nothing is said of videos where there are none.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carrystate.errors import ReportError
from carrystate.metrics import METRICS, RESULTS, TIME_SPLIT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"


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


_UNITS = ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T"))


def _compact(x: float, decimals: int) -> tuple[str, float]:
    """`x` as a compact label with at most `decimals` decimals of its unit, and the value the label stands for."""
    size, unit = 1.0, ""
    for s, u in _UNITS:
        if abs(x) >= s:
            size, unit = s, u
    v = round(abs(x) / size, decimals)
    if v >= 1000 and unit != _UNITS[-1][1]:  # 999,999 to no decimals is 1M, not 1000k
        size, unit = next((s, u) for s, u in _UNITS if s > size)
        v = round(abs(x) / size, decimals)
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    negative = x < 0 and v != 0
    return ("\N{MINUS SIGN}" if negative else "") + text + unit, -v * size if negative else v * size


def compact_steps(x: float, decimals: int = 2) -> str:
    """A count of agent-steps as a short label: 0, 999, 1k, 1.5k, 100k, 1.5M, 5M, 1.2B (at most `decimals`
    decimals of the unit, no trailing zeros)."""
    return _compact(x, decimals)[0]


@functools.cache
def _step_formatter_class():
    from matplotlib.ticker import Formatter

    class StepFormatter(Formatter):
        """compact_steps on an axis, with the fewest decimals that label each tick exactly (1.25M beside 1.5M)."""

        decimals = 2

        def set_locs(self, locs):
            super().set_locs(locs)
            locs = np.sort(np.asarray(locs, dtype=float))
            spacing = float(np.min(np.diff(locs))) if len(locs) > 1 else 1.0
            self.decimals = next(
                (d for d in range(7) if all(abs(_compact(x, d)[1] - x) <= 1e-3 * spacing for x in locs)), 6
            )

        def __call__(self, x, pos=None):
            return _compact(x, self.decimals)[0]

        def format_data(self, value):
            return compact_steps(value)

    return StepFormatter


def steps_axis(ax, which: str = "x") -> None:
    """Label the `which` axis of `ax` ("x", "y" or "both") as agent-steps: compact labels (0, 500, 50k, 1.5M,
    1.2B: no offset, no scientific notation) on ticks at 1, 2 or 5 times a power of ten, as many as the axis
    has room for. The one step formatter of the project's plots (report.html and experiments/)."""
    from matplotlib.ticker import MaxNLocator

    for axis in {"x": (ax.xaxis,), "y": (ax.yaxis,), "both": (ax.xaxis, ax.yaxis)}[which]:
        axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10]))
        axis.set_major_formatter(_step_formatter_class()())


Panel = tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]  # title, [(label, agent-steps, values)]


def figure(panels: list[Panel], stacked: bool = False, steps_y: bool = False) -> Figure:
    """A row of panels against agent-steps; `stacked`: areas summed (the time split); `steps_y`: the values
    are agent-steps too (per second: SPS), labelled as compactly."""
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
        steps_axis(ax, "both" if steps_y else "x")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    return fig


def _png(fig: Figure) -> str:
    """`fig` as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _meanings(tags: list[str]) -> str:
    items = "".join(
        f"<li><code>{html.escape(t)}</code>: {html.escape(METRICS.get(t, 'logged by the run.'))}</li>" for t in tags
    )
    return f"<ul>{items}</ul>"


def _rows(scalars, tags: list[str], per_row: int = 3) -> list[tuple[str, Figure]]:
    rows = [tags[i : i + per_row] for i in range(0, len(tags), per_row)]
    return [(", ".join(row), figure([(t, [(t, *scalars[t])]) for t in row])) for row in rows]


@dataclass
class Section:
    """A heading of the report, its plots (alt text, figure), the tags it explains and what it says without plots
    ("": nothing)."""

    heading: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    explained: list[str] = field(default_factory=list)
    empty: str = ""


def sections(scalars: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Section]:
    """The report's sections of `scalars` (read_scalars), figures drawn (see the module doc)."""
    shown: set[str] = set()
    out = []

    results = [t for t in RESULTS if t in scalars]
    shown.update(results)
    out.append(
        Section(
            "Episodic return and success rate",
            _rows(scalars, results),
            results,
            "No episode ended in the logged iterations.",
        )
    )

    split = [t for t in TIME_SPLIT if t in scalars]
    shown.update(split + ["charts/SPS"])
    throughput = Section("Throughput and time split", explained=[t for t in ("charts/SPS", *split) if t in scalars])
    if "charts/SPS" in scalars:
        throughput.figures.append(
            ("charts/SPS", figure([("charts/SPS", [("SPS", *scalars["charts/SPS"])])], steps_y=True))
        )
    if split:
        title, x = "seconds per iteration: env, policy, learner", scalars[split[0]][0]
        lines = [(t.split("/")[1], x, scalars[t][1]) for t in split]
        throughput.figures.append((title, figure([(title, lines)], stacked=True)))
    out.append(throughput)

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
        out.append(Section(heading, _rows(scalars, tags), tags, empty))

    other = sorted(set(scalars) - shown)
    if other:
        out.append(Section("Other scalars", _rows(scalars, other)))
    return out


def render(run_dir: Path) -> str:
    """The report of `run_dir` as one HTML page (see the module doc)."""
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>carrystate report: {html.escape(run_dir.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "img,video{max-width:100%;display:block;margin:.5em 0}td,th{padding:.2em .8em;text-align:left}</style>",
        f"</head><body><h1>Run {html.escape(run_dir.name)}</h1>",
        _overview(run_dir, scalars),
        _video(run_dir),
    ]
    for section in sections(scalars):
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.figures:
            parts += [f'<img alt="{html.escape(alt)}" src="{_png(fig)}">' for alt, fig in section.figures]
            parts += [_meanings(section.explained)] if section.explained else []
        elif section.empty:
            parts.append(f"<p>{html.escape(section.empty)}</p>")
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


def _video(run_dir: Path) -> str:
    """The run's first evaluation video (an HTML5 video for MP4, an image for GIF) under its heading, by a path
    relative to the page; "" where the run folder has none."""
    from carrystate.video import VIDEO_FOLDER, videos_in

    found = videos_in(run_dir / VIDEO_FOLDER)
    if not found:
        return ""
    first = found[0]
    src = html.escape(first.relative_to(run_dir).as_posix())
    more = f" ({len(found)} videos in <code>{VIDEO_FOLDER}/</code>)" if len(found) > 1 else ""
    if first.suffix == ".mp4":
        media = f'<video src="{src}" controls loop muted playsinline></video>'
    else:
        media = f'<img alt="evaluation episode" src="{src}">'
    return (
        f"<h2>Evaluation video</h2><p>Env copy 0's first evaluation episode, <code>{src}</code>{more}, written by "
        f"<code>carrystate eval RUN --video N</code>.</p>{media}"
    )


def write(run_dir: Path | str) -> Path:
    """Write `run_dir`/report.html (atomically: a reader never sees half a page) and return its path."""
    run_dir = Path(run_dir)
    page = render(run_dir)
    out, tmp = run_dir / REPORT_NAME, run_dir / f".{REPORT_NAME}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
