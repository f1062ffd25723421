"""Resume, checkpoints, interruption, numerical faults, untrusted files and bad env input (issue 3)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from carrystate.checkpoint import CheckpointError, _sha256, checkpoints, load_checkpoint
from carrystate.config import load_config
from carrystate.envs.base import EnvError
from carrystate.envs.vector import EnvBatches
from carrystate.learner import NumericalError
from carrystate.trainer import Trainer
from tests.helpers import HANG_S, ScriptedEnv, child, collect, make_policy, wait_for
from tests.helpers import SMALL_TMAZE as SMALL


def _snapshot(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"w.{k}": v.clone() for k, v in tr.policy.state_dict().items()}
    out.update({f"s.{k}": v.clone() for k, v in tr.store.state_dict().items()})
    return out


@pytest.mark.parametrize(
    "extra",
    [
        ["env.name=tmaze"],
        ["env.name=recall", "trainer.optimizer=muon", "trainer.learning_rate=0.02", "policy.core=gru"],
        ["env.name=tmaze", "policy.core=window", "policy.window=12", "policy.critic=separate"],
        [
            "env.name=tmaze",
            "policy.critic=separate",
            "policy.obs_norm=true",
            "trainer.norm_reward=true",
            "policy.chrono_tmax=0",
            "policy.forget_bias=1.0",
            "trainer.clip_coef_final=0.1",
            "trainer.ent_coef_final=0.0",
        ],
    ],
)
def test_resume_equals_straight_run_bit_for_bit(tmp_path, extra):
    n, m = 3, 2
    over = SMALL + extra + [f"trainer.total_timesteps={512 * (n + m)}", "trainer.anneal_lr=true"]
    straight = Trainer(load_config(None, over), quiet=True)
    straight.train()

    first = Trainer(load_config(None, over), run_dir=tmp_path / "run", quiet=True)
    first.train(stop_after=n)  # as if the run had crashed right after checkpointing iteration n
    del first
    resumed = Trainer.resume(tmp_path / "run", quiet=True)
    assert resumed.iteration == n and resumed.global_step == 512 * n
    resumed.train()
    a, b = _snapshot(straight), _snapshot(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert np.array_equal(straight.rollout.obs, resumed.rollout.obs)


def test_resume_of_gymnasium_run_starts_new_episodes_and_says_so(tmp_path):
    over = [
        "env.name=gymnasium",
        "env.num_envs=2",
        "trainer.batch_size=128",
        "trainer.bptt_horizon=16",
        "trainer.minibatch_size=64",
        "trainer.total_timesteps=128",
        "trainer.learning_rate=0.001",
    ]
    Trainer(load_config(None, over), run_dir=tmp_path / "g", quiet=True).train()
    with pytest.warns(UserWarning, match="cannot save its state: the resumed run starts new episodes"):
        tr = Trainer.resume(tmp_path / "g", ["trainer.total_timesteps=256"], quiet=True)
    assert tr.rollout.starts.all() and all(torch.count_nonzero(s) == 0 for s in tr.store.get(0))


def _run_with_checkpoints(tmp_path, iterations=3) -> Path:
    over = SMALL + [f"trainer.total_timesteps={512 * iterations}", "trainer.checkpoint_interval=1"]
    Trainer(load_config(None, over), run_dir=tmp_path / "run", quiet=True).train()
    return tmp_path / "run"


def test_checkpoints_keep_newest_k_and_hold_everything(tmp_path):
    run = _run_with_checkpoints(tmp_path, iterations=5)
    assert [p.name for p in checkpoints(run)] == ["iter_000003", "iter_000004", "iter_000005"]
    ckpt = load_checkpoint(run)
    keys = set(ckpt["tensors"])
    assert {
        "store.slice0.0",
        "store.slice0.1",
        "rng.sample",
        "rng.shuffle",
        "rng.torch",
        "rollout.obs",
        "rollout.starts",
        "env.cue",
        "env.length",
        "env.t",
    } <= keys
    assert ckpt["meta"]["global_step"] == 2560 and ckpt["meta"]["env"]["rng"]["bit_generator"] == "PCG64"
    assert ckpt["optimizer"]["state"], "optimizer moments are saved"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_previous_with_warning(tmp_path, damage):
    run = _run_with_checkpoints(tmp_path)
    newest = checkpoints(run)[-1] / "model.safetensors"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(newest.read_bytes())
        data[-5] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.unlink()
    with pytest.warns(UserWarning, match="iter_000003 is unusable"):
        ckpt = load_checkpoint(run)
    assert ckpt["path"].name == "iter_000002"


def test_crash_during_save_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    run = _run_with_checkpoints(tmp_path)
    before = {p.name: json.loads((p / "meta.json").read_text())["sha256"] for p in checkpoints(run)}
    tr = Trainer.resume(run, ["trainer.total_timesteps=4096"], quiet=True)

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    tr.iteration += 1
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    assert [p.name for p in checkpoints(run)] == list(before)
    for p in checkpoints(run):
        assert {n: _sha256(p / n) for n in before[p.name]} == before[p.name]
    assert load_checkpoint(run)["path"].name == "iter_000003"


def test_folders_of_a_killed_checkpoint_write_are_removed_when_the_run_resumes(tmp_path):
    run = _run_with_checkpoints(tmp_path, iterations=2)
    unfinished = run / "checkpoints" / ".tmp_iter_000007"  # as a kill -9 while saving iteration 7 leaves it
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"half a file")
    before = [p.name for p in checkpoints(run)]
    tr = Trainer.resume(run, ["trainer.total_timesteps=1536"], quiet=True)
    tr.train()
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert [p.name for p in checkpoints(run)] == [*before, "iter_000003"]


def test_crafted_pickle_cannot_run_code(tmp_path):
    run = _run_with_checkpoints(tmp_path, iterations=1)
    ckpt = checkpoints(run)[-1]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"]["optimizer.pt"] = _sha256(ckpt / "optimizer.pt")  # a forger can fix the checksum too
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(run)
    assert not marker.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.hidden_size=32", "policy.hidden_size: checkpoint 64, this run 32"),
        ("env.num_envs=16", "agents: checkpoint 8, this run 16"),
        ("policy.core=gru", "policy.core: checkpoint 'lstm', this run 'gru'"),
    ],
)
def test_incompatible_checkpoint_says_what_differs(tmp_path, override, message):
    run = _run_with_checkpoints(tmp_path, iterations=1)
    extra = ["trainer.batch_size=1024", "trainer.minibatch_size=256"] if "num_envs" in override else []
    with pytest.raises(CheckpointError, match=message.replace("(", "\\(")):
        Trainer.resume(run, [override, *extra], quiet=True)


def test_nonfinite_observation_names_env_and_agent():
    env = ScriptedEnv(4, 16)
    env.obs_table[5, 2, 1] = np.nan
    with pytest.raises(EnvError, match=r"ScriptedEnv: non-finite obs from step at agent row 2 \(env 2, agent 0\)"):
        collect(make_policy("lstm"), env, 64, 16)


def test_nonfinite_observation_from_reset_names_env_and_agent():
    env = ScriptedEnv(4, 16)
    env.obs_table[0, 3, 0] = np.inf
    with pytest.raises(EnvError, match=r"ScriptedEnv: non-finite obs from reset at agent row 3 \(env 3, agent 0\)"):
        collect(make_policy("lstm"), env, 64, 16)


def test_nonfinite_observation_in_the_second_of_two_batches_names_its_row_among_all_agents():
    second = ScriptedEnv(2, 16, seed=1)
    second.obs_table[4, 1, 2] = np.nan
    env = EnvBatches([ScriptedEnv(2, 16), second])  # stepped as two alternating lanes: rows 0-1 and 2-3
    with pytest.raises(EnvError, match=r"ScriptedEnv: non-finite obs from step at agent row 3 \(env 3, agent 0\)"):
        collect(make_policy("lstm"), env, 64, 16)


@pytest.mark.parametrize("core", ["lstm", "gru", "window"])
def test_final_obs_is_checked_exactly_where_an_episode_ended(core):
    """final_obs is meaningful only where an episode ended (a truncated one bootstraps from its value): a NaN
    elsewhere is no fault, a NaN there stops the rollout naming the env, the field and the agent."""
    ends = {(0, 2): "term", (1, 2): "trunc"}  # agents 0 and 1 end episodes at step 2; agent 2 does not
    env = ScriptedEnv(3, 16, ends=ends)
    env.final_table[3, 2] = np.nan  # step 2's final observation of agent 2, whose episode goes on
    collect(make_policy(core), env, 48, 16)
    for row in (0, 1):
        env = ScriptedEnv(3, 16, ends=ends)
        env.final_table[3, row] = np.nan
        with pytest.raises(
            EnvError,
            match=rf"ScriptedEnv: non-finite final_obs from step \(.*\) at agent row {row} \(env {row}, agent 0\)",
        ):
            collect(make_policy(core), env, 48, 16)


def test_nonfinite_loss_stops_training_and_keeps_last_checkpoint(tmp_path):
    run = _run_with_checkpoints(tmp_path, iterations=2)
    sums = {p.name: json.loads((p / "meta.json").read_text())["sha256"] for p in checkpoints(run)}
    tr = Trainer.resume(run, ["trainer.total_timesteps=4096"], quiet=True)
    with torch.no_grad():
        tr.policy.critic.bias.fill_(float("nan"))
    with pytest.raises(NumericalError, match="non-finite loss at iteration 3, epoch 1, minibatch 1"):
        tr.train()
    assert {p.name: json.loads((p / "meta.json").read_text())["sha256"] for p in checkpoints(run)} == sums
    with pytest.raises(CheckpointError, match="refusing to checkpoint non-finite weights \\(critic.bias\\)"):
        tr.save()
    assert [p.name for p in checkpoints(run)] == list(sums)


def test_nonfinite_gradient_names_the_parameter():
    tr = Trainer(load_config(None, SMALL + ["trainer.total_timesteps=512"]), quiet=True)
    tr.policy.core.rnn.weight_hh_l0.register_hook(lambda g: g * float("inf"))
    with pytest.raises(
        NumericalError, match="non-finite gradient at iteration 1, epoch 1, minibatch 1 in core.rnn.weight_hh_l0"
    ):
        tr.train()


class _BadEnv(ScriptedEnv):
    def __init__(self, fault):
        super().__init__(2, 32)
        self.fault = fault

    def step(self, actions):
        res = super().step(actions)
        if self.t == 3:
            if self.fault == "shape":
                res.obs = res.obs[:, :2]
            elif self.fault == "dtype":
                res.obs = res.obs.astype(object)
            elif self.fault == "raise":
                raise ZeroDivisionError("division by zero in physics")
            elif self.fault == "tuple":
                return res.obs, res.reward, res.terminated, res.truncated, {}
            elif self.fault == "reward":
                res.reward[1] = np.inf
            elif self.fault == "float flags":
                res.truncated = res.truncated.astype(np.float32)
        return res


@pytest.mark.parametrize(
    "fault, message",
    [
        ("shape", r"_BadEnv: step returned obs of shape \(2, 2\), expected \(2, 3\)"),
        ("dtype", "_BadEnv: step returned obs of dtype object; expected a numeric dtype"),
        ("raise", "_BadEnv: step raised ZeroDivisionError: division by zero in physics"),
        (
            "tuple",
            r"_BadEnv: step returned a tuple \(a gymnasium-style .*\); it must return a .*StepResult",
        ),
        ("reward", r"_BadEnv: non-finite reward from step at agent row 1 \(env 1, agent 0\)"),
        ("float flags", "_BadEnv: step returned truncated of dtype float32; expected a bool dtype"),
    ],
)
def test_env_faults_give_clear_errors(fault, message):
    with pytest.raises(EnvError, match=message):
        collect(make_policy("lstm"), _BadEnv(fault), 64, 16)


class _StuckEnv(ScriptedEnv):
    """Its third step does not return until a warning has been recorded in `seen` (at most 120 s)."""

    def __init__(self, seen: list):
        super().__init__(2, 32)
        self.seen = seen

    def step(self, actions):
        if self.t == 2:
            deadline = time.monotonic() + 120
            while not self.seen and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().step(actions)


def test_env_step_that_does_not_return_is_reported_by_name_while_the_rollout_waits_for_it():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rollout, _, _ = collect(make_policy("lstm"), _StuckEnv(seen), 64, 16, slow_env_warning_s=0.2)
    assert rollout.env.t == 32, "the rollout waited for the slow step and went on"
    assert any(
        re.fullmatch(
            r"_StuckEnv: step has not returned after 0.2s \(env.worker_timeout\); still waiting\..*", str(w.message)
        )
        for w in seen
    ), [str(w.message) for w in seen]


@contextlib.contextmanager
def _training(tmp_path, extra=()):
    """`carrystate train` in a child process, yielded with its run folder once it has written two checkpoints
    (it is then in its training loop); it and whatever it started are killed on the way out, pass or fail."""
    args = ["-m", "carrystate.cli", "train", "trainer.run_name=sig", "trainer.total_timesteps=100000000"]
    with child([*args, "trainer.checkpoint_interval=1", *SMALL, *extra], cwd=tmp_path) as proc:
        run = tmp_path / "runs" / "sig"
        wait_for(lambda: len(checkpoints(run)) >= 2, proc, "two checkpoints")
        yield proc, run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_step_writes_checkpoint_and_exits(tmp_path, sig):
    with _training(tmp_path) as (proc, run):
        newest_before = checkpoints(run)[-1].name
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130, err
    assert f"stopped by {sig.name}: checkpoint written, resume with `carrystate train --resume runs/sig`" in out
    ckpt = load_checkpoint(run)
    # newer than the newest before the signal, or that same iteration written again when the signal came
    # between its save and the next step
    assert ckpt["meta"]["interrupted"] == sig.name and ckpt["path"].name >= newest_before
    tr = Trainer.resume(run, quiet=True)  # and the run continues from it
    assert tr.global_step == ckpt["meta"]["global_step"]


def test_second_signal_exits_at_once_without_touching_checkpoints(tmp_path):
    with _training(tmp_path) as (proc, run):
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130
    for p in checkpoints(run):  # every checkpoint left behind is intact
        load_checkpoint(p)


def test_signal_during_a_checkpoint_write_still_leaves_a_checkpoint_marked_interrupted(tmp_path, monkeypatch):
    cfg = load_config(None, SMALL + ["trainer.total_timesteps=4096", "trainer.checkpoint_interval=1"])
    tr = Trainer(cfg, run_dir=tmp_path / "race", quiet=True)
    save = Trainer.save

    def save_then_signal(self):  # the signal lands after this save took its meta, before the loop checks
        path = save(self)
        if self.iteration == 2 and self.stop.signal is None:
            self.stop.signal = "SIGTERM"
        return path

    monkeypatch.setattr(Trainer, "save", save_then_signal)
    summary = tr.train()
    assert summary.interrupted == "SIGTERM" and summary.iterations == 2
    ckpt = load_checkpoint(tmp_path / "race")
    assert ckpt["path"].name == "iter_000002" and ckpt["meta"]["interrupted"] == "SIGTERM"


_REALLOCATE = """
import ctypes, resource, sys, torch
from carrystate.trainer import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); sys.exit()
if sys.argv[1] == "initial":  # glibc's starting thresholds, fixed (its own later adjustment depends on the layout)
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 128 << 10)
    libc.mallopt(-1, 128 << 10)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def minibatch():  # a minibatch's pattern: several large temporaries alive at once, then all freed
    held = [torch.ones(2 << 20) for _ in range(4)]  # 4 x 8 MiB
    del held
