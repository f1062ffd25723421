"""Command line: `carrystate train | eval | probe | report | bench | build-kernels | config`. Parsing and
printing only; the work lives in the modules, each imported when its subcommand runs (so `--help` and a bad
argument answer without loading torch). `key=value` overrides may stand anywhere among the options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carrystate.errors import (
    CheckpointError,
    ConfigError,
    DistributedError,
    EnvError,
    Interrupted,
    NumericalError,
    ReportError,
)

TRAIN_EPILOG = """examples:
  carrystate train                                   # built-in T-maze, default settings
  carrystate train configs/cartpole_novel.yaml       # CartPole without velocity
  carrystate train trainer.bptt_horizon=16 policy.core=gru trainer.seed=3
settings are listed with their documentation by `carrystate config`"""


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """`carrystate train`'s words: (the config file or None, the key=value overrides in their order)."""
    config_path, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config_path is None:
            config_path = item
        else:
            raise ConfigError(f"two config files given ({config_path}, {item}); pass one, and key=value overrides")
    return config_path, overrides


def _train(args: argparse.Namespace) -> int:
    from carrystate.config import load_config

    config_path, overrides = split_items(args.items)
    cfg = None if args.resume else load_config(config_path, overrides)  # a bad setting answers before torch loads
    args.run_dir = args.resume  # where a stop looks for the newest checkpoint

    from carrystate.trainer import Trainer
    from carrystate.wiring import default_run_dir

    if args.resume:
        if config_path is not None:
            raise ConfigError("with --resume the run folder's own config is used; pass only key=value overrides")
        trainer = Trainer.resume(args.resume, overrides, quiet=args.quiet)
        if trainer.dist.is_main:
            print(
                f"resuming {args.resume} from {trainer.last_checkpoint} "
                f"(iteration {trainer.iteration}, {trainer.global_step:,} agent-steps)",
                flush=True,
            )
        if trainer.resume_note and trainer.dist.is_main:
            print(f"note: {trainer.resume_note}", flush=True)
    else:
        run_dir = args.run_dir = default_run_dir(cfg)  # under torchrun, rank 0's is used by all
        trainer = Trainer(cfg, run_dir=run_dir, quiet=args.quiet)  # checks the settings against this machine
        if trainer.dist.is_main:
            print(f"run folder: {trainer.run_dir}", flush=True)
    summary = trainer.train()
    if trainer.dist.is_main:
        print(summary.text())
    return 130 if summary.interrupted else 0


def _sweep(args: argparse.Namespace) -> int:
    from carrystate import sweep

    config_path, overrides = split_items(args.items)
    sw = sweep.setup(config_path, overrides, args.out, args.storage, args.study)  # bad input answers before imports
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError('carrystate sweep needs Optuna: pip install -e ".[sweep]"') from None
    print(f"sweep folder: {sw.folder} (study {sw.study_name!r}, {sw.storage_url})", flush=True)
    code = sweep.run(sw, quiet=args.quiet)
    print(f"results: {sw.folder / 'trials.md'}, {sw.folder / 'best.yaml'}, {sw.folder / 'report.html'}", flush=True)
    return code


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    import carrystate

    if args.video < 0:
        raise ConfigError(f"--video {args.video}: the number of episodes to film must be 0 (none) or more")
    agent = carrystate.load(Path(args.checkpoint))
    video_dir = None
    if args.video:
        from carrystate.video import videos_folder

        video_dir = videos_folder(Path(args.checkpoint))
    stats = carrystate.evaluate(
        agent,
        episodes=args.episodes,
        seed=args.seed,
        deterministic=args.deterministic,
        num_envs=args.num_envs,
        video=args.video,
        video_dir=video_dir,
    )
    r = np.array(stats.episode_returns)
    print(f"{len(r)} episodes: return {r.mean():.3f} ± {r.std():.3f} (min {r.min():.3f}, max {r.max():.3f})")
    if stats.success:
        print(f"success rate: {np.mean(stats.success):.1%}")
    if args.verbose:
        print("returns:", " ".join(f"{x:.3f}" for x in r))
        print("lengths:", " ".join(str(n) for n in stats.episode_lengths))
    for video in stats.videos:
        print(f"video: {video.path} ({video.steps} steps, {video.steps + 1} frames)")
    if args.video:
        if len(stats.videos) < args.video:
            print(f"note: env copy 0 ended {len(stats.videos)} of the {args.video} episodes asked for")
        print(f"`carrystate report {video_dir.parent}` embeds the first in report.html")
    return 0


