"""A run stopped at any moment, in the middle of a rollout or of an update, and resumed is the run that was never
stopped, bit for bit; the checkpoint written at the stop counts completed iterations only (issue 17)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from carrystate import registry
from carrystate.checkpoint import _sha256, checkpoints, load_checkpoint
from carrystate.config import load_config
from carrystate.trainer import Trainer
from tests.helpers import ALL_CORES, USER_CORE, stop_at
from tests.helpers import SMALL_TMAZE as SMALL

ITERATIONS = 5  # of SMALL's 512 agent-steps: 8 agents × 64 rollout steps, 2 epochs × 4 minibatches
REPO = Path(__file__).resolve().parents[1]
# every registered core, and a user's own (tests/user_core.py) with a policy.core_options keyword: invariant 8
CORES = {name: [f"policy.core={name}"] for name in registry.CORES}
CORES["user"] = [f"policy.core={USER_CORE}", "policy.core_options.decay=0.5"]
CORES.update({name: [f"policy.core={name}"] for name in ALL_CORES[len(registry.CORES) + 1 :]})  # CARRYSTATE_TEST_CORES
# trainer.precision=bf16: a bf16 run resumes bit for bit against a bf16 run (one stop point each, CI time)
BF16 = {
    ("lstm-bf16", "update", 2): ["policy.core=lstm", "trainer.precision=bf16"],
    ("gru-bf16", "collect", 40): ["policy.core=gru", "trainer.precision=bf16"],
}


def _settings(extra) -> list[str]:
    return SMALL + list(extra) + [f"trainer.total_timesteps={512 * ITERATIONS}", "trainer.anneal_lr=true"]


def _flat(obj, prefix: str = "") -> dict[str, object]:
    """Every tensor and number in a nest of dicts and lists, by path (optimizer states)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix: obj}


def _run_state(tr: Trainer) -> dict[str, object]:
    """What the next iteration of `tr` depends on: weights, carried state, optimizer, RNGs, the env, the
    rollout's observation, counters and recent episodes."""
    out: dict[str, object] = {f"weight.{k}": v for k, v in tr.policy.state_dict().items()}
    out.update({f"carried.{k}": v for k, v in tr.store.state_dict().items()})
    out.update({f"optimizer.{k}": v for k, v in _flat(tr.learner.optimizer.state_dict()).items()})
    out["rng.sample"], out["rng.shuffle"] = tr.parts.generators.sample.get_state(), tr.learner.generator.get_state()
    out.update({f"env.{k}": v for k, v in _flat(tr.env.state_dict()).items()})
    out["rollout.obs"] = torch.from_numpy(tr.rollout.obs)
    out["counters"] = (tr.iteration, tr.global_step)
    out["recent_returns"] = list(tr.monitor.returns)
    return out


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize(
    "extra, phase, iteration, index",
    [
        pytest.param([], "collect", 2, 37, id="rollout-step-37"),
        pytest.param(
            ["policy.core=gru", "trainer.optimizer=muon", "trainer.learning_rate=0.02"],
            "update",
            2,
            5,
            id="update-step-6-of-8-gru-muon",
        ),
        pytest.param(
            ["trainer.burn_in=4", "policy.critic=separate", "trainer.clip_coef_final=0.1"],
            "collect",
            1,
            32,
            id="rollout-segment-start-burn-in-separate-critic",
        ),
        pytest.param(["trainer.burn_in=4"], "update", 3, 0, id="update-step-1-burn-in"),
        *(
            pytest.param(settings, phase, 2, index, id=f"{phase}-step-{index + 1}-{name}")
            for name, settings in CORES.items()
            for phase, index in (("collect", 40), ("update", 2))
        ),
        *(pytest.param(s, phase, 2, i, id=f"{phase}-step-{i + 1}-{name}") for (name, phase, i), s in BF16.items()),
    ],
)
def test_stop_mid_rollout_or_mid_update_then_resume_equals_straight_run(tmp_path, extra, phase, iteration, index):
    straight = Trainer(load_config(None, _settings(extra)), quiet=True)
    straight.train()

    stopped = Trainer(load_config(None, _settings(extra)), run_dir=tmp_path / "run", quiet=True)
    stop_at(stopped, phase, iteration, index)
    summary = stopped.train()
    assert summary.interrupted == "SIGINT" and summary.iterations == iteration
    ckpt = load_checkpoint(tmp_path / "run")
    meta = ckpt["meta"]
    assert (meta["iteration"], meta["global_step"], meta["phase"]) == (iteration, 512 * iteration, phase)
    steps_kept = index if phase == "collect" else 64  # the filled part of the rollout, or all of it
    assert meta["buffer"] == {"position": steps_kept, "first": 0}
    assert ckpt["tensors"]["buffer.obs"].shape == (8, steps_kept, 4)
    del stopped

    resumed = Trainer.resume(tmp_path / "run", quiet=True)
    assert (resumed.iteration, resumed.global_step) == (iteration, 512 * iteration)
    resumed.train()
    _assert_same(_run_state(straight), _run_state(resumed))


