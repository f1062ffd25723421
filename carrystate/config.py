"""Every setting of a run: pydantic models, YAML loading, `section.key=value` overrides, validation.

Invalid combinations fail here, before any environment or tensor is made, with a message naming the
setting at fault and what would be valid; the few that depend on the number of agents (`check_layout`) are
checked as soon as the env is built and has counted them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carrystate import registry
from carrystate.errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps")
OTHER_TORCH_DEVICES = ("meta", "xpu", "xla", "hpu", "mtia", "ipu", "lazy", "vulkan", "ve", "privateuseone", "hip")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class TMazeConfig(_Section):
    length_min: int = Field(8, ge=1)
    """Shortest corridor (steps between the cue and the junction)."""
    length_max: int = Field(24, ge=1)
    """Longest corridor; each episode draws its length uniformly from [length_min, length_max]."""

    @model_validator(mode="after")
    def _ordered(self) -> TMazeConfig:
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
    def _ordered(self) -> RecallConfig:
        if self.delay_max < self.delay_min:
            raise ValueError(f"env.recall.delay_max={self.delay_max} must be >= env.recall.delay_min={self.delay_min}")
        return self


class GymConfig(_Section):
    id: str = "CartPole-v1"
    """A registered gymnasium environment id, or `module:EnvId` to import `module` first (which registers
    `EnvId`, as gymnasium.make does with that form)."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for gymnasium.make (e.g. {max_episode_steps: 200})."""
    wrappers: list[str | dict[str, dict[str, Any]]] = []
    """Gymnasium wrappers by import path, applied to each copy in this order (the first wraps the env, the next
    wraps that): `package.module:ClassName`, called with the env alone, or a one-key mapping
    `{package.module:ClassName: {keyword: value}}` that also passes keyword arguments (e.g.
    `{gymnasium.wrappers:TimeLimit: {max_episode_steps: 200}}`)."""
    hide_velocity: bool = False
    """Drop the velocity entries of the observation (CartPole without velocity, a memory benchmark)."""
    vectorization: Literal["sync", "async"] = "sync"
    """Step the copies in this process (`sync`) or in worker processes (`async`)."""
    success_above: float | None = None
    """Count an episode whose return exceeds this as a success (logged as the success rate), for tasks with no
    success flag of their own (MiniGrid: 0, as only reaching the goal pays). None: no success rate."""

    @field_validator("wrappers")
    @classmethod
    def _one_class_per_entry(cls, wrappers: list) -> list:
        for i, entry in enumerate(wrappers):
            if isinstance(entry, dict) and len(entry) != 1:
                raise ValueError(
                    f"env.gymnasium.wrappers[{i}] must be one `module:Class: {{keyword: value}}` pair, "
                    f"got {len(entry)} keys"
                )
        return wrappers


class PettingZooConfig(_Section):
    env: str = "pettingzoo.butterfly.knights_archers_zombies_v11"
    """Module holding a `parallel_env` factory, or `module:callable` for any callable that returns a
    PettingZoo `ParallelEnv`. Every agent of `possible_agents` gets a row of the batch."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for the factory (e.g. {max_cycles: 900})."""


class PopGymConfig(_Section):
    id: str = "RepeatPreviousEasy"
    """A registered POPGym env: its class name (`RepeatPreviousEasy`) or gymnasium id
    (`popgym-RepeatPreviousEasy-v0`); see `popgym.envs.ALL`."""
    previous_action: bool = True
    """Append the previous action to the observation (one-hot for discrete actions, all zeros at an
    episode's first step), as POPGym's baselines do."""


class MettaGridEnvConfig(_Section):
    map: Literal["arena", "navigation"] = "arena"
    """`arena` (random walls and heart altars on a bordered square map) or `navigation` (a random open map
    with heart altars); reward 1 for every heart an agent collects."""
    agents: int = Field(24, ge=1)
    """Agents in one copy of the map (each is a row of the batch)."""
    size: int = Field(25, ge=5)
    """Width and height of the map in cells."""
    altars: int = Field(10, ge=0)
    """Heart altars placed on the map; using one (moving into it) gives the agent a heart."""
    walls: int = Field(10, ge=0)
    """Extra wall cells scattered over the map."""
    max_steps: int = Field(1000, ge=1)
    """Episode length; the episode is truncated (bootstrapped) there."""
    obs_tokens: int = Field(200, ge=1)
    """Tokens per observation (`[obs_tokens, 3]`); tokens beyond what an agent sees are empty (255)."""


