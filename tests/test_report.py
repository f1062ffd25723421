"""The run report: report.html at the end of a run and from `carrystate report`, self-contained (every image a
PNG data URI), with the expected sections; a folder that is not a run gets a one-line error."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser

import pytest

import carrystate
from carrystate import report
from carrystate.cli import main
from tests.helpers import SMALL_TMAZE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = [
    "Episodic return and success rate",
    "Throughput and time split",
    "Losses",
    "Staleness of carried state",
]


class Page(HTMLParser):
    """Headings, images and scripts of a page, as html.parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.scripts, self.links, self._in = [], [], 0, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2"):
            self._in = tag
            self.headings.append("")
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "link" or (tag != "img" and any(k in attrs for k in ("src", "href"))):
            self.links.append(attrs)

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.headings[-1] += data


def check_page(path) -> Page:
    page = Page(path.read_text())
    assert [h for h in page.headings if h in SECTIONS] == SECTIONS
    assert page.scripts == 0 and page.links == []  # nothing fetched, nothing run
    assert len(page.images) >= 4  # results, SPS, time split, losses (and staleness)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    return page


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tmaze-run"
    carrystate.train(None, SMALL_TMAZE, run_dir=run_dir, iterations=3)
    return run_dir


def test_a_finished_run_writes_a_self_contained_report(finished_run):
    page = check_page(finished_run / "report.html")
    assert "Run tmaze-run" in page.headings


def test_report_explains_every_staleness_metric_the_run_logged(finished_run):
    tags = report.read_scalars(finished_run)
    staleness = sorted(t for t in tags if t.startswith("memory/"))
    assert staleness  # the small T-maze run has 4 segments per agent: staleness is measured
    text = html.unescape((finished_run / "report.html").read_text())
    for tag in staleness:
        assert f"<code>{tag}</code>: {report.METRICS[tag]}" in text


def test_report_reads_back_what_the_run_logged(finished_run):
    trainer_steps = [512, 1024, 1536]
    scalars = report.read_scalars(finished_run)
    assert scalars["charts/SPS"][0].tolist() == trainer_steps
    assert {"perf/env_seconds", "perf/policy_seconds", "perf/learn_seconds", "losses/approx_kl"} <= set(scalars)


def test_cli_report_writes_one_for_a_run_without_it(finished_run, capsys):
    (finished_run / "report.html").unlink()
    assert main(["report", str(finished_run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {finished_run / 'report.html'}"
    check_page(finished_run / "report.html")


def test_cli_report_on_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"carrystate: {tmp_path} is not a run folder: no TensorBoard events in {tmp_path / 'tb'}\n"
    assert not (tmp_path / "report.html").exists()


def test_logging_report_false_writes_none(tmp_path):
    carrystate.train(None, [*SMALL_TMAZE, "logging.report=false"], run_dir=tmp_path / "run", iterations=1)
    assert (tmp_path / "run" / "summary.json").is_file()
    assert not (tmp_path / "run" / "report.html").exists()


def test_report_of_a_running_run_shows_the_iterations_logged_so_far(tmp_path):
    """Written from inside the run, right after each iteration is logged (before summary.json exists): the
    events reach the disk every iteration."""
    from carrystate.config import load_config
    from carrystate.trainer import Trainer

    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(None, [*SMALL_TMAZE, "logging.report=false"]), run_dir=run_dir, quiet=True)
    logged, record = [], trainer.monitor.record

    def record_then_report(step, *args, **kwargs):
        record(step, *args, **kwargs)
        assert not (run_dir / "summary.json").exists()
        report.write(run_dir)
        scalars = report.read_scalars(run_dir)
        assert set(scalars) == set(trainer.history[-1]) - {"step"}  # every tag of the iteration, none held back
        assert {tag: x[-1] for tag, (x, _) in scalars.items()} == dict.fromkeys(scalars, step)
        logged.append(scalars["charts/SPS"][0].tolist())

    trainer.monitor.record = record_then_report
    trainer.train(stop_after=2)
    assert logged == [[512], [512, 1024]]
    check_page(run_dir / "report.html")


def test_every_logged_scalar_has_a_meaning(tmp_path):
    from carrystate.metrics import METRICS

    tr = carrystate.train(
        None,
        [*SMALL_TMAZE, "trainer.total_timesteps=1024", "diagnostics.staleness_segments=4", "trainer.ent_coef_final=0"],
    )
    logged = {k for row in tr.history for k in row if k != "step"}
    assert logged <= set(METRICS), logged - set(METRICS)
    split = [tr.history[-1][k] for k in ("perf/env_seconds", "perf/policy_seconds", "perf/learn_seconds")]
    assert abs(sum(split) - tr.history[-1]["perf/iteration_seconds"]) < 1e-6


def test_a_run_logs_the_learning_rate_and_the_time_split():
    tr = carrystate.train(None, [*SMALL_TMAZE, "trainer.total_timesteps=1024", "trainer.anneal_lr=true"])
    lrs = [row["charts/learning_rate"] for row in tr.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == tr.cfg.trainer.learning_rate
    assert all(row["perf/iteration_seconds"] >= row["perf/learn_seconds"] > 0 for row in tr.history)