def _config(args: argparse.Namespace) -> int:
    from carrystate.config import dump_config, load_config, settings

    if args.show:
        print(dump_config(load_config(args.show if args.show != "-" else None)), end="")
        return 0
    if args.metrics:
        from carrystate.metrics import table

        print(table())
        return 0

    for setting in settings():  # the documentation's settings page lists the same (docs/hooks.py)
        print(f"{setting.name} = {setting.default!r}\n    {setting.doc}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import carrystate
    from carrystate.diagnostics import probe

    agent = carrystate.load(Path(args.checkpoint))
    horizons = [h if h == "episode" else int(h) for h in args.gradient_horizon or ()]
    horizons = horizons or [agent.cfg.trainer.bptt_horizon, "episode"]
    result = probe(agent.policy, agent.cfg, horizons, args.max_lag, args.seed, args.out)
    T = result["bptt_horizon"]
    names = list(result["curves"])
    print("lag  " + "  ".join(f"{'gh ' + n:>12}" for n in names))
    lags = len(next(iter(result["curves"].values())))
    for k in sorted(set(list(range(0, lags, max(1, T // 4))) + [T - 1, T, 2 * T - 1, 2 * T])):
        if k < lags:
            print(f"{k:4d} " + "  ".join(f"{result['curves'][n][k]:12.3e}" for n in names))
    if args.out:
        print(f"plot: {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from carrystate import report

    print(f"wrote {report.write(Path(args.run_dir))}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import importlib
    import importlib.util

    import carrystate

    # the benchmarks live beside the package in a checkout (`pip install -e .`), not inside it
    folder = Path(carrystate.__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "__init__.py").is_file():
        print(
            f"carrystate bench: no benchmarks at {folder}; they come with a source checkout, not with the "
            "installed package (git clone, then pip install -e .)",
            file=sys.stderr,
        )
        return 2
    if "benchmarks" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        sys.modules["benchmarks"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    benchmarks, report = sys.modules["benchmarks"], importlib.import_module("benchmarks.report")
    out, md = Path(args.results), Path(args.markdown)
    if args.report_only:
        report.write(md, out)
    else:
        benchmarks.run(out, quick=args.quick, markdown=md, only=args.only, pufferlib_python=args.pufferlib_python)
    print(f"wrote {md} (results in {out})")
    return 0


def _build_kernels(args: argparse.Namespace) -> int:
    import os

    from carrystate.policy import kernels

    path = kernels.build("cpu", "lstm")
    if path is None:
        print(
            "CPU kernels not built (CARRYSTATE_NO_CPP=1, or the build failed as warned above): the torch-op loop runs"
        )
        return 0 if os.environ.get("CARRYSTATE_NO_CPP") == "1" else 1
    print(f"CPU kernels: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carrystate", description="Recurrent PPO with exact, carried LSTM/GRU state.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="train a policy",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with CONFIG (a YAML file; default settings if omitted) and "
        "section.key=value overrides. Writes runs/<run-name>/.",
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a config file and/or overrides")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest intact "
        "checkpoint (overrides such as trainer.total_timesteps=... still apply)",
    )
    p.set_defaults(func=_train)
    p = sub.add_parser(
        "sweep",
        help="search hyperparameters over a config's sweep section (Optuna)",
        description="Run the hyperparameter search that CONFIG's `sweep` section describes (search space, "
        "objective, trials, seeds; `carrystate config` lists its settings). Each trial's seeds are ordinary run "
        "folders under the sweep folder; the study is kept in SQLite there (or --storage), so a stopped sweep "
        "resumes when run again and several processes started on one study share its trials. Writes best.yaml, "
        'trials.md and report.html to the sweep folder. Needs `pip install -e ".[sweep]"`.',
    )
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a config file and/or overrides")
    p.add_argument("--out", default=None, help="the sweep folder (default sweeps/<study>)")
    p.add_argument("--study", default=None, help="the study's name (default: the config file's name)")
    p.add_argument(
        "--storage",
        default=None,
        help="an Optuna storage URL shared by processes or machines, e.g. postgresql://host/db "
        "(default: sqlite in the sweep folder)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line for each run")
    p.set_defaults(func=_sweep)
    p = sub.add_parser(
        "eval",
        help="run episodes with a trained policy and print returns",
        description="Run a checkpoint's policy (a checkpoint folder or a run folder) and print returns.",
    )
    p.add_argument("checkpoint", help="runs/<name> or runs/<name>/checkpoints/iter_N")
    p.add_argument("--episodes", type=int, default=100, help="episodes to run (default 100)")
    p.add_argument("--num-envs", type=int, default=None, help="env copies (default: as trained)")
    p.add_argument("--deterministic", action="store_true", help="take the most likely action instead of sampling")
    p.add_argument("--seed", type=int, default=12345, help="env and sampling seed")
    p.add_argument("-v", "--verbose", action="store_true", help="print every episode's return and length")
    p.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="N",
        help="film the first N episodes of env copy 0 of this evaluation into RUN/videos/eval_episode_<k>.mp4 "
        "(GIF without imageio-ffmpeg); for envs that render rgb_array frames (gymnasium, MettaGrid)",
    )
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "probe",
        help="plot how far back gradients reach in a trained policy",
        description="For a checkpoint's policy on fresh rollouts: the norm of the gradient of the "
        "loss at an agent's last step with respect to the observation k steps earlier, "
        "through the training unroll, for each gradient horizon. Segment cuts show as "
        "a drop to exactly zero.",
    )
    p.add_argument("checkpoint", help="runs/<name> or a checkpoint folder")
    p.add_argument(
        "--gradient-horizon",
        nargs="+",
        metavar="H",
        help="gradient horizons to compare (multiples of bptt_horizon or 'episode'; default: bptt_horizon and episode)",
    )
    p.add_argument("--max-lag", type=int, default=None, help="largest lag (default: a whole rollout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="gradient_reach.png", help="PNG to write (default gradient_reach.png)")
    p.set_defaults(func=_probe)
    p = sub.add_parser(
        "report",
        help="write a run's report.html (plots of what it logged)",
        description="Write RUN_DIR/report.html from the run's TensorBoard events (finished, stopped or still "
        "running): return and success rate, SPS and the env/policy/learner time split, the losses and the "
        "staleness of carried state, as PNGs embedded in one self-contained page.",
    )
    p.add_argument("run_dir", help="runs/<name>")
    p.set_defaults(func=_report)
    p = sub.add_parser(
        "bench",
        help="measure the learner, memory and whole training; write BENCHMARKS.md",
        description="Run the CPU benchmarks (learner unrolls vs the fused call and torchrl, learner "
        "memory vs horizon, end-to-end SPS vs sb3-contrib RecurrentPPO and vs the floor, MettaGrid training vs "
        "PufferLib when mettagrid is installed) and write BENCHMARKS.md. CUDA results saved in RESULTS are "
        "included.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller grid and fewer repeats")
    p.add_argument(
        "--only",
        choices=["learner", "end_to_end", "mettagrid"],
        default=None,
        help="run one part only (the report keeps the other parts' saved results)",
    )
    p.add_argument(
        "--pufferlib-python",
        default=None,
        help="a Python with PufferLib installed, for the MettaGrid comparison (default: this one, if it has it)",
    )
    p.add_argument(
        "--results", default="benchmarks/results", help="folder of JSON results (default benchmarks/results)"
    )
    p.add_argument("--markdown", default="BENCHMARKS.md", help="report to write (default BENCHMARKS.md)")
    p.add_argument("--report-only", action="store_true", help="only render the report from saved results")
    p.set_defaults(func=_bench)
    p = sub.add_parser(
        "build-kernels",
        help="compile the CPU kernels now (else the first training run does)",
        description="Compile the C++ kernels of the CPU scan unroll and rollout step for this machine "
        "(once; torch caches them) and print where the library lies.",
    )
    p.set_defaults(func=_build_kernels)
    p = sub.add_parser(
        "config",
        help="list every setting with its documentation, or print a resolved config",
        description="Without options: every setting, its default and documentation.",
    )
    p.add_argument("--show", metavar="CONFIG", help="print the full resolved YAML of CONFIG ('-' for defaults)")
    p.add_argument("--metrics", action="store_true", help="list every metric a run logs, with its meaning")
    p.set_defaults(func=_config)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `train`'s config file and `key=value` overrides may stand before, between or after its
    options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    words = [a for a in extra if not a.startswith("-")]  # a config file or overrides after an option
    unknown = [a for a in extra if a not in words] if hasattr(args, "items") else extra
    if hasattr(args, "items"):
        args.items += words
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _stopped(err: BaseException, args: argparse.Namespace | None) -> str:
    """What a stop by a signal outside training's graceful handling left: the newest checkpoint, or none."""
    run_dir = getattr(args, "run_dir", None)
    newest = sorted(Path(run_dir, "checkpoints").glob("iter_*"))[-1:] if run_dir else []
    why = f"stopped by {err or 'SIGINT'}"
    if newest:
        return f"{why}; the last good checkpoint is left as it was: {newest[0]} (continue with --resume {run_dir})"
    return f"{why}; no checkpoint was written yet" + (f" in {run_dir}" if run_dir else "")


def main(argv: list[str] | None = None) -> int:
    """Run one command. From here to the end a SIGINT or SIGTERM ends the process with code 130 and one line
    (training itself first stops at its next safe point and writes a checkpoint: `signals.GracefulStop`)."""
    from carrystate.signals import stop_at_once  # (imports no torch)

    with stop_at_once():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # as torchrun announces them
    prog = f"carrystate (rank {os.environ.get('RANK', '0')})" if ranks > 1 else "carrystate"
    args = None
    try:
        args = parse(argv)
        return args.func(args)
    except (ConfigError, CheckpointError, ReportError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    except (EnvError, NumericalError, DistributedError) as err:
        print(f"{prog}: training stopped: {err}", file=sys.stderr)
        if isinstance(err, DistributedError):
            from carrystate.distributed import exit_now

            exit_now(1)  # the process group is broken: leaving it in order is impossible
        return 1
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"{prog}: {_stopped(err, args)}", file=sys.stderr)
        return 130
    finally:
        if "carrystate.distributed" in sys.modules:  # leave the process group (under torchrun), also after an error
            sys.modules["carrystate.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