for _ in range(3):
    minibatch()
before = faults()
for _ in range(10):
    minibatch()
print(faults() - before)
"""


def test_keep_freed_memory_lets_the_next_minibatch_reuse_pages_without_faulting_them_in():
    """Counted page faults (getrusage) over ten allocate-and-free cycles of 32 MiB, each in a fresh process: with
    glibc's starting thresholds (128 KiB) every page is faulted in again each cycle; with `trainer.keep_freed_memory`
    none is. (glibc's defaults raise their thresholds as blocks are freed, so with them alone how many pages come
    back depends on where the heap lies: benchmarks/allocator.py counts a MettaGrid update's.)"""
    import resource
    import subprocess
    import sys

    def faults(mode: str) -> str:
        run = subprocess.run([sys.executable, "-c", _REALLOCATE, mode], capture_output=True, text=True, timeout=HANG_S)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    kept = faults("keep")
    if kept == "unsupported":
        pytest.skip("the C library is not glibc: trainer.keep_freed_memory does nothing here")
    pages = 10 * (32 << 20) // resource.getpagesize()  # touched over the ten cycles
    assert int(faults("initial")) > pages // 2  # the premise: without it, freed memory goes back and faults in again
    assert int(kept) < pages // 20


def test_trainer_keeps_freed_memory_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr("carrystate.trainer.keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(load_config(None, [*SMALL, "trainer.total_timesteps=1"]), quiet=True).env.close()
    Trainer(
        load_config(None, [*SMALL, "trainer.total_timesteps=1", "trainer.keep_freed_memory=false"]), quiet=True
    ).env.close()
    assert calls == [1]