class CustomEnvConfig(_Section):
    factory: str | None = None
    """`module:function` that builds your own batch: called as `function(num_envs, seed, **kwargs)`, it returns
    an object with the VecEnv attributes (num_agents, single_observation_space, single_action_space, reset,
    step, close; see carrystate/envs/base.py and docs/custom.md, "Your own environment")."""
    kwargs: dict[str, Any] = {}
    """Further keyword arguments for the factory."""


class EnvConfig(_Section):
    # choices and documentation come from the env registry (carrystate/registry.py)
    name: Literal[tuple(registry.ENVS)] = Field("tmaze", description=registry.describe_envs())
    num_envs: int = Field(64, ge=1)
    """Environment copies stepped together (in all batches together when double_buffer is on)."""
    tmaze: TMazeConfig = TMazeConfig()
    """Passive T-maze settings (used when name=tmaze)."""
    recall: RecallConfig = RecallConfig()
    """Delayed-recall settings (used when name=recall)."""
    gymnasium: GymConfig = GymConfig()
    """Gymnasium settings (used when name=gymnasium)."""
    pettingzoo: PettingZooConfig = PettingZooConfig()
    """PettingZoo settings (used when name=pettingzoo)."""
    popgym: PopGymConfig = PopGymConfig()
    """POPGym settings (used when name=popgym)."""
    mettagrid: MettaGridEnvConfig = MettaGridEnvConfig()
    """MettaGrid settings (used when name=mettagrid)."""
    custom: CustomEnvConfig = CustomEnvConfig()
    """Your own env's factory (used when name=custom)."""
    workers: int = Field(0, ge=0)
    """Worker processes per batch that step its env copies (0: step them in the training process). A
    batch's copies are split evenly over its workers (with double_buffer there are 2 × workers processes)."""
    double_buffer: bool = False
    """Split the copies into two batches that alternate: the policy computes one batch's actions while the
    other batch steps (in its workers). Needs an even num_envs; pays off with workers > 0."""
    shared_workers: bool = False
    """With double_buffer and workers >= 1 (no effect otherwise): the two batches share their worker processes
    (env.workers in all, each holding its share of either batch and stepping the one asked) instead of env.workers
    per batch. Fewer processes to compete for the cores with the training process; the same env copies and seeds."""
    worker_timeout: float = Field(60.0, gt=0)
    """Seconds to wait for a worker's answer before stopping with an error (a dead worker is reported as
    soon as it is seen dead). With workers=0 an env call has no deadline: one that has not returned after this
    long gets a warning naming the env, and training keeps waiting (workers are the remedy for an env that
    can hang)."""
    max_slow_warnings: int | None = Field(None, ge=0)
    """With workers=0: make env.worker_timeout hold for an env call in the training process too. A call that has
    not returned gets a warning every env.worker_timeout, and after this many warnings training stops with an
    error naming the env (the call is interrupted; if the env does not give control back within one more
    env.worker_timeout, the process exits); the last checkpoint stays resumable. None: one warning, then wait."""

    @model_validator(mode="after")
    def _check_custom(self) -> EnvConfig:
        if self.name == "custom" and not self.custom.factory:
            raise ValueError("env.name=custom needs env.custom.factory='module:function' (the function that builds it)")
        return self

    @model_validator(mode="after")
    def _check_batches(self) -> EnvConfig:
        batches = 2 if self.double_buffer else 1
        if self.num_envs % batches:
            raise ValueError(
                f"env.double_buffer=true splits env.num_envs={self.num_envs} into two batches; "
                f"it must be even (e.g. {self.num_envs + 1})"
            )
        per_batch = self.num_envs // batches
        if self.workers and per_batch % self.workers:
            raise ValueError(
                f"env.num_envs={self.num_envs} gives {per_batch} copies per batch, which env.workers="
                f"{self.workers} cannot split evenly; use a worker count that divides {per_batch}"
            )
        return self


