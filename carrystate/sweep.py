"""Hyperparameter sweeps on Optuna (`carrystate sweep CONFIG`): what a config's `sweep` section asks for, run.

Each trial trains the config with the trial's settings once per seed of `sweep.seeds`, as ordinary run folders
under the sweep folder (`trial_<n>/seed_<s>`: config, TensorBoard, checkpoints, report). The study lives in a
database (SQLite in the sweep folder unless `storage` names another), so a stopped sweep resumes where it was and
processes (or machines) sharing the database split its trials through Optuna's storage. A trial whose process died
(kill -9, a crash) is failed and retried with the same settings: at once when it ran on this machine (its trial
lock, held until the trial's result is stored, is free), after Optuna's heartbeat grace period otherwise. A stop
signal (Ctrl-C) stops the running trial's run the way it stops `carrystate train`, marks the trial for a retry and
leaves the study to resume. Whichever process ends last writes `best.yaml` (the best trial's config, ready for
`carrystate train`), `trials.md` and `report.html` into the sweep folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from carrystate.config import Config, ConfigError, SweepParam, apply_overrides, config_from_dict, read_config_file
from carrystate.locks import PidLock
from carrystate.metrics import METRICS

SWEEPS_DIR = "sweeps"
STUDY_DB = "study.db"
HEARTBEAT_S, GRACE_S = 30, 120  # Optuna's heartbeat: a trial of another machine is stale after GRACE_S silent


class _Surplus(Exception):
    """This trial would exceed sweep.trials (processes raced for the last one): it ends at once, failed."""


class SweepStopped(Exception):
    """A stop signal ended the running trial before its end; the study resumes it."""


@dataclass
class Sweep:
    """A sweep as set up from the command line: the base config, read once (its file's settings with the command
    line's overrides applied), and where the sweep lives."""

    data: dict
    cfg: Config  # `data` validated
    folder: Path
    storage_url: str
    study_name: str

    @property
    def space(self) -> dict[str, SweepParam]:
        return self.cfg.sweep.space

    def config(self, overrides: list[str]) -> Config:
        """The base config with further `key=value` overrides (a trial's settings, a seed)."""
        return config_from_dict(apply_overrides(copy.deepcopy(self.data), overrides))


def setup(
    config_path: str | Path | None,
    overrides: list[str] = (),
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
) -> Sweep:
    """Load and check the config and its sweep section (no torch, no Optuna): every searched setting must exist
    and accept both ends of its range (or each choice), and the objective must be a logged metric or `eval`."""
    data = apply_overrides(read_config_file(config_path), list(overrides))
    name = study_name or (Path(config_path).stem if config_path is not None else "sweep")
    folder = Path(out) if out else Path(SWEEPS_DIR) / name
    url = storage or f"sqlite:///{(folder / STUDY_DB).resolve()}"
    sw = Sweep(data, config_from_dict(copy.deepcopy(data)), folder, url, name)
    check(sw)
    return sw


def check(sw: Sweep) -> None:
    s = sw.cfg.sweep
    if not s.space:
        raise ConfigError(
            "sweep.space is empty: name the settings to search in the config's sweep section, e.g. "
            "sweep: {space: {trainer.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}}"
        )
    if s.objective != "eval" and s.objective not in METRICS:
        raise ConfigError(
            f"sweep.objective={s.objective!r} is neither a logged metric nor 'eval'; metrics: " + ", ".join(METRICS)
        )
    for name, param in s.space.items():
        samples = param.choices if param.choices is not None else [param.low, param.high]
        for value in samples:
            try:
                sw.config([f"{name}={json.dumps(value)}"])
            except ConfigError as err:
                raise ConfigError(f"sweep.space[{name!r}] = {value!r}: {err}") from None


def trial_overrides(params: dict) -> list[str]:
    """A trial's settings as `key=value` overrides (JSON values, which YAML reads back exactly)."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def trial_folder_name(number: int) -> str:
    return f"trial_{number:03d}"


def suggest(trial, name: str, p: SweepParam):
    if p.choices is not None:
        return trial.suggest_categorical(name, p.choices)
    if p.is_int:
        return trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def recent_mean(values: list[float], fraction: float) -> float:
    """The mean of the last `fraction` of `values` (at least one); nan if there are none."""
    if not values:
        return math.nan
    tail = values[-max(1, math.ceil(len(values) * fraction)) :]
    return sum(tail) / len(tail)


def open_study(sw: Sweep):
    import optuna
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    sw.folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = RDBStorage(
            sw.storage_url,
            engine_kwargs={"connect_args": {"timeout": 60}} if sw.storage_url.startswith("sqlite") else None,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=retry,
        )
    s = sw.cfg.sweep
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=s.prune_startup_trials,
            n_warmup_steps=int(s.prune_warmup * sw.cfg.trainer.total_timesteps),
        )
        if s.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage, study_name=sw.study_name, direction=s.direction, pruner=pruner, load_if_exists=True
    )
    found = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=s.sampler_seed + found)
    return study, storage


def retry(study, trial) -> None:
    """Queue a failed trial again with its settings (Optuna's retry callback, which its heartbeat also calls)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)


def fail_dead_trials(study, storage) -> list[int]:
    """Fail and retry (same settings) each running trial of this machine whose process is gone: its trial lock is
    free. Trials of other machines are left to Optuna's heartbeat. Returns the numbers of the trials failed."""
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock_path = t.user_attrs.get("lock")  # a retry starts with its failed trial's attributes: not its lock
        if t.user_attrs.get("host") != socket.gethostname() or not lock_path or not Path(lock_path).exists():
            continue
        if Path(lock_path).parent.name != trial_folder_name(t.number):
            continue
        probe = PidLock(lock_path)
        if probe.acquire() is not None:  # its process is alive
            continue
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), t.number
            )
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                retry(study, storage.get_trial(trial_id))
                failed.append(t.number)
        finally:
            probe.release()
    return failed


