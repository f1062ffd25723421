"""carrystate: recurrent PPO with exact, carried, segment-detached policy state.

The public API, for scripts, experiments and benchmarks:

    import carrystate
    trainer = carrystate.train("configs/cartpole_novel.yaml", ["trainer.seed=3"])  # trains, returns the Trainer
    trainer.summary, trainer.history, trainer.policy                             # what the run produced
    agent = carrystate.load("runs/<run>")                # a checkpoint's agent: agent.policy, agent.cfg
    stats = carrystate.evaluate(agent, episodes=200)      # its returns on fresh episodes of its env
    state = agent.initial_state()                         # your own loop: one observation in, one action out
    action, state = agent.act(obs, state)                 # (see carrystate/agent.py)

`Trainer(cfg)` builds a run without starting it (`trainer.train()` runs it); its public attributes are
`cfg`, `env`, `policy`, `buffer` (the `SegmentBuffer` of the last rollout), `learner` (its `optimizer`),
`history` (every iteration's logged scalars), `iteration`, `num_iterations` and `global_step`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from carrystate.agent import Agent
    from carrystate.config import Config
    from carrystate.policy import Policy
    from carrystate.trainer import Trainer


def train(
    config: str | Path | Config | None = None,
    overrides: list[str] = (),
    *,
    run_dir: str | Path | None = None,
    quiet: bool = True,
    iterations: int | None = None,
) -> Trainer:
    """Build a run from `config` (a YAML path, a `Config`, or None for the defaults) and `section.key=value`
    overrides, train it (all of `trainer.total_timesteps`, or `iterations` iterations), and return the
    Trainer; `trainer.summary` says what came of it. `run_dir`: where to write logs and checkpoints (None:
    nothing is written)."""
    from carrystate.config import Config, load_config
    from carrystate.trainer import Trainer

    if isinstance(config, Config):
        if overrides:
            raise ValueError("pass overrides with a config file or None, not with a Config object")
        cfg = config
    else:
        cfg = load_config(config, list(overrides))
    trainer = Trainer(cfg, run_dir=run_dir, quiet=quiet)
    trainer.summary = trainer.train(stop_after=iterations)
    return trainer


def load(path: str | Path, device: str = "cpu", seed: int = 0) -> Agent:
    """The agent of a checkpoint (a checkpoint folder, or a run folder for its newest intact checkpoint):
    `agent.initial_state()` and `agent.act(obs, state)`, its `policy` and the `cfg` it was trained with (it
    also unpacks as `policy, cfg = carrystate.load(path)`). `seed` seeds its action sampling."""
    from carrystate.agent import load as load_agent

    return load_agent(path, device, seed)


def evaluate(
    policy: Policy | Agent,
    cfg: Config | None = None,
    episodes: int = 100,
    *,
    seed: int = 12345,
    deterministic: bool = False,
    num_envs: int | None = None,
    video: int = 0,
    video_dir: str | Path | None = None,
):
    """`policy` (or an agent, whose config is the default `cfg`) on `episodes` fresh episodes of `cfg`'s env
    (built with `seed`, `num_envs` copies or as configured, closed after), its state carried and reset exactly
    as in training. Returns the episodes' `RolloutStats` (episode_returns, episode_lengths, success).
    `video=N`: also film the first N episodes of env copy 0 during this evaluation and write them into
    `video_dir` as eval_episode_<k>.mp4 (GIF without imageio-ffmpeg), listed in `stats.videos` (see
    carrystate/video.py)."""
    from carrystate.agent import Agent
    from carrystate.envs import make_env
    from carrystate.wiring import evaluate as run

    if isinstance(policy, Agent):
        policy, cfg = policy.policy, cfg or policy.cfg
    if cfg is None:
        raise ValueError("carrystate.evaluate(policy, cfg): a policy needs the config of its env")

    env_cfg = cfg.env.model_copy(update={"num_envs": num_envs or cfg.env.num_envs})
    frames = None
    if video:
        from carrystate import video as videos

        if video_dir is None:
            raise ValueError("carrystate.evaluate(video=N) needs video_dir, the folder to write the videos into")
        frames, fmt = videos.EpisodeFrames(video), videos.video_format()  # before the evaluation: what is missing
    env = make_env(env_cfg, seed=seed, render=frames is not None)
    try:
        if frames is not None:
            videos.film(env, frames, f"env.name={env_cfg.name}")
        until = None if frames is None else (lambda: frames.done)
        stats = run(policy, env, episodes, deterministic=deterministic, seed=seed, until=until)
    finally:
        env.close()
    if frames is not None:
        stats.videos = videos.write(frames.episodes, Path(video_dir), frames.fps, fmt)
    return stats


def __getattr__(name: str):
    if name == "Trainer":
        from carrystate.trainer import Trainer

        return Trainer
    if name == "Agent":
        from carrystate.agent import Agent

        return Agent
    if name in ("Config", "load_config"):
        from carrystate import config

        return getattr(config, name)
    raise AttributeError(f"module 'carrystate' has no attribute {name!r}")


__all__ = ["train", "load", "evaluate", "Agent", "Trainer", "Config", "load_config", "__version__"]