class PolicyConfig(_Section):
    encoder: Literal["mlp", "token"] = "mlp"
    """Observation encoder; `mlp` for flat vector observations, `token` for MettaGrid-style token lists
    `[tokens, 3]` (location, feature, value bytes; 255 marks an empty token). Structured observations (Dict,
    Tuple, Discrete) get one encoder per entry whatever this says (an MLP for vectors, a CNN for 3-D boxes,
    an embedding for Discrete), concatenated before the core."""
    encoder_sizes: list[int] = [64]
    """Hidden layer widths of the MLP encoder (with encoder=token: of the MLP after pooling)."""
    token_embed_size: int = Field(64, ge=1)
    """With encoder=token: width of each token's embedding before pooling."""
    token_features: int = Field(64, ge=1)
    """With encoder=token: feature ids lie below this (MettaGrid's arena emits ids up to 51); the table holds
    two rows per (location, feature) pair."""
    embed_size: int = Field(8, ge=1)
    """Structured observations (Dict, Tuple, Discrete): width of the learned vector a Discrete value picks, and
    that each channel's value of an embedded image picks."""
    image_encoding: Literal["embed", "scale"] = "embed"
    """Structured observations with an integer image (a 3-D Box entry): `embed` gives each channel's value a
    learned vector before the CNN (right for grids of object, colour and state ids, such as MiniGrid's);
    `scale` feeds value / high (right for camera pixels). Float images are always scaled."""
    cnn_channels: list[int] = [16, 32]
    """Structured observations with an image: output channels of the CNN's 3×3 convolutions (a flatten and one
    ReLU layer of encoder_sizes[-1] follow)."""
    # choices and documentation come from the core registry (carrystate/registry.py)
    core: str = Field("lstm", description=registry.describe_cores())
    core_options: dict[str, Any] = {}
    """With your own core (policy.core=module:Class): keyword arguments its constructor receives."""
    hidden_size: int = Field(64, ge=1)
    """Width of the recurrent state (and the output width of the window and feed-forward cores)."""
    num_layers: int = Field(1, ge=1)
    """Stacked recurrent layers."""
    window: int = Field(32, ge=2)
    """core=window: steps the core sees, the current one included; its carried state is the encoder's outputs of
    the `window - 1` steps before."""
    # choices and documentation come from the unroll registry (carrystate/registry.py)
    sequence_impl: Literal[("auto", *registry.UNROLLS)] = Field("auto", description=registry.describe_unrolls())
    critic: Literal["shared", "separate"] = "shared"
    """`shared`: the value head reads the actor's recurrent core. `separate`: the critic has its own encoder
    and recurrent core, with its own carried state (stored, replayed and reset exactly like the actor's)."""
    forget_bias: float = 0.0
    """With chrono_tmax=0: the initial bias of every LSTM forget gate (the other biases start at 0, recurrent
    weights orthogonal)."""
    chrono_tmax: int = Field(128, ge=0)
    """LSTM chrono initialisation (Tallec & Ollivier 2018), the default: each unit's forget-gate bias starts at
    log(u), u uniform in [1, chrono_tmax - 1], and its input-gate bias at the negative, so units start out
    keeping their content for 1 to chrono_tmax steps (with every bias at 0, what was stored halves every step).
    0: every bias starts at 0, the forget gates at forget_bias."""
    chrono_input: bool = True
    """With chrono_tmax: the input gates start at the negative of their unit's forget-gate bias (the paper's
    choice: a unit that keeps long also writes little), or at 0 when false."""
    chrono_spread: Literal["uniform", "log"] = "uniform"
    """With chrono_tmax: how the units' memory lengths u spread over [1, chrono_tmax - 1]. `uniform` (the
    paper's): most units start long-lived. `log`: log(u) uniform, so the forget-gate biases spread evenly over
    [0, log(chrono_tmax - 1)] and short- and long-lived units are equally common."""
    obs_norm: bool | None = None
    """Normalise observations by a running per-feature mean and variance, updated after each update from
    that rollout's observations (never inside an update) and saved with the weights. None (the default): on
    for encoder=mlp, off for encoder=token (token ids and values are not intensities; its effect: EXPERIMENTS.md).
    Structured observations normalise their vector entries only (not images, not Discrete values)."""
    obs_clip: float = Field(10.0, gt=0)
    """With obs_norm: clip normalised observations to ±obs_clip."""

    @property
    def normalizes_obs(self) -> bool:
        """Whether observations are normalised (obs_norm, resolved for the encoder)."""
        return self.obs_norm if self.obs_norm is not None else self.encoder != "token"

    @model_validator(mode="after")
    def _check_sequence_impl(self) -> PolicyConfig:
        registry.check_core(self.core)  # ValueErrors naming the setting and the choices
        registry.check_unroll(self.sequence_impl, self.core)
        if self.core_options and self.core in registry.CORES:
            raise ValueError(
                f"policy.core_options are for a core of your own (module:Class); core={self.core} takes its "
                "settings from the policy section"
            )
        return self

    @model_validator(mode="after")
    def _check_chrono(self) -> PolicyConfig:
        if self.chrono_tmax and self.forget_bias:
            raise ValueError(
                f"policy.forget_bias={self.forget_bias} needs policy.chrono_tmax=0: the chrono initialisation (on "
                f"by default, chrono_tmax={self.chrono_tmax}) sets the forget-gate biases itself"
            )
        if self.chrono_tmax == 1 or self.chrono_tmax == 2:
            raise ValueError(f"policy.chrono_tmax={self.chrono_tmax} must be 0 (off) or at least 3")
        return self

    @model_validator(mode="after")
    def _check_obs_norm(self) -> PolicyConfig:
        if self.obs_norm and self.encoder == "token":
            raise ValueError(
                "policy.obs_norm=true does not apply to policy.encoder=token (token ids and values "
                "are not intensities); set policy.obs_norm=false"
            )
        return self


