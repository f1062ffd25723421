"""`carrystate sweep`: a T-maze sweep over learning rate and core at a small size finishes from one command with
a best config that trains; it survives kill -9 and a Ctrl-C and resumes; two processes sharing its SQLite file
split its trials, none run twice; a bad sweep section is one clear error."""

from __future__ import annotations

import math
import signal

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from carrystate import sweep
from carrystate.cli import main
from carrystate.config import ConfigError, load_config
from tests.helpers import ROOT, child, wait_for

CONFIG = ROOT / "configs" / "tmaze_long.yaml"  # its sweep: learning rate and core, success rate, 2 seeds
SMALL = [  # the same config at a small size: 2 iterations of 256 agent-steps per run
    "env.tmaze.length_min=3",
    "env.tmaze.length_max=6",
    "env.num_envs=8",
    "trainer.batch_size=256",
    "trainer.minibatch_size=128",
    "trainer.bptt_horizon=16",
    "trainer.gradient_horizon=null",
    "trainer.total_timesteps=512",
    "policy.hidden_size=8",
    "policy.encoder_sizes=[8]",
    "logging.report=false",
]


def study_of(folder):
    storage = f"sqlite:///{folder / sweep.STUDY_DB}"
    return optuna.load_study(study_name="tmaze_long", storage=storage)


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.trials if not t.user_attrs.get("surplus")}


def logged(run_dir, tag: str) -> list[float]:
    """A run's logged values of `tag`, read from its TensorBoard events (not through the sweep)."""
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_six_trial_sweep_of_two_seeds_scores_each_trial_from_its_runs_and_writes_a_best_config_that_trains(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(CONFIG), *SMALL, "--quiet"]) == 0
    folder = tmp_path / "sweeps" / "tmaze_long"
    study = study_of(folder)
    assert sorted(states(study).values()) == ["COMPLETE"] * 6
    assert {t.params["policy.core"] for t in study.trials} <= {"lstm", "gru"}
    for t in study.trials:
        seeds = []
        for seed in (1, 2):
            run = folder / f"trial_{t.number:03d}" / f"seed_{seed}"
            ran = yaml.safe_load((run / "config.yaml").read_text())
            assert ran["trainer"]["seed"] == seed and ran["policy"]["core"] == t.params["policy.core"]
            assert math.isclose(ran["trainer"]["learning_rate"], t.params["trainer.learning_rate"])
            values = logged(run, "charts/success_rate")  # 2 iterations: the last 10% is the last one
            seeds.append(values[-1])
        assert t.value == pytest.approx(sum(seeds) / 2, abs=1e-6)
    best = max(study.trials, key=lambda t: t.value)
    written = yaml.safe_load((folder / "best.yaml").read_text())
    assert "sweep" not in written
    assert written["policy"]["core"] == best.params["policy.core"]
    assert written["trainer"]["learning_rate"] == pytest.approx(best.params["trainer.learning_rate"])
    table = (folder / "trials.md").read_text()
    assert all(f"| {n} | complete |" in table for n in range(6))
    assert "<img src='history.png'" in (folder / "report.html").read_text() and (folder / "curves.png").exists()
    # the best config trains as it is
    assert main(["train", str(folder / "best.yaml"), "trainer.run_name=best", "--quiet"]) == 0
    assert (tmp_path / "runs" / "best" / "summary.json").exists()


def _sweep_child(tmp_path, *extra: str):
    return child(["-m", "carrystate.cli", "sweep", str(CONFIG), *SMALL, *extra, "--quiet"], cwd=tmp_path)


def test_sweep_killed_mid_trial_resumes_and_retries_that_trial_with_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sweeps" / "tmaze_long"
    with _sweep_child(tmp_path, "sweep.trials=3", "sweep.seeds=[1]") as proc:
        wait_for(lambda: (folder / "trial_001" / "seed_1" / "config.yaml").exists(), proc, "trial 1's run")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert states(study_of(folder))[1] == "RUNNING"  # what a killed process leaves behind
    assert main(["sweep", str(CONFIG), *SMALL, "sweep.trials=3", "sweep.seeds=[1]", "--quiet"]) == 0
    study = study_of(folder)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert states(study)[1] == "FAIL" and len(done) == 3
    killed = study.trials[1]
    retries = [t for t in done if t.number > 1 and t.params == killed.params]
    assert len(retries) == 1 and retries[0].number == 2  # queued first, run first


def test_ctrl_c_stops_the_running_trial_like_a_training_run_and_the_sweep_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "sweeps" / "tmaze_long"
    slow = ["trainer.total_timesteps=1000000"]  # the first trial is still running when the signal comes
    with _sweep_child(tmp_path, "sweep.trials=2", "sweep.seeds=[1]", *slow) as proc:
        wait_for(lambda: any((folder / "trial_000" / "seed_1" / "tb").glob("events*")), proc, "trial 0's run")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert "stopped; queued again" in out
    assert (folder / "trial_000" / "seed_1" / "checkpoints").is_dir()  # stopped as a run stops: checkpointed
    study = study_of(folder)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].params == study.trials[0].params
    assert main(["sweep", str(CONFIG), *SMALL, "sweep.trials=2", "sweep.seeds=[1]", "--quiet"]) == 0
    assert sorted(states(study_of(folder)).values()) == ["COMPLETE", "COMPLETE", "FAIL"]


def test_two_processes_sharing_the_sqlite_file_split_the_trials_and_run_none_twice(tmp_path):
    folder = tmp_path / "sweeps" / "tmaze_long"
    args = ("sweep.trials=6", "sweep.seeds=[1]")
    with _sweep_child(tmp_path, *args) as first:
        wait_for(lambda: (folder / "trial_000" / "seed_1").exists(), first, "the first trial")
        with _sweep_child(tmp_path, *args) as second:
            outputs = [p.communicate() for p in (first, second)]
            assert first.returncode == second.returncode == 0, [err[-2000:] for _, err in outputs]
    study = study_of(folder)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6 and sorted(states(study).values()) == ["COMPLETE"] * 6
    by = {pid: {t.number for t in done if t.user_attrs["pid"] == pid} for pid in (first.pid, second.pid)}
    assert by[first.pid] and by[second.pid], by  # both worked on the study
    assert by[first.pid].isdisjoint(by[second.pid]) and by[first.pid] | by[second.pid] == {t.number for t in done}
    for t in done:  # each trial trained once: one run folder, one checkpoint series
        runs = list((folder / f"trial_{t.number:03d}").glob("seed_*"))
        assert [r.name for r in runs] == ["seed_1"]
        assert len(list((runs[0] / "checkpoints").iterdir())) == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sweep.space={}", "sweep.space is empty"),
        ("sweep.space={trainer.learnin_rate: {low: 0.001, high: 0.002}}", r"sweep.space\['trainer.learnin_rate'\]"),
        ("sweep.space={policy.core: {choices: [lstm, transformer]}}", r"= 'transformer': .*policy.core"),
        ("sweep.space={trainer.gamma: {low: 0.9}}", "needs low and high"),
        ("sweep.objective=charts/episodic_retrun", "neither a logged metric nor 'eval'"),
    ],
)
def test_a_bad_sweep_section_is_one_line_naming_the_setting(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message) as err:
        sweep.setup(CONFIG, [*SMALL, setting], out=tmp_path)
    assert "\n" not in str(err.value)
    assert load_config(CONFIG, SMALL).sweep.trials == 6  # the shipped section itself is valid


def test_sweep_help_names_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert all(option in text for option in ("--storage", "--study", "--out"))
