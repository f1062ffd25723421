"""Readable axes (issue 28): every agent-step axis of report.html and of the experiment plots carries compact labels
(500, 50k, 1.5M, 1.2B: no offset, no scientific notation), and no two tick labels of an axis overlap, as drawn
(their text extents on the Agg canvas). The report is rendered from a run folder written by the trainer's own
Monitor, with the scalars of a long run (5M agent-steps, and a short and a very long one beside it)."""

from __future__ import annotations

import importlib.util
import re
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from carrystate import report
from carrystate.metrics import rollout_metrics
from carrystate.monitor import Monitor
from carrystate.rollout import RolloutStats

ROOT = Path(__file__).resolve().parent.parent
COMPACT = re.compile(r"^(0|[1-9]\d{0,2}(\.\d+)?[kMBT]?)$")  # at most 3 digits before the unit, no offset

LOSSES = {
    "losses/policy_loss": (-0.02, 0.01),
    "losses/value_loss": (0.3, 0.05),
    "losses/entropy": (1.2, 0.1),
    "losses/approx_kl": (2e-3, 5e-4),
    "losses/clipfrac": (0.1, 0.02),
    "losses/explained_variance": (0.6, 0.1),
    "memory/state_distance": (0.05, 0.01),
    "memory/kl_first": (1e-4, 3e-5),
    "memory/kl_last": (1e-6, 3e-7),
    "memory/value_gap_first": (0.02, 0.005),
    "memory/value_gap_last": (1e-4, 3e-5),
    "memory/replay_rounding": (1e-7, 2e-8),
}


def write_run(run_dir: Path, iterations: int, batch: int) -> None:
    """The TensorBoard events of a run of `iterations` iterations of `batch` agent-steps each, written as the
    trainer writes them (Monitor.record after every iteration), with every scalar a real run logs."""
    rng = np.random.default_rng(0)
    monitor = Monitor(iterations * batch, quiet=True)
    monitor.open(run_dir)
    for i in range(1, iterations + 1):
        progress = i / iterations
        stats = RolloutStats(
            steps=batch // 32,
            env_seconds=0.4 + 0.05 * rng.random(),
            seconds=0.7 + 0.05 * rng.random(),
            episode_returns=list(np.tanh(3 * progress) + 0.1 * rng.standard_normal(8)),
            episode_lengths=[1000] * 8,
            success=list((rng.random(8) < progress).astype(float)),
        )
        losses = {k: mean + sd * rng.standard_normal() for k, (mean, sd) in LOSSES.items()}
        losses["perf/learn_seconds"] = 0.3 + 0.05 * rng.random()
        buffer = SimpleNamespace(rewards=torch.full((64, 32), 0.01 * progress), valid=torch.ones(64, 32))
        metrics = {**rollout_metrics(stats, buffer), **losses, "charts/SPS": 45_000 + 3_000 * rng.random()}
        metrics["charts/learning_rate"] = 3e-4 * (1 - progress)
        monitor.record(i * batch, stats, metrics)
    monitor.close()


def drawn(fig):
    """`fig` drawn on an Agg canvas (as savefig draws it), and the renderer that drew it."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def tick_labels(axis) -> list:
    """The tick labels `axis` shows: major and minor, inside the view, with text."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * (hi - lo)
    shown = []
    for locs, ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks),
        (axis.get_minorticklocs(), axis.get_minor_ticks),
    ):
        for loc, tick in zip(locs, ticks(len(locs))):
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text() and lo - tol <= loc <= hi + tol:
                    shown.append(label)
    return shown