class DiagnosticsConfig(_Section):
    staleness_segments: int = Field(16, ge=0)
    """Segments sampled each iteration to measure how stale carried state is after the update (0: off)."""
    staleness_window: int | None = Field(None, ge=1)
    """Rows (segments) of the agent's past replayed to recompute a start state; None: all of the rollout's
    earlier rows (so from the last episode start when it lies inside the rollout)."""


class LoggingConfig(_Section):
    report: bool = True
    """At the end of a run (finished or stopped), write runs/<run>/report.html: plots of everything it logged
    (`carrystate report runs/<run>` writes one at any time)."""
    wandb: bool = False
    """Also log every scalar that goes to TensorBoard (the same names) and the resolved config to Weights & Biases
    (`pip install -e ".[wandb]"`); only runs that write a run folder log (the CLI's always do)."""
    wandb_project: str = "carrystate"
    """The W&B project; the W&B run is named after the run folder (a resumed run logs to a new W&B run of that
    name, its steps going on from the checkpoint's)."""
    wandb_entity: str | None = None
    """The W&B team or user (None: your default entity)."""
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    """`auto`: WANDB_MODE if set, else online when WANDB_API_KEY is set and offline when not (the run is then
    kept in the W&B folder, WANDB_DIR or the run folder, for `wandb sync`)."""


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
    start_state: Literal["stored", "zero", "refresh"] = "stored"
    """State each training segment starts from: `stored` (what the agent held in the rollout), `zero` (as
    several trainers do), `refresh` (recomputed with the current weights before every epoch; a rollout's
    first rows keep their stored state)."""
    burn_in: int = Field(0, ge=0)
    """R2D2 burn-in: warm each segment's start state up over this many preceding steps without gradient
    (0: off; must be below bptt_horizon)."""
    gradient_horizon: int | Literal["episode"] | None = None
    """How far back gradients reach: a multiple of bptt_horizon (consecutive segments of an agent are
    trained as one chain, with activation checkpointing per segment), `episode` (all of an agent's rows in a
    rollout), or None (= bptt_horizon: gradients stop at every segment boundary)."""
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
    fused_adam: bool = True
    """Adam as torch's one-kernel step where the device has one (CPU, CUDA): the same update, rounded differently
    (the same learning: EXPERIMENTS.md), and faster than the per-tensor loop, most of all with large tables such as
    MettaGrid's token table (BENCHMARKS.md)."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda."""
    clip_coef: float = Field(0.2, gt=0)
    """PPO policy ratio clip."""
    clip_coef_final: float | None = Field(None, ge=0)
    """Anneal clip_coef linearly to this value over total_timesteps (None: constant)."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's value estimates."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss."""
    ent_coef: float = Field(0.01, ge=0)
    """Weight of the entropy bonus."""
    ent_coef_final: float | None = Field(None, ge=0)
    """Anneal ent_coef linearly to this value over total_timesteps (None: constant)."""
    norm_reward: bool = True
    """Divide rewards by the running standard deviation of the discounted return (as sb3's VecNormalize), so
    value losses have a similar size on every task and one vf_coef serves them; updated from each rollout,
    saved with the run (its effect: EXPERIMENTS.md)."""
    reward_clip: float = Field(10.0, gt=0)
    """With norm_reward: clip scaled rewards to ±reward_clip."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Clip the global gradient norm to this."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    target_kl: float | None = None
    """Stop the update phase early once the approximate KL passes this (None: never)."""
    seed: int = Field(1, ge=0, lt=2**32)
    """Seed for environments, sampling, shuffling and initial weights (0 .. 2**32 - 1)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """The policy's matrix products, in the rollout and in training: `fp32` (everything float32, replay exactly the
    rollout's function) or `bf16` (bfloat16 operands, float32 accumulation, on the CPU and CUDA alike; the carried
    state, start states, gates, losses, GAE and optimizer stay float32: carrystate/precision.py). Replay stays
    within the bound README's invariants state for it; the unrolls `packed` and `triton` refuse it."""
    device: str = "cpu"
    """Torch device for the policy (`cpu`, `cuda`, `cuda:1`, `mps`); the run checks that it is present."""
    torch_threads: int = Field(1, ge=0)
    """torch.set_num_threads for the run. Small recurrent nets run fastest on one thread (several threads
    spin against each other and against the env); 0 leaves torch's default."""
    keep_freed_memory: bool = True
    """Have the C library's allocator keep memory the run frees (glibc: no separate mapping for blocks up to its
    32 MiB ceiling, no handing the heap's top back): every minibatch frees and allocates the same large tensors, and
    memory handed back to the system is faulted in again page by page, each page zeroed. Set once for the whole
    process; nothing where the C library is not glibc."""
    checkpoint_interval: int = Field(50, ge=1)
    """Write a checkpoint every this many iterations (and always at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """How many of the newest checkpoints to keep in the run folder."""
    run_name: str | None = None
    """Folder name under runs/; default: <env>-<core>-<seed>-<time>."""
    runs_dir: str = "runs"
    """Where run folders are created (relative to the current directory)."""
    scale_batch_with_world_size: bool = False
    """Under torchrun: false, every rank runs env.num_envs copies and collects batch_size agent-steps in
    minibatches of minibatch_size (an iteration is world_size × batch_size); true, those three sizes are the
    whole run's and are divided among the ranks (each must be a multiple of the number of ranks).
    total_timesteps always counts all ranks' agent-steps."""
    dist_timeout_s: float = Field(300.0, gt=0)
    """Under torchrun: seconds a rank waits for the others in any collective (joining, averaging gradients,
    checkpointing) before stopping with an error, so a dead or hung rank never hangs the rest."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        match = re.fullmatch(r"([a-z_]+)(:\d+)?", name)
        if match is None or match[1] not in (*DEVICE_TYPES, *OTHER_TORCH_DEVICES):
            raise ValueError(f"trainer.device={name!r} is not a torch device; use cpu, cuda or cuda:N")
        if match[1] not in DEVICE_TYPES:
            raise ValueError(f"trainer.device={name!r}: a {match[1]} device cannot train here; use cpu, cuda or cuda:N")
        return name

    def chain_length(self, rows_per_agent: int) -> int:
        """Segments per gradient chain, given the segments each agent fills per rollout: all of them for
        gradient_horizon=episode, gradient_horizon / bptt_horizon for a number, 1 for None."""
        if self.gradient_horizon == "episode":
            return rows_per_agent
        return (self.gradient_horizon or self.bptt_horizon) // self.bptt_horizon


class SweepParam(_Section):
    """One searched setting: a range (`low`, `high`, optionally `log` or `step`; whole numbers make it an integer
    range) or a list of `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            if not self.choices:
                raise ValueError("choices is empty")
        elif self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices")
        elif self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (low={self.low})")
        elif self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    @property
    def is_int(self) -> bool:
        """An integer range: low, high (and step) are whole numbers as written."""
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return self.choices is None and all(isinstance(v, int) for v in ends)


class SweepConfig(_Section):
    """`carrystate sweep CONFIG` (Optuna): the search space, the objective and the budget. `carrystate train`
    ignores this section."""

    space: dict[str, SweepParam] = {}
    """The searched settings, by their `section.key` names: `{low: 1e-4, high: 3e-3, log: true}`, `{low: 1, high:
    8}` (integers), `{low: 0.9, high: 0.99, step: 0.01}` or `{choices: [lstm, gru]}`."""
    objective: str = "charts/episodic_return"
    """What a trial scores: a logged metric (see `carrystate config --metrics`) averaged over the last
    `last_fraction` of its iterations that logged it, or `eval` (the mean return of `eval_episodes` fresh
    episodes of the final policy, as `carrystate eval`); averaged over the trial's seeds."""
    last_fraction: float = Field(0.1, gt=0, le=1)
    """With a logged metric: the fraction of the run, at its end, whose values are averaged."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether the objective is to be maximised or minimised."""
    trials: int = Field(20, ge=1)
    """Trials in the study (across all processes that share it; failed ones are retried and not counted)."""
    seeds: list[int] = Field([1], min_length=1)
    """trainer.seed of each run of a trial; the trial's score is their mean."""
    eval_episodes: int = Field(100, ge=1)
    """With objective=eval: fresh episodes per run."""
    prune: bool = True
    """Stop trials that fall behind: Optuna's median pruner, fed the objective metric's running value after every
    iteration (the mean of its values over the last `last_fraction` of the iterations so far; with objective=eval,
    of charts/episodic_return)."""
    prune_startup_trials: int = Field(2, ge=0)
    """Trials that finish before any is pruned."""
    prune_warmup: float = Field(0.25, ge=0, le=1)
    """Fraction of a trial's first run before it can be pruned."""
    sampler_seed: int = 0
    """Seed of the TPE sampler in a sweep's first process; a process that joins a study already under way adds the
    number of trials it finds, so processes sharing a study do not propose the same settings."""

    @field_validator("space")
    @classmethod
    def _check_names(cls, space: dict[str, SweepParam]) -> dict[str, SweepParam]:
        for name in space:
            if len(name.split(".")) < 2 or name.split(".")[0] == "sweep":
                raise ValueError(f"{name!r} must name a setting as section.key (e.g. trainer.learning_rate)")
        return space


class Config(_Section):
    env: EnvConfig = EnvConfig()
    """The environment batch."""
    policy: PolicyConfig = PolicyConfig()
    """The network."""
    trainer: TrainerConfig = TrainerConfig()
    """The PPO loop."""
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    """Measurements that never change training."""
    logging: LoggingConfig = LoggingConfig()
    """Where the logged scalars go besides TensorBoard."""
    sweep: SweepConfig = SweepConfig()
    """A hyperparameter search over this config (`carrystate sweep`)."""

    @model_validator(mode="after")
    def _check_sizes(self) -> Config:
        t = self.trainer
        if t.minibatch_size % t.bptt_horizon:
            raise ValueError(
                f"trainer.minibatch_size={t.minibatch_size} must be a multiple of "
                f"trainer.bptt_horizon={t.bptt_horizon} (whole segments per minibatch); "
                f"nearest valid: {_nearest_multiples(t.minibatch_size, t.bptt_horizon)}"
            )
        if t.gradient_horizon not in (None, "episode") and t.gradient_horizon % t.bptt_horizon:
            raise ValueError(
                f"trainer.gradient_horizon={t.gradient_horizon} must be a multiple of "
                f"trainer.bptt_horizon={t.bptt_horizon}, or 'episode'"
            )
        registry.check_precision(self.policy.sequence_impl, self.policy.core, t.precision)
        if t.burn_in >= t.bptt_horizon:
            raise ValueError(f"trainer.burn_in={t.burn_in} must be below trainer.bptt_horizon={t.bptt_horizon}")
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


def check_layout(t: TrainerConfig, num_agents: int) -> None:
    """The checks that need the number of agents, which is known once the env is built (a PettingZoo or
    MettaGrid env decides it): every agent fills whole segments, and gradient chains fit them. Raises
    ConfigError naming the setting and the nearest valid values."""
    rollout_unit = num_agents * t.bptt_horizon
    if t.batch_size % rollout_unit:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a multiple of agents × trainer.bptt_horizon = "
            f"{num_agents} × {t.bptt_horizon} = {rollout_unit} (every agent fills whole segments); "
            f"nearest valid: {_nearest_multiples(t.batch_size, rollout_unit)}"
        )
    rows_per_agent = t.batch_size // rollout_unit
    chain = t.chain_length(rows_per_agent)
    if chain > 1 and rows_per_agent % chain:
        raise ConfigError(
            f"trainer.gradient_horizon={t.gradient_horizon} spans {chain} segments, which must divide "
            f"the {rows_per_agent} segments each agent fills per rollout (batch_size / (agents × "
            f"bptt_horizon)); raise trainer.batch_size or lower the gradient horizon"
        )
    if chain > 1 and (t.minibatch_size // t.bptt_horizon) % chain:
        raise ConfigError(
            f"trainer.minibatch_size={t.minibatch_size} must hold whole chains of {chain} segments "
            f"(trainer.gradient_horizon={t.gradient_horizon}): a multiple of {chain * t.bptt_horizon}"
        )


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
    try:
        return path, yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(err)})") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what: 'line 4, column 8: expected ',' or ']', but got ':'' (one line)."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


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
    return config_from_dict(apply_overrides(read_config_file(path), overrides))


def read_config_file(path: str | Path | None) -> dict:
    """The settings a YAML config file holds, unvalidated ({} for None); a ConfigError if it cannot be read."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(err)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (env, policy, trainer)")
    return loaded or {}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply each `section.key=value` to the nested dict `data` (in place; returned for chaining)."""
    for item in overrides:
        key_path, value = parse_override(item)
        _apply(data, key_path, value)
    return data


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
        raise ConfigError("invalid config: " + (lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines))) from None


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


class Setting(NamedTuple):
    """One entry of `settings()`: a setting's dotted name (`trainer.bptt_horizon`), default and documentation, or
    (`section` true) a section's name (`env.tmaze`), its model class and its documentation."""

    name: str
    default: Any
    doc: str
    section: bool = False


def settings(model: type[BaseModel] = Config, prefix: str = "", sections: bool = False) -> list[Setting]:
    """Every setting under `model` in declaration order, each with its default and its field's docstring: what
    `carrystate config` prints and the documentation's settings page shows. `sections`: also list each section
    (a nested model) just before its settings."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [Setting(prefix + name, ann, field.description or "", True)] if sections else []
            out += settings(ann, f"{prefix}{name}.", sections)
        else:
            out.append(Setting(prefix + name, field.default, field.description or ""))
    return out
