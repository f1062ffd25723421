"""Every pluggable kind of part by name: recurrent cores, training unrolls, env kinds. One table each; the
config's choices, its checks and the documentation `carrystate config` prints are read from here.

Each entry names its implementation as `module:attribute`, imported only when a run builds it, so this module
imports nothing (no torch) and the config can read it. A user's own core enters by the same form from the config
(`policy.core=my_package.cores:MyCore`); `load` imports either.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from carrystate.errors import ConfigError


@dataclass(frozen=True)
class Core:
    target: str  # module:Class, built as Class(in_size, cfg: PolicyConfig) (carrystate.policy.cores.Core)
    doc: str
    unrolled: bool = False  # trains through the unroll registry (policy.sequence_impl applies)


@dataclass(frozen=True)
class Unroll:
    target: str  # module:function, called as run(core, x, state, resets, end_state)
    doc: str
    cores: tuple[str, ...]  # the built-in cores it runs
    bf16: bool = True  # runs with trainer.precision=bf16 (carrystate.precision)


@dataclass(frozen=True)
class Env:
    target: str  # module:function, called as build(cfg: EnvConfig, num_envs, seed) -> VecEnv
    doc: str
    extra: str | None = None  # the pip extra its package comes with


CORES = {
    "lstm": Core("carrystate.policy.cores.recurrent:LSTMCore", "an LSTM (state h, c)", unrolled=True),
    "gru": Core("carrystate.policy.cores.recurrent:GRUCore", "a GRU (state h)", unrolled=True),
    "window": Core(
        "carrystate.policy.cores.window:WindowCore",
        "frame stacking: the encoder's outputs of the last `window` steps (zeros before the episode's start) read "
        "by one ReLU layer; it recalls exactly `window - 1` steps back and nothing older",
    ),
    "none": Core(
        "carrystate.policy.cores.feedforward:FeedForwardCore",
        "one ReLU layer and no state: a control that shows whether a task needs memory",
    ),
}
UNROLLED = tuple(name for name, c in CORES.items() if c.unrolled)
UNROLLS = {
    "chunked": Unroll("carrystate.policy.unroll.fragments:chunked", "fused calls between reset steps", UNROLLED),
    "packed": Unroll(
        "carrystate.policy.unroll.fragments:packed",
        "episode fragments as one packed sequence; fp32 only",
        UNROLLED,
        bf16=False,
    ),
    "bucketed": Unroll(
        "carrystate.policy.unroll.fragments:bucketed",
        "fragments grouped by length, one dense fused call per group",
        UNROLLED,
    ),
    "loop": Unroll("carrystate.policy.unroll.fragments:loop", "one step at a time", UNROLLED),
    "scan": Unroll(
        "carrystate.policy.unroll.scan:scan",
        "LSTM only: a step loop with a hand-written backward, a reset is one multiply; C++ on the CPU, "
        "built by `carrystate build-kernels` or as training starts",
        ("lstm",),
    ),
    "triton": Unroll(
        "carrystate.policy.unroll.scan:triton",
        "LSTM on a CUDA GPU: that loop as one persistent kernel each way; needs triton; fp32 only",
        ("lstm",),
        bf16=False,
    ),
}
AUTO_UNROLL_DOC = (
    "scan for an LSTM on the CPU, triton for an LSTM on a GPU where triton is installed (scan with "
    "trainer.precision=bf16), bucketed otherwise (chunked with bf16): the fastest measured, see BENCHMARKS.md"
)
ENVS = {
    "tmaze": Env("carrystate.envs.memory:build_tmaze", "the built-in passive T-maze (env.tmaze)"),
    "recall": Env("carrystate.envs.memory:build_recall", "the built-in delayed recall task (env.recall)"),
    "gymnasium": Env("carrystate.envs.gym_adapter:build", "any gymnasium id (env.gymnasium)"),
    "pettingzoo": Env("carrystate.envs.pettingzoo_adapter:build", "a PettingZoo parallel env", "pettingzoo"),
    "popgym": Env("carrystate.envs.popgym_adapter:build", "a POPGym memory task", "popgym"),
    "mettagrid": Env("carrystate.envs.mettagrid_adapter:build", "a MettaGrid map", "mettagrid"),
    "custom": Env("carrystate.envs.custom:build", "your own VecEnv, built by env.custom.factory"),
}

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_target(text: str) -> bool:
    """`text` has the form module:attribute (a user's own class or function)."""
    return bool(_TARGET.match(text))


def import_module(module_name: str, spec: str, setting: str):
    """The module `module_name` (imported), or a one-line ConfigError naming `setting`={spec} and the module."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:  # ModuleNotFoundError, or an import inside the module that failed
        raise ConfigError(f"{setting}={spec!r}: cannot import module {module_name!r} ({err})") from None


def load(spec: str, setting: str) -> Any:
    """The attribute `spec` = `package.module:attribute` names (imported): a registry entry's or a user's own class
    or function. A one-line ConfigError names `setting`, and the module that failed to import or the attribute it
    lacks."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{setting}={spec!r} must look like package.module:attribute")
    target: Any = import_module(module_name, spec, setting)
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{setting}={spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    return target


def core_target(name: str) -> str:
    """The module:Class of `policy.core`: a registered name or a user's own class."""
    return CORES[name].target if name in CORES else name


def check_core(name: str) -> None:
    """Raise ValueError unless `name` is a registered core or a module:Class."""
    if name not in CORES and not is_target(name):
        raise ValueError(
            f"policy.core={name!r} is not one of {', '.join(CORES)}, nor a class of yours as module:Class "
            "(e.g. policy.core=my_cores:MyCore)"
        )


def check_unroll(impl: str, core: str) -> None:
    """Raise ValueError, naming the setting and the choices, where `impl` is no unroll or cannot run `core`."""
    if impl == "auto":
        return
    if impl not in UNROLLS:
        raise ValueError(f"policy.sequence_impl={impl!r} is not one of {', '.join(('auto', *UNROLLS))}")
    if core not in UNROLLS[impl].cores:
        if core not in CORES or not CORES[core].unrolled:
            raise ValueError(
                f"policy.sequence_impl={impl} chooses how an LSTM or GRU unrolls; core={core} runs its own "
                "sequence: leave policy.sequence_impl at auto"
            )
        fitting = ["auto", *(n for n, u in UNROLLS.items() if core in u.cores)]
        raise ValueError(
            f"policy.sequence_impl={impl} is written for core={' or core='.join(UNROLLS[impl].cores)}, "
            f"not core={core}; use {', '.join(fitting[:-1])} or {fitting[-1]}"
        )


def check_precision(impl: str, core: str, precision: str) -> None:
    """Raise ValueError, naming the unroll and the ones that fit, where `impl` cannot run in `precision`."""
    if precision == "bf16" and impl != "auto" and not UNROLLS[impl].bf16:
        fitting = ["auto", *(n for n, u in UNROLLS.items() if u.bf16 and core in u.cores)]
        raise ValueError(
            f"policy.sequence_impl={impl} runs in fp32 only; with trainer.precision=bf16 use {', '.join(fitting)}"
        )


def describe_cores() -> str:
    """The documentation of `policy.core`."""
    return (
        "The memory: "
        + ", ".join(f"`{n}` ({c.doc})" for n, c in CORES.items())
        + ", or your own class as `module:Class` (docs/custom.md: Your own memory core)."
    )


def describe_unrolls() -> str:
    """The documentation of `policy.sequence_impl`: every unroll's one line, then `auto`'s."""
    return (
        "How training unrolls an LSTM's or GRU's segments with exact resets: "
        + ", ".join(f"`{n}` ({u.doc})" for n, u in UNROLLS.items())
        + f", `auto` ({AUTO_UNROLL_DOC})."
    )


def describe_envs() -> str:
    """The documentation of `env.name`."""
    return "Which environment: " + ", ".join(
        f"`{n}` ({e.doc}{'; pip install -e .[' + e.extra + ']' if e.extra else ''})" for n, e in ENVS.items()
    )