def overlaps(texts, renderer) -> list[tuple[str, str]]:
    """The pairs of `texts` whose drawn extents overlap."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [
        (a, b)
        for (a, ba), (b, bb) in combinations(boxes, 2)
        if ba.x0 < bb.x1 and bb.x0 < ba.x1 and ba.y0 < bb.y1 and bb.y0 < ba.y1
    ]


def check_figure(fig, name: str, steps: str) -> list[tuple[str, list[str]]]:
    """No two tick labels of any axis of `fig` overlap, nor two axes titles; the axes of agent-steps are labelled
    compactly: every x axis (`steps` "x"), every x and y axis ("both"), or the x axes labelled agent-steps
    ("labelled"). Returns (x or y, labels) of those step axes."""
    renderer = drawn(fig)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert not overlaps(titles, renderer), f"{name}: titles overlap: {overlaps(titles, renderer)}"
    step_labels = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = tick_labels(axis)
            where = f"{name}, {ax.get_title()!r}, {axis.axis_name} axis {[t.get_text() for t in labels]}"
            assert not overlaps(labels, renderer), f"{where}: tick labels overlap"
            if {"x": axis is ax.xaxis, "both": True, "labelled": axis is ax.xaxis and ax.get_xlabel() == "agent-steps"}[
                steps
            ]:
                texts = [t.get_text() for t in labels]
                assert len(texts) >= 3, where
                assert all(COMPACT.match(t) for t in texts), f"{where}: not compact"
                assert axis.get_offset_text().get_text() == "", f"{where}: offset {axis.get_offset_text()}"
                step_labels.append((axis.axis_name, texts))
    return step_labels


@pytest.mark.parametrize(
    ("iterations", "batch", "unit"),
    [(102, 49_152, "M"), (50, 8_192, "k"), (100, 12_000_000, "B")],
    ids=["5M", "410k", "1.2B"],
)
def test_report_axes_are_compact_and_no_tick_labels_overlap(tmp_path, iterations, batch, unit):
    run_dir = tmp_path / "run"
    write_run(run_dir, iterations, batch)
    scalars = report.read_scalars(run_dir)
    assert scalars["charts/SPS"][0][-1] == iterations * batch
    sections = report.sections(scalars)
    assert [s.heading for s in sections] == [
        "Episodic return and success rate",
        "Throughput and time split",
        "Losses",
        "Staleness of carried state",
        "Other scalars",
    ]
    figures = [(alt, fig) for s in sections for alt, fig in s.figures]
    assert len(figures) == 8  # results; SPS; time split; 2 rows of losses; 2 of staleness; 1 of the others
    for alt, fig in figures:
        # agent-steps along every x axis; the SPS plot's values are agent-steps (per second) too
        step_labels = check_figure(fig, alt, "both" if alt == "charts/SPS" else "x")
        assert [a for a, _ in step_labels].count("x") == len(fig.axes)
        for axis, texts in step_labels:
            assert axis == "y" or any(t.endswith(unit) for t in texts), f"{alt}: {texts}"
    if unit == "M":
        assert (report.write(run_dir)).is_file()


def load_experiments_report(monkeypatch, tmp_path):
    """experiments/report.py as a module, its plots going to `tmp_path` and kept (not closed) for the test."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("experiments_report", ROOT / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PLOTS", tmp_path)
    figures = []

    def keep(fig, name, alt):
        fig.tight_layout()
        figures.append((name, fig))
        return []

    monkeypatch.setattr(module, "_save_plot", keep)
    return module, figures


def test_experiment_plots_are_compact_and_no_tick_labels_overlap(monkeypatch, tmp_path):
    """Every plot experiments/report.py draws from the saved results, drawn at the size it saves them."""
    module, figures = load_experiments_report(monkeypatch, tmp_path)
    ran = 0
    for name, _, section in module.SECTIONS:
        rows = module.load(name)
        if rows:
            section(rows)
            ran += 1
    if not figures:
        pytest.skip("no saved experiment results to plot")
    try:
        for name, fig in figures:
            fig.set_dpi(100)  # as _save_plot saves them
            check_figure(fig, name, "labelled")
        assert sum(ax.get_xlabel() == "agent-steps" for _, fig in figures for ax in fig.axes) > 0
    finally:
        import matplotlib.pyplot as plt

        for _, fig in figures:
            plt.close(fig)


@pytest.mark.parametrize(
    ("steps", "label"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1k"),
        (1500, "1.5k"),
        (50_000, "50k"),
        (100_000, "100k"),
        (999_999, "1M"),
        (1_500_000, "1.5M"),
        (5_000_000, "5M"),
        (5_013_504, "5.01M"),
        (1_200_000_000, "1.2B"),
    ],
)
def test_compact_steps(steps, label):
    assert report.compact_steps(steps) == label


def test_step_formatter_labels_each_tick_exactly_with_the_fewest_decimals():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    report.steps_axis(ax)
    formatter = ax.xaxis.get_major_formatter()
    assert formatter.format_ticks([0, 500_000, 1_000_000, 1_500_000]) == ["0", "500k", "1M", "1.5M"]
    assert formatter.format_ticks([1_000_000, 1_250_000, 1_500_000]) == ["1M", "1.25M", "1.5M"]
    assert formatter.format_ticks([48_000, 48_005, 48_010]) == ["48k", "48.005k", "48.01k"]
    assert formatter.format_ticks([0, 2e9, 4e9]) == ["0", "2B", "4B"]
