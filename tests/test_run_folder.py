"""One writer per run folder, and a checkpoint on disk is complete or absent, never half deleted (ARCHITECTURE.md
invariant 9; issue 24): a second writer is refused naming the pid in its way, a kill during a save or a deletion
leaves no damaged checkpoint, the next start clears what it left, and a run whose checkpoints are all damaged is
refused in one line."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from carrystate.checkpoint import CheckpointError, checkpoints, load_checkpoint, remove_unfinished, save_checkpoint
from carrystate.cli import main
from carrystate.config import load_config
from tests.helpers import HANG_S, SMALL_TMAZE, child, kill_group, wait_for

RUN = [*SMALL_TMAZE, "trainer.run_name=w", "trainer.total_timesteps=2048", "trainer.checkpoint_interval=1", "--quiet"]

# `python -c PAUSED_WRITER <checkpoint> <flag file> <carrystate arguments>`: the CLI, with the save of <checkpoint>
# paused once its files are written (in .tmp_<checkpoint>) and before the rename that completes it: it touches
# <flag file> and waits for a line on stdin
PAUSED_WRITER = """
import os, sys
from pathlib import Path
from carrystate.cli import main

replace, checkpoint, flag = os.replace, sys.argv.pop(1), Path(sys.argv.pop(1))

def paused(src, dst):
    if Path(src).name == ".tmp_" + checkpoint:
        flag.touch()
        sys.stdin.readline()
    return replace(src, dst)

os.replace = paused
sys.exit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def _writer_paused_in_save(cwd: Path, iteration: int):
    """`carrystate train *RUN` in a child process (run folder cwd/runs/w), yielded while it is paused in the save
    of `iteration`, its files written but not renamed into place; a line on its stdin lets it go on."""
    flag = cwd / "paused"
    args = ["-c", PAUSED_WRITER, f"iter_{iteration:06d}", str(flag), "train", *RUN]
    with child(args, cwd=cwd, stdin=subprocess.PIPE) as proc:
        wait_for(flag.exists, proc, f"the pause in the save of iteration {iteration}")
        yield proc


def test_a_second_writer_is_refused_naming_the_folder_and_the_pid_that_holds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = Path("runs/w")
    with _writer_paused_in_save(tmp_path, 2) as proc:
        for argv in (["train", *RUN], ["train", "--resume", str(run), "--quiet"]):  # a new start, and a resume
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "Traceback" not in err
            assert err.splitlines()[-1].startswith(
                f"carrystate: the run folder {run} is being written by pid {proc.pid};"
            )
        assert (run / "checkpoints" / ".tmp_iter_000002").is_dir(), "the save in progress is left alone"
        out, err = proc.communicate(input="\n", timeout=HANG_S)
        assert proc.returncode == 0, err
    assert [p.name for p in checkpoints(run)] == ["iter_000002", "iter_000003", "iter_000004"]
    assert load_checkpoint(run)["meta"]["iteration"] == 4


def test_resume_of_a_run_killed_in_its_first_save_says_no_checkpoint_and_removes_the_unfinished_one(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    run = Path("runs/w")
    with _writer_paused_in_save(tmp_path, 1) as proc:
        kill_group(proc)  # kill -9: its lock goes with it, its save stays unfinished
    assert [p.name for p in (run / "checkpoints").iterdir()] == [".tmp_iter_000001"]
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"carrystate: no checkpoint in {run} ")
    assert list((run / "checkpoints").iterdir()) == []


# ---- killed deletions and damaged checkpoints, on small checkpoints written directly -------------------------------

CONFIG = load_config(None)


def _save(run: Path, iteration: int, keep: int = 3, **meta) -> Path:
    weights = {"w": torch.full((4,), float(iteration))}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return save_checkpoint(
        run,
        iteration,
        model=weights,
        tensors={"t": torch.zeros(2)},
        optimizer=optimizer,
        meta=meta,
        config=CONFIG,
        keep=keep,
    )


def _whole(folder: Path) -> bool:
    return all(
        (folder / name).is_file() for name in ("model.safetensors", "tensors.safetensors", "optimizer.pt", "meta.json")
    )


def test_a_prune_killed_midway_leaves_every_checkpoint_whole_and_the_next_start_clears_what_it_left(
    tmp_path, monkeypatch
):
    run = tmp_path / "run"
    _save(run, 1, keep=2)
    _save(run, 2, keep=2)
    rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):  # deleting a folder: its first file goes, then the process is killed
        if Path(path).is_dir():
            (Path(path) / "model.safetensors").unlink()
            raise KeyboardInterrupt("kill -9")
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 3, keep=2)  # prunes iter_000001
    monkeypatch.undo()
    assert all(_whole(folder) for folder in checkpoints(run))
    remove_unfinished(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]


def test_a_checkpoint_saved_again_for_its_iteration_survives_a_kill_between_the_renames(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _save(run, 1, keep=1, interrupted=None)
    replace = os.replace

    def killed(src, dst):  # killed as the new checkpoint is renamed into place
        if Path(src).name.startswith(".tmp_iter_"):
            raise KeyboardInterrupt("kill -9")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 1, keep=1, interrupted="SIGTERM")  # a stop that came during the save of the same iteration
    monkeypatch.undo()
    remove_unfinished(run)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["iter_000001"]
    assert load_checkpoint(run)["meta"]["interrupted"] is None, "the checkpoint from before the kill, whole"


def test_a_checkpoint_half_deleted_by_an_earlier_version_is_removed_at_start_with_one_warning(tmp_path):
    run = tmp_path / "run"
    for iteration in (1, 2, 3):
        _save(run, iteration)
    (run / "checkpoints" / "iter_000001" / "model.safetensors").unlink()  # a prune that deleted in place, killed
    with pytest.warns(UserWarning) as record:
        remove_unfinished(run)
    assert len(record) == 1 and "iter_000001 (no model.safetensors)" in str(record[0].message)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_in_one_line_without_warnings(tmp_path, capsys):
    run = tmp_path / "run"
    for iteration in (1, 2, 3):
        _save(run, iteration)
    root = run / "checkpoints"
    (root / "iter_000003" / "model.safetensors").write_bytes(b"truncated")
    (root / "iter_000002" / "tensors.safetensors").unlink()
    (root / "iter_000001" / "meta.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(run)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        f"no usable checkpoint in {run}: all 3 checkpoints are damaged (the newest, iter_000003: "
    )
    assert "model.safetensors does not match its checksum" in message
    assert main(["eval", str(run)]) == 2
    assert capsys.readouterr().err == f"carrystate: {message}\n"
