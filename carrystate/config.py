"""Every setting of a run: pydantic models, YAML loading, `section.key=value` overrides, validation.

Invalid combinations fail here, before any environment or tensor is made, with a message naming the
setting at fault and what would be valid.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A setting (or combination of settings) that cannot work; the message says which and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class TMazeConfig(_Section):
    length_min: int = Field(8, ge=1)
    """Shortest corridor (steps between the cue and the junction)."""
    length_max: int = Field(24, ge=1)
    """Longest corridor; each episode draws its length uniformly from [length_min, length_max]."""

    @model_validator(mode="after")
    def _ordered(self) -> "TMazeConfig":
        if self.length_max < self.length_min:
            raise ValueError(
                f"env.tmaze.length_max={self.length_max} must be >= env.tmaze.length_min={self.length_min}"
            )
        return self


class RecallConfig(_Section):
    num_symbols: int = Field(4, ge=2)
    """How many distinct symbols the cue can be (chance success is 1/num_symbols)."""
    delay_min: int = Field(4, ge=1)
    """Fewest blank steps between the cue and the query."""
    delay_max: int = Field(16, ge=1)
    """Most blank steps between the cue and the query."""

    @model_validator(mode="after")
    def _ordered(self) -> "RecallConfig":
        if self.delay_max < self.delay_min:
            raise ValueError(
                f"env.recall.delay_max={self.delay_max} must be >= env.recall.delay_min={self.delay_min}"
            )
        return self


class GymConfig(_Section):
    id: str = "CartPole-v1"
    """A registered gymnasium environment id."""
    hide_velocity: bool = False
    """Drop the velocity entries of the observation (CartPole without velocity, a memory benchmark)."""
    vectorization: Literal["sync", "async"] = "sync"
    """Step the copies in this process (`sync`) or in worker processes (`async`)."""


class EnvConfig(_Section):
    name: Literal["tmaze", "recall", "gymnasium"] = "tmaze"
    """Which environment: the built-in `tmaze` or `recall` memory tasks, or any `gymnasium` id."""
    num_envs: int = Field(64, ge=1)
    """Environment copies stepped together as one batch."""
    tmaze: TMazeConfig = TMazeConfig()
    """Passive T-maze settings (used when name=tmaze)."""
    recall: RecallConfig = RecallConfig()
    """Delayed-recall settings (used when name=recall)."""
    gymnasium: GymConfig = GymConfig()
    """Gymnasium settings (used when name=gymnasium)."""

    @property
    def agents_per_env(self) -> int:
        """Agents in one copy of the environment (all built-in and gymnasium envs are single-agent)."""
        return 1

    @property
    def num_agents(self) -> int:
        """Agents in the whole batch: the rows of every per-step tensor."""
        return self.num_envs * self.agents_per_env


class PolicyConfig(_Section):
    encoder: Literal["mlp"] = "mlp"
    """Observation encoder; `mlp` for flat vector observations."""
    encoder_sizes: list[int] = [64]
    """Hidden layer widths of the MLP encoder."""
    core: Literal["lstm", "gru", "none"] = "lstm"
    """Recurrent core; `none` is a feed-forward control that shows whether a task needs memory."""
    hidden_size: int = Field(64, ge=1)
    """Width of the recurrent state (and of the feed-forward core when core=none)."""
    num_layers: int = Field(1, ge=1)
    """Stacked recurrent layers."""
    sequence_impl: Literal["auto", "chunked", "packed", "loop"] = "auto"
    """How training unrolls segments with exact resets: `chunked` (fused calls between reset steps),
    `packed` (episode fragments as one packed sequence), `loop` (one step at a time), `auto` (packed on
    CUDA, chunked on the CPU; see BENCHMARKS.md)."""


class TrainerConfig(_Section):
    total_timesteps: int = Field(400_000, ge=1)
    """Agent-steps to train for (rounded up to whole iterations)."""
    batch_size: int = Field(8192, ge=1)
    """Agent-steps collected per rollout with frozen weights."""
    bptt_horizon: int = Field(64, ge=1)
    """Steps per segment: gradients stop at segment boundaries, state values carry over."""
    minibatch_size: int = Field(2048, ge=1)
    """Agent-steps per optimizer step (minibatch_size / bptt_horizon segments)."""
    update_epochs: int = Field(4, ge=1)
    """Passes over the whole buffer per iteration; every segment trains once per pass."""
    learning_rate: float = Field(2.5e-3, gt=0)
    """Optimizer step size (Adam around 1e-4..3e-3; Muon around 0.02)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to zero over total_timesteps."""
    optimizer: Literal["adam", "muon"] = "adam"
    """`adam` for everything, or `muon` for the hidden weight matrices with Adam for the rest."""
    muon_adam_lr: float = Field(1e-3, gt=0)
    """With optimizer=muon: learning rate of the Adam half (biases, input layer, heads)."""
    adam_eps: float = Field(1e-5, gt=0)
    """Adam's epsilon."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    clip_coef: float = Field(0.2, gt=0)
    """PPO policy ratio clip."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's value estimates."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss."""
    ent_coef: float = Field(0.01, ge=0)
    """Weight of the entropy bonus."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Clip the global gradient norm to this."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    target_kl: float | None = None
    """Stop the update phase early once the approximate KL passes this (None: never)."""
    seed: int = 1
    """Seed for environments, sampling, shuffling and initial weights."""
    device: str = "cpu"
    """Torch device for the policy (`cpu`, `cuda`, `cuda:1`, ...)."""
    torch_threads: int = Field(1, ge=0)
    """torch.set_num_threads for the run. Small recurrent nets run fastest on one thread (several threads
    spin against each other and against the env); 0 leaves torch's default."""
    checkpoint_interval: int = Field(50, ge=1)
    """Write a checkpoint every this many iterations (and always at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """How many of the newest checkpoints to keep in the run folder."""
    run_name: str | None = None
    """Folder name under runs/; default: <env>-<core>-<seed>-<time>."""
    runs_dir: str = "runs"
    """Where run folders are created (relative to the current directory)."""


class Config(_Section):
    env: EnvConfig = EnvConfig()
    """The environment batch."""
    policy: PolicyConfig = PolicyConfig()
    """The network."""
    trainer: TrainerConfig = TrainerConfig()
    """The PPO loop."""

    @model_validator(mode="after")
    def _check_sizes(self) -> "Config":
        t = self.trainer
        agents = self.env.num_agents
        if t.minibatch_size % t.bptt_horizon:
            raise ValueError(
                f"trainer.minibatch_size={t.minibatch_size} must be a multiple of "
                f"trainer.bptt_horizon={t.bptt_horizon} (whole segments per minibatch); "
                f"nearest valid: {_nearest_multiples(t.minibatch_size, t.bptt_horizon)}"
            )
        rollout_unit = agents * t.bptt_horizon
        if t.batch_size % rollout_unit:
            raise ValueError(
                f"trainer.batch_size={t.batch_size} must be a multiple of agents × trainer.bptt_horizon = "
                f"{agents} × {t.bptt_horizon} = {rollout_unit} (every agent fills whole segments); "
                f"nearest valid: {_nearest_multiples(t.batch_size, rollout_unit)}"
            )
        if t.batch_size % t.minibatch_size:
            raise ValueError(
                f"trainer.batch_size={t.batch_size} must be divisible by trainer.minibatch_size="
                f"{t.minibatch_size}; valid minibatch sizes are multiples of trainer.bptt_horizon="
                f"{t.bptt_horizon} that divide {t.batch_size}, e.g. "
                f"{_valid_minibatches(t.batch_size, t.bptt_horizon)}"
            )
        if t.optimizer == "adam" and t.learning_rate > 0.01:
            warnings.warn(
                f"trainer.learning_rate={t.learning_rate} with trainer.optimizer=adam is likely to diverge; "
                "rates around 0.018 assume trainer.optimizer=muon (Adam usually wants 1e-4..3e-3)",
                UserWarning,
                stacklevel=2,
            )
        return self


def _nearest_multiples(value: int, unit: int) -> str:
    low = (value // unit) * unit
    options = [v for v in (low, low + unit) if v > 0]
    return " or ".join(str(v) for v in options)


def _valid_minibatches(batch: int, horizon: int) -> str:
    found = [m for m in range(horizon, batch + 1, horizon) if batch % m == 0]
    shown = found[:3] + (["..."] if len(found) > 6 else []) + found[-3:] if len(found) > 6 else found
    return ", ".join(str(v) for v in shown) or "none (batch_size is not a multiple of bptt_horizon)"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. trainer.batch_size=4096)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: the key must name a section and a setting, e.g. trainer.seed=3")
    return path, yaml.safe_load(raw) if raw.strip() else raw


def _apply(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then each `section.key=value` override, then validation."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (env, policy, trainer)")
        data = loaded or {}
    for item in overrides:
        key_path, value = parse_override(item)
        _apply(data, key_path, value)
    return config_from_dict(data)


def config_from_dict(data: dict) -> Config:
    """Validate a plain dict into a Config, turning pydantic's errors into one readable ConfigError."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                parent = e["loc"][:-1]
                model = _model_at(parent)
                allowed = ", ".join(model.model_fields) if model else ""
                lines.append(f"unknown setting {where!r}; allowed here: {allowed}")
            else:
                msg = e["msg"].removeprefix("Value error, ")
                lines.append(f"{where}: {msg}" if where else msg)
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def dump_config(cfg: Config) -> str:
    """The full resolved config as YAML (every field, so a run folder's copy reproduces the run)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
