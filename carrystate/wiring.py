"""How a run's parts are built from its config, in one place: every agent's carried state (`StateStore`), the
`Rollout` over the env batch, the `SegmentBuffer`, the `Learner`, and the run's random generators. The trainer,
`probe` and the checkpoint checks build through `build_parts`, evaluation through `build_rollout` (which
`build_parts` uses too); `Parts.per_rank` names the parts whose state a checkpoint holds for each rank, by the
prefix their entries carry. Also what is checked against this machine before anything is built
(`check_machine`), and where a run's folder goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from carrystate.buffer import SegmentBuffer
from carrystate.config import Config, TrainerConfig
from carrystate.distributed import DistContext
from carrystate.envs.base import VecEnv
from carrystate.errors import ConfigError
from carrystate.learner import Learner
from carrystate.monitor import wandb_problem
from carrystate.policy import Policy
from carrystate.rollout import Rollout, RolloutStats
from carrystate.state import StateStore


class Generators:
    """The run's random generators, one per component, seeded from the run's seed: action sampling (on the run's
    device), minibatch plans (the learner's), staleness samples (diagnostics; not saved: it changes no training),
    and torch's global generator (module initialisation) as a checkpoint's `rng.torch`."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.sample = torch.Generator(device).manual_seed(seed)
        self.shuffle = torch.Generator().manual_seed(seed + 1)
        self.staleness = torch.Generator().manual_seed(seed + 2)

    def state_dict(self) -> dict:
        return {"sample": self.sample.get_state(), "shuffle": self.shuffle.get_state(), "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sample.set_state(state["sample"])
        self.shuffle.set_state(state["shuffle"])
        torch.set_rng_state(state["torch"])


class EnvState:
    """An env batch's own state as a part of the run's: its arrays as tensors, the rest as JSON; nothing for an
    env that cannot save its state (`saves` false: a resumed run starts new episodes)."""

    def __init__(self, env: VecEnv):
        self.env = env
        self.saves = hasattr(env, "state_dict") and hasattr(env, "load_state_dict")

    def state_dict(self) -> dict:
        if not self.saves:
            return {}
        return {
            k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in self.env.state_dict().items()
        }

    def load_state_dict(self, state: dict) -> None:
        self.env.load_state_dict({k: v.numpy() if torch.is_tensor(v) else v for k, v in state.items()})


@dataclass
class Parts:
    """A run's parts over one env batch and one policy (one rank's, under torchrun)."""

    env: VecEnv
    policy: Policy
    store: StateStore
    rollout: Rollout
    buffer: SegmentBuffer
    learner: Learner
    generators: Generators

    def per_rank(self) -> dict:
        """prefix → part, for every part whose state a checkpoint holds per rank."""
        parts = {"store": self.store, "rng": self.generators, "rollout": self.rollout, "buffer": self.buffer}
        if self.learner.return_scale is not None:
            parts["return_scale"] = self.learner.return_scale
        return {**parts, "env": EnvState(self.env)}


def build_rollout(
    env: VecEnv,
    policy: Policy,
    seed: int,
    device: torch.device | str = "cpu",
    slow_env_warning_s: float | None = None,
    max_slow_warnings: int | None = None,
    double_buffer: bool | None = None,
) -> tuple[StateStore, Rollout]:
    """Every agent's carried state and the rollout over `env` that carries it: what training and evaluation share."""
    store = StateStore(policy.state_shapes, device)
    rollout = Rollout(
        env,
        store,
        device,
        seed=seed,
        double_buffer=double_buffer,
        slow_env_warning_s=slow_env_warning_s,
        max_slow_warnings=max_slow_warnings,
    )
    return store, rollout


def evaluate(
    policy: Policy,
    env: VecEnv,
    episodes: int,
    deterministic: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_steps: int = 1_000_000,
    until: Callable[[], bool] | None = None,
) -> RolloutStats:
    """Run the policy on fresh episodes of `env` (one batch, its own state store) for `episodes` episodes, and on
    until `until()` is true where given (a filmed copy's episodes, video.py)."""
    _, rollout = build_rollout(env, policy, seed, device, double_buffer=False)
    generator = torch.Generator(device).manual_seed(seed)
    return rollout.run_episodes(policy, episodes, generator, deterministic, max_steps, until)


def make_buffer(t: TrainerConfig, env: VecEnv, policy: Policy, device: torch.device | str) -> SegmentBuffer:
    """The segment buffer of one rollout of `t`'s layout over `env`'s agents."""
    return SegmentBuffer.for_spaces(
        env.num_agents,
        env.single_observation_space,
        env.single_action_space,
        policy.initial_state(1, device),
        batch_size=t.batch_size,
        horizon=t.bptt_horizon,
        burn_in=t.burn_in,
        device=device,
    )


def build_parts(
    cfg: Config,
    env: VecEnv,
    policy: Policy,
    seed: int,
    device: torch.device | str = "cpu",
    dist: DistContext | None = None,
    generator_device: torch.device | str | None = None,
) -> Parts:
    """Every part of a run of `cfg` (one rank's config) over `env` and `policy`, seeded by `seed`. On the `meta`
    device nothing is allocated for the state and the buffer (what the checkpoint checks use: the shapes a
    checkpoint of this config holds); `generator_device` then gives the action generator's device."""
    store, rollout = build_rollout(env, policy, seed, device, cfg.env.worker_timeout, cfg.env.max_slow_warnings)
    buffer = make_buffer(cfg.trainer, env, policy, device)
    generators = Generators(seed, generator_device or device)
    learner = Learner(policy, buffer, cfg.trainer, dist or DistContext(), generators.shuffle)
    return Parts(env, policy, store, rollout, buffer, learner, generators)


def check_machine(cfg: Config, device: torch.device, run_dir: Path | str | None = None) -> None:
    """The settings that are valid in themselves but may not work on this machine: the device is present, the
    configured unroll runs on it, the run folder can be created. Raises ConfigError naming the setting."""
    t = cfg.trainer
    if device.type == "cuda" and not (
        torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    ):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ConfigError(f"trainer.device={t.device!r}: this machine has {found}; use trainer.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={t.device!r}: MPS is not available here; use trainer.device=cpu")
    if cfg.policy.sequence_impl == "triton":
        from carrystate.policy.kernels import triton_scan

        why = triton_scan.why_unavailable(device, cfg.policy.hidden_size)
        if why:
            raise ConfigError(f"policy.sequence_impl=triton cannot run here: {why}")
    if cfg.logging.wandb and run_dir is not None and (why := wandb_problem()):
        raise ConfigError(why)
    if run_dir is not None:
        existing = Path(run_dir).absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(run_dir_problem(run_dir, cfg, f"{existing} is a file, not a folder"))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(run_dir_problem(run_dir, cfg, f"{existing} is not writable"))


def run_dir_problem(run_dir: Path | str, cfg: Config, why: str) -> str:
    return f"cannot create the run folder {run_dir} (trainer.runs_dir={cfg.trainer.runs_dir!r}): {why}"


def default_run_dir(cfg: Config) -> Path:
    core = cfg.policy.core.rpartition(":")[2]  # a user's module:Class: the class name (no colon in a path)
    name = cfg.trainer.run_name or (
        f"{cfg.env.name}-{core}-s{cfg.trainer.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(cfg.trainer.runs_dir) / name
