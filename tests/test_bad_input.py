"""Bad input ends in a one-line message naming the setting or the checkpoint entry, never a traceback: bad
configs are refused before the run folder is made, and a tampered checkpoint is refused alike by resume and
eval (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from carrystate.checkpoint import _sha256, checkpoints
from carrystate.cli import main
from carrystate.config import load_config
from carrystate.trainer import Trainer
from tests.helpers import SMALL_TMAZE as SMALL
from tests.helpers import stop_at

RUN = [*SMALL, "trainer.total_timesteps=512", "trainer.run_name=r", "--quiet"]


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize(
    "args, setting",
    [
        pytest.param(["env.name=gymnasium", "env.gymnasium.id=NoSuchEnv-v0"], "env.gymnasium.id", id="gym-id"),
        pytest.param(["policy.core=gru", "policy.sequence_impl=scan"], "policy.sequence_impl=scan", id="scan-gru"),
        pytest.param(["policy.sequence_impl=triton"], "policy.sequence_impl=triton", id="triton-on-cpu"),
        pytest.param(["trainer.device=cuda"], "trainer.device='cuda'", id="cuda-without-gpu", marks=NO_GPU),
        pytest.param(["trainer.device=banana"], "trainer.device='banana'", id="device-banana"),
        pytest.param(["trainer.seed=-1"], "trainer.seed", id="negative-seed"),
        pytest.param(["trainer.runs_dir=a_file/runs"], "trainer.runs_dir='a_file/runs'", id="runs-dir-unwritable"),
        pytest.param(["bad.yaml"], "config file 'bad.yaml' is not valid YAML: line 4, column 8", id="yaml-syntax"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_setting_and_makes_no_run_folder(
    tmp_path, monkeypatch, capsys, args, setting
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file where the runs folder should go")
    (tmp_path / "bad.yaml").write_text("env:\n  name: tmaze\n  num_envs: [8\ntrainer:\n  seed: 1\n")
    from carrystate.policy.kernels import triton_scan

    monkeypatch.setattr(triton_scan, "INTERPRET", False)  # the tests run triton's interpreter on the CPU
    assert main(["train", *args, *RUN]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("carrystate: ") and setting in err.splitlines()[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "bad.yaml"], "no run folder"


# ---- tampered checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped in its third rollout: its newest checkpoint holds weights, carried state, RNGs, env state,
    counters and 37 steps of the rollout."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    tr = Trainer(load_config(None, [*SMALL, "trainer.total_timesteps=2560"]), run_dir=run, quiet=True)
    stop_at(tr, "collect", 2, 37)
    tr.train()
    return run


def _edit_tensors(file: str, edit):
    def tamper(folder: Path) -> None:
        tensors = load_file(folder / file)
        edit(tensors)
        save_file(tensors, folder / file)

    return tamper


def _edit_meta(edit):
    def tamper(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        edit(meta)
        (folder / "meta.json").write_text(json.dumps(meta))

    return tamper


def _edit_optimizer(folder: Path) -> None:
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    state["state"][0]["exp_avg"] = torch.zeros(3)
    torch.save(state, folder / "optimizer.pt")


def _nan_weight(d: dict) -> None:
    d["critic.weight"] = d["critic.weight"].clone()
    d["critic.weight"][0, 0] = float("nan")


TAMPERED = {
    "non-finite weight": (
        _edit_tensors("model.safetensors", _nan_weight),
        "model.safetensors 'critic.weight' holds non-finite values (NaN or infinity)",
    ),
    "wrong-shape weight": (
        _edit_tensors("model.safetensors", lambda d: d.update({"core.rnn.weight_hh_l0": torch.zeros(256, 32)})),
        "model.safetensors 'core.rnn.weight_hh_l0' has shape (256, 32), expected (256, 64)",
    ),
    "missing weight": (
        _edit_tensors("model.safetensors", lambda d: d.pop("critic.bias")),
        "model.safetensors lacks 'critic.bias'",
    ),
    "extra entry": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"store.slice8.0": torch.zeros(1, 8, 64)})),
        "tensors.safetensors holds 'store.slice8.0'",
    ),
    "wrong-shape carried state": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"store.slice0.1": torch.zeros(1, 7, 64)})),
        "tensors.safetensors 'store.slice0.1' has shape (1, 7, 64), expected (1, 8, 64)",
    ),
    "wrong env-state length": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"env.length": torch.zeros(9, dtype=torch.int64)})),
        "tensors.safetensors 'env.length' has shape (9,), expected (8,)",
    ),
    "RNG state of the wrong size": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"rng.sample": torch.zeros(10, dtype=torch.uint8)})),
        "tensors.safetensors 'rng.sample' has shape (10,)",
    ),
    "RNG state that torch refuses": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"rng.shuffle": torch.zeros_like(d["rng.shuffle"])})),
        "tensors.safetensors 'rng.shuffle' is not a valid RNG state",
    ),
    "wrong-typed counter": (
        _edit_meta(lambda m: m.update({"global_step": "1024"})),
        "meta.json global_step is '1024', expected an integer",
    ),
    "wrong dtype": (
        _edit_tensors("model.safetensors", lambda d: d.update({"critic.bias": d["critic.bias"].double()})),
        "model.safetensors 'critic.bias' has dtype torch.float64, expected torch.float32",
    ),
    "cut rollout of the wrong length": (
        _edit_tensors("tensors.safetensors", lambda d: d.update({"buffer.obs": d["buffer.obs"][:, :30].contiguous()})),
        "tensors.safetensors 'buffer.obs' has shape (8, 30, 4), expected (8, 37, 4)",
    ),
    "buffer position beyond the rollout": (
        _edit_meta(lambda m: m.update({"buffer": {"position": 99, "first": 0}})),
        "meta.json buffer is {'position': 99, 'first': 0}",
    ),
    "env RNG of the wrong type": (
        _edit_meta(lambda m: m["env"]["rng"]["state"].update({"state": "x"})),
        "meta.json env.rng.state.state is 'x'",
    ),
    "optimizer state that does not fit its weight": (
        _edit_optimizer,
        "optimizer.pt holds exp_avg of shape (3,) for",
    ),
}


@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_checkpoint_is_refused_naming_checkpoint_and_entry(tmp_path, capsys, stopped_run, case, command):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    folder = checkpoints(run)[-1]
    tamper, entry = TAMPERED[case]
    tamper(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = {name: _sha256(folder / name) for name in meta["sha256"]}  # a forger fixes the checksums
    (folder / "meta.json").write_text(json.dumps(meta))
    argv = ["train", "--resume", str(run), "--quiet"] if command == "resume" else ["eval", str(run), "--episodes", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.splitlines()[-1]
    assert message.startswith(f"carrystate: checkpoint {folder} is not usable: ") and entry in message, err


@pytest.mark.parametrize("phase, index", [("collect", 37), ("update", 3), ("between iterations", 0)])
def test_eval_reads_a_sound_checkpoint_of_every_phase(tmp_path, capsys, phase, index):
    tr = Trainer(load_config(None, [*SMALL, "trainer.total_timesteps=1536"]), run_dir=tmp_path / "run", quiet=True)
    if phase == "between iterations":
        tr.train(stop_after=2)
    else:
        stop_at(tr, phase, 2, index)
        tr.train()
    assert json.loads((checkpoints(tmp_path / "run")[-1] / "meta.json").read_text())["phase"] == phase.replace(
        "between iterations", "collect"
    )
    assert main(["eval", str(tmp_path / "run"), "--episodes", "3"]) == 0
    assert "3 episodes: return" in capsys.readouterr().out