def _counted(study, below: int | None = None) -> int:
    """Trials that count toward sweep.trials (finished, running or waiting; not failed), of numbers below `below`."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=live) if below is None or t.number < below)


def run(sw: Sweep, quiet: bool = False, say=print) -> int:
    """Run trials until the study holds sweep.trials of them, then write the results. Returns the exit code: 0, or
    130 when a stop signal ended a trial early (the study resumes it)."""
    import optuna
    from optuna.trial import TrialState

    study, storage = open_study(sw)
    s = sw.cfg.sweep
    held: list[PidLock] = []  # the running trial's lock, released once its result is stored
    current: dict = {}

    def objective(trial) -> float:
        current["number"] = trial.number
        if _counted(study, below=trial.number) >= s.trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus
        params = {name: suggest(trial, name, p) for name, p in sw.space.items()}
        folder = sw.folder / trial_folder_name(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        lock = PidLock(folder / "trial.lock")
        if lock.acquire() is not None:
            raise RuntimeError(f"trial folder {folder} is locked by another process")
        held.append(lock)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("lock", str(lock.path.resolve()))
        trial.set_user_attr("folder", str(folder))
        for seed in s.seeds:  # a retry starts with its failed trial's attributes
            trial.set_user_attr(f"seed_{seed}", None)
        say(f"trial {trial.number}: " + " ".join(trial_overrides(params)))
        scores = []
        for i, seed in enumerate(s.seeds):
            try:
                score = train_one(sw, trial, trial_overrides(params), seed, i, folder / f"seed_{seed}", quiet)
            except optuna.TrialPruned as pruned:
                say(f"trial {trial.number}: pruned (seed {seed} behind the median at {pruned})")
                raise
            trial.set_user_attr(f"seed_{seed}", score)
            scores.append(score)
        value = sum(scores) / len(scores)
        say(f"trial {trial.number}: {value:.4g} (seeds {', '.join(f'{v:.4g}' for v in scores)})")
        return value

    code = 0
    try:
        while True:
            for number in fail_dead_trials(study, storage):
                say(f"trial {number}: its process is gone; failed, and queued again with the same settings")
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if _counted(study) >= s.trials and not waiting:
                break
            current.clear()
            try:
                study.optimize(objective, n_trials=1, catch=(_Surplus,))
            except SweepStopped:
                trial = study.trials[current["number"]]
                retry(study, trial)
                say(f"trial {trial.number}: stopped; queued again with the same settings (run the sweep to resume)")
                code = 130
                break
            finally:
                while held:
                    held.pop().release()
            if current and study.trials[current["number"]].user_attrs.get("surplus"):
                break
    finally:
        write_results(sw, study)
    return code


def train_one(sw: Sweep, trial, overrides: list[str], seed: int, index: int, run_dir: Path, quiet: bool) -> float:
    """One run of a trial: trains, reports the objective's running value to the pruner after every iteration, and
    returns its score. Raises TrialPruned when the pruner stops it, SweepStopped when a stop signal did."""
    import optuna

    from carrystate.trainer import Trainer

    s = sw.cfg.sweep
    cfg = sw.config([*overrides, f"trainer.seed={seed}"])
    offset = index * cfg.trainer.total_timesteps  # the seeds' runs one after another on one step axis
    values: list[float] = []  # the curve the pruner sees: the objective metric, or the return for objective=eval
    curve_metric = "charts/episodic_return" if s.objective == "eval" else s.objective
    pruned = False

    def after_iteration(tr) -> bool:
        nonlocal pruned
        if curve_metric in tr.history[-1]:
            values.append(float(tr.history[-1][curve_metric]))
        running = recent_mean(values, s.last_fraction)
        if not math.isnan(running):
            trial.report(running, offset + tr.global_step)
            pruned = s.prune and trial.should_prune()
        return pruned

    trainer = Trainer(cfg, run_dir=run_dir, quiet=quiet)
    try:
        summary = trainer.train(after_iteration=after_iteration)
        if summary.interrupted:
            raise SweepStopped(f"trial {trial.number} seed {seed}")
        if pruned:
            raise optuna.TrialPruned(f"{trainer.global_step:,} agent-steps")
        if s.objective == "eval":
            from carrystate import evaluate

            stats = evaluate(trainer.policy, cfg, s.eval_episodes, seed=10_000 + seed)
            return float(sum(stats.episode_returns) / len(stats.episode_returns))
        if not values:
            raise ConfigError(f"sweep.objective={s.objective!r}: the run of seed {seed} never logged it")
        return recent_mean(values, s.last_fraction)
    finally:
        trainer.env.close()


def best_config(sw: Sweep, params: dict) -> str:
    """The base config with `params` applied, as YAML for `carrystate train` (no sweep section)."""
    data = apply_overrides(copy.deepcopy(sw.data), trial_overrides(params))
    data.pop("sweep", None)
    config_from_dict(data)  # still valid
    return yaml.safe_dump(data, sort_keys=False)


def write_results(sw: Sweep, study) -> None:
    """best.yaml, trials.md and report.html in the sweep folder, from the study as it stands."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    names = list(sw.space)
    rows = [
        "| trial | state | "
        + " | ".join(names)
        + " | score | "
        + " | ".join(f"seed {s}" for s in sw.cfg.sweep.seeds)
        + " |",
        "|---" * (3 + len(names) + len(sw.cfg.sweep.seeds)) + "|",
    ]
    for t in trials:
        cells = [str(t.number), t.state.name.lower(), *(_fmt(t.params.get(n)) for n in names)]
        cells.append(_fmt(t.value) if t.state == TrialState.COMPLETE else "")  # a pruned one's is a running value
        cells += [_fmt(t.user_attrs.get(f"seed_{s}")) for s in sw.cfg.sweep.seeds]
        rows.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{sum(t.state == st for t in trials)} {st.name.lower()}" for st in TrialState)
    head = f"# Sweep {sw.study_name}: {sw.cfg.sweep.trials} trials wanted; {counts}\n\n"
    head += f"Objective: {sw.cfg.sweep.objective} ({sw.cfg.sweep.direction}); storage {sw.storage_url}.\n\n"
    if done:
        best = study.best_trial
        head += f"Best: trial {best.number}, {_fmt(best.value)}: " + " ".join(trial_overrides(best.params)) + "\n\n"
        text = best_config(sw, best.params)
        note = f"# Best of sweep {sw.study_name}: trial {best.number}, {sw.cfg.sweep.objective} {_fmt(best.value)}\n"
        (sw.folder / "best.yaml").write_text(note + text)
    (sw.folder / "trials.md").write_text(head + "\n".join(rows) + "\n")
    try:
        write_plots(sw, study, len(done))
    except Exception as err:  # noqa: BLE001 (the trials and best config are written; plots are extra)
        warnings.warn(f"could not plot the sweep: {type(err).__name__}: {err}", stacklevel=2)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_plots(sw: Sweep, study, complete: int) -> None:
    """report.html: optimisation history, parameter importances (with 2+ complete trials) and every trial's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov
    from optuna.exceptions import ExperimentalWarning

    plots = [("history.png", ov.plot_optimization_history, "Objective of each trial, and the best so far")]
    if complete >= 2:
        plots.append(("importances.png", ov.plot_param_importances, "How much each setting explains (fANOVA)"))
    plots.append(("curves.png", ov.plot_intermediate_values, "Each trial's running objective (pruner's view)"))
    parts = [f"<h1>Sweep {sw.study_name}</h1>", f"<p>{(sw.folder / 'trials.md').name}: the table of trials.</p>"]
    for name, plot, caption in plots:
        with warnings.catch_warnings():  # experimental API; importances warn when trials tie
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            ax = plot(study)
        ax.figure.set_size_inches(8, 4.5)
        ax.figure.tight_layout()
        ax.figure.savefig(sw.folder / name, dpi=100)
        plt.close(ax.figure)
        parts.append(f"<h2>{caption}</h2><img src='{name}' alt='{caption}'>")
    (sw.folder / "report.html").write_text("<!doctype html><meta charset='utf-8'>\n" + "\n".join(parts) + "\n")