def test_stop_mid_update_checkpoints_the_weights_from_before_it(tmp_path):
    before = Trainer(load_config(None, _settings([])), quiet=True)
    before.train(stop_after=2)
    stopped = Trainer(load_config(None, _settings([])), run_dir=tmp_path / "run", quiet=True)
    stop_at(stopped, "update", 2, 7)  # before the last optimizer step of iteration 3
    stopped.train()
    model = load_checkpoint(tmp_path / "run")["model"]
    for k, v in before.policy.state_dict().items():
        assert torch.equal(model[k], v), k


def test_checkpoint_between_iterations_with_burn_in_keeps_the_tail_and_resumes_exactly(tmp_path):
    over = _settings(["trainer.burn_in=4"])
    straight = Trainer(load_config(None, over), quiet=True)
    straight.train()
    first = Trainer(load_config(None, over), run_dir=tmp_path / "run", quiet=True)
    first.train(stop_after=2)
    tensors = load_checkpoint(tmp_path / "run")["tensors"]
    assert tensors["buffer.obs"].shape == (8, 4, 4), "only the last burn_in steps of each agent"
    resumed = Trainer.resume(tmp_path / "run", quiet=True)
    resumed.train()
    _assert_same(_run_state(straight), _run_state(resumed))


@pytest.mark.parametrize("version", [1, 2])
def test_checkpoint_of_an_earlier_format_resumes_exactly(tmp_path, version):
    """Checkpoints written by earlier versions still load: format 1 (before stops were resumable: no phase, no
    buffer, no rollout.valid) and format 2 (the env's and the rollout's meta under other names, the monitor's
    episodes at the top)."""
    straight = Trainer(load_config(None, _settings([])), quiet=True)
    straight.train()
    Trainer(load_config(None, _settings([])), run_dir=tmp_path / "run", quiet=True).train(stop_after=2)
    folder = checkpoints(tmp_path / "run")[-1]
    meta = json.loads((folder / "meta.json").read_text())  # the earlier format's entries, from this format's
    monitor, env_state, rollout = meta.pop("monitor"), meta.pop("env"), meta.pop("rollout")
    meta.update(env_state=env_state, recent_returns=monitor["returns"], recent_success=monitor["success"])
    if version == 1:
        format_1 = ("store.", "rng.", "env.", "rollout.obs", "rollout.starts", "return_scale.")
        tensors = {k: v for k, v in load_file(folder / "tensors.safetensors").items() if k.startswith(format_1)}
        save_file(tensors, folder / "tensors.safetensors")
        meta["sha256"]["tensors.safetensors"] = _sha256(folder / "tensors.safetensors")
        for key in ("format", "phase", "buffer", "world_size"):
            del meta[key]
    else:
        meta.update(format=2, rollout_episodes=rollout["episodes"])
    (folder / "meta.json").write_text(json.dumps(meta))
    resumed = Trainer.resume(tmp_path / "run", quiet=True)
    resumed.train()
    _assert_same(_run_state(straight), _run_state(resumed))


# ---- real signals ------------------------------------------------------------------------------------

SIGNAL_RUN = [*SMALL, "trainer.total_timesteps=2048", "trainer.checkpoint_interval=1", "trainer.run_name=sig"]


def _env() -> dict[str, str]:
    """The subprocesses import this checkout's carrystate."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


@pytest.fixture(scope="module")
def straight_final(tmp_path_factory):
    """The final checkpoint of the signal runs' config, never stopped (in this process)."""
    run = tmp_path_factory.mktemp("straight") / "runs" / "sig"
    Trainer(load_config(None, SIGNAL_RUN), run_dir=run, quiet=True).train()
    return load_checkpoint(run)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(24))
def test_real_sigint_at_a_random_moment_then_resume_equals_straight_run(tmp_path, straight_final, trial):
    rng = random.Random(trial)
    phase = rng.choice(["collect", "update"])
    iteration = rng.randrange(3)  # of 4: the signal always finds work left
    index = rng.randrange(64 if phase == "collect" else 8)
    marked = [sys.executable, str(REPO / "tests" / "stop_point.py"), phase, str(iteration), str(index)]
    proc = subprocess.Popen(
        [*marked, "train", *SIGNAL_RUN, "--quiet"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # the event: the run has reached the chosen point
            seen.append(line)
            if line.startswith("@stop-point"):
                break
        assert seen and seen[-1].startswith("@stop-point"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 130, "".join(seen) + out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    run = tmp_path / "runs" / "sig"
    stopped = load_checkpoint(run)["meta"]
    print(f"trial {trial}: marked {phase} {iteration}/{index}, stopped in {stopped['phase']} at {stopped['buffer']}")
    resume = subprocess.run(
        [sys.executable, "-m", "carrystate.cli", "train", "--resume", "runs/sig", "--quiet"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert resume.returncode == 0, resume.stderr
    final = load_checkpoint(run)
    assert final["path"].name == straight_final["path"].name
    for part in ("model", "tensors"):
        _assert_same(straight_final[part], final[part])
    _assert_same(_flat(straight_final["optimizer"]), _flat(final["optimizer"]))
    for key in ("iteration", "global_step", "recent_returns", "recent_success", "env_state"):
        assert final["meta"][key] == straight_final["meta"][key], key
