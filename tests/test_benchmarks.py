"""The benchmarks live at the top of the checkout, outside the package: `carrystate bench` finds and runs them
there, says clearly when they are missing, and they reach carrystate through its public API only."""

import re
from pathlib import Path

import carrystate
from carrystate.cli import main

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_renders_the_report_from_the_checkouts_benchmarks(tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    assert main(["bench", "--report-only", "--results", str(BENCHMARKS / "results"), "--markdown", str(md)]) == 0
    assert md.read_text().startswith("# Benchmarks") and "`policy.sequence_impl`" in md.read_text()


def test_bench_without_a_checkout_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(carrystate, "__file__", str(tmp_path / "site-packages" / "carrystate" / "__init__.py"))
    assert main(["bench", "--report-only", "--markdown", str(tmp_path / "B.md")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "site-packages" / "benchmarks") in err and "source checkout" in err
    assert not (tmp_path / "B.md").exists()


def test_benchmarks_use_no_private_attributes():
    for path in BENCHMARKS.glob("*.py"):
        private = re.findall(r"[\w)\]]\._[a-z]\w*", path.read_text())
        assert not private, f"{path.name} reaches into private attributes: {private}"
