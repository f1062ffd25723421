"""The command line: help everywhere, a short training run writes its run folder, eval reads it back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carrystate.cli import main
from tests.helpers import ROOT


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


# what each command imports while it parses (a fresh interpreter: this one has torch loaded already)
IMPORTS_WHILE_PARSING = """
import sys
from carrystate.cli import parse
try:
    parse({argv!r})
except SystemExit:
    pass
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'triton', 'numpy', 'matplotlib'}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["config", "--help"], ["eval", "--help"]])
def test_help_imports_neither_torch_nor_triton(argv):
    code = IMPORTS_WHILE_PARSING.format(argv=argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: carrystate" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_bad_override_fails_with_one_line_before_torch_is_needed():
    code = "import sys\nfrom carrystate.cli import main\nrc = main(['train', 'trainer.bogus=1'])\n"
    code += "print(rc, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False"], out
    assert out.stderr.startswith("carrystate: invalid config: unknown setting 'trainer.bogus'; allowed here:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_overrides_may_come_before_between_or_after_options():
    from carrystate.cli import parse, split_items
    from carrystate.config import dump_config, load_config

    orders = [
        ["train", "configs/cartpole_novel.yaml", "--quiet", "trainer.seed=2", "policy.core=gru"],
        ["train", "trainer.seed=2", "--quiet", "configs/cartpole_novel.yaml", "policy.core=gru"],
        ["train", "--quiet", "configs/cartpole_novel.yaml", "trainer.seed=2", "policy.core=gru"],
    ]
    configs = set()
    for argv in orders:
        args = parse(argv)
        assert args.quiet
        path, overrides = split_items(args.items)
        configs.add(dump_config(load_config(ROOT / path, overrides)))
    assert len(configs) == 1
    assert "seed: 2" in configs.pop()


def test_an_unknown_option_is_still_refused(capsys):
    from carrystate.cli import parse

    with pytest.raises(SystemExit):
        parse(["train", "--qiet", "trainer.seed=2"])
    assert "unrecognized arguments: --qiet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["eval", "runs/x", "trainer.seed=2"])
