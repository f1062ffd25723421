"""The command line: help everywhere, a short training run writes its run folder, eval reads it back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carrystate.cli import main


@pytest.mark.parametrize("args", [[], ["train"], ["eval"], ["config"]])
def test_help_everywhere(args):
    out = subprocess.run([sys.executable, "-m", "carrystate.cli", *args, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: carrystate" in out.stdout


def test_train_writes_run_folder_and_eval_reads_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "train",
            "trainer.total_timesteps=16384",
            "trainer.run_name=t",
            "trainer.checkpoint_interval=1",
            "env.num_envs=16",
            "trainer.batch_size=2048",
            "trainer.minibatch_size=512",
            "--quiet",
        ]
    )
    assert rc == 0
    run = tmp_path / "runs" / "t"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ckpts = sorted((run / "checkpoints").glob("iter_*"))
    assert [c.name for c in ckpts] == [f"iter_{i:06d}" for i in range(6, 9)], "every iteration, newest 3 kept"
    assert {p.name for p in ckpts[-1].iterdir()} == {
        "model.safetensors",
        "tensors.safetensors",
        "optimizer.pt",
        "meta.json",
    }
    out = capsys.readouterr().out
    assert "SPS" in out and "success rate" in out and "runs/t/checkpoints/iter_000008" in out
    assert main(["eval", str(run), "--episodes", "20"]) == 0
    assert "20 episodes: return" in capsys.readouterr().out


def test_tensorboard_uses_standard_metric_names(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(
        [
            "train",
            "trainer.total_timesteps=4096",
            "trainer.run_name=t",
            "env.num_envs=16",
            "trainer.batch_size=2048",
            "trainer.minibatch_size=512",
            "--quiet",
        ]
    )
    acc = EventAccumulator(str(tmp_path / "runs" / "t" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "charts/episodic_return",
        "charts/SPS",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
    } <= tags


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.batch_size=100", "trainer.batch_size=100 must be divisible by trainer.minibatch_size=2048"),
        ("trainer.batch_size=2048", "trainer.batch_size=2048 must be a multiple of agents × trainer.bptt_horizon"),
    ],
)
def test_bad_override_exits_2_with_message(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "runs").exists(), "no work before validation"
