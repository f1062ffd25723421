"""Your own code in a run, named by import path: `env.name=custom`'s factory, gymnasium wrappers, and the
`module:attribute` lookup they share, whose errors name the module or attribute that failed.

The factory's signature: `factory(num_envs: int, seed: int, **kwargs) -> VecEnv`, where kwargs are
`env.custom.kwargs`. It is called once per batch (twice with env.double_buffer, once per worker with
env.workers, each time with that batch's share of the copies and its own seed) and must return an object with
the `VecEnv` attributes (carrystate/envs/base.py): `num_agents`, `single_observation_space`,
`single_action_space`, `reset(seed)`, `step(actions)` and `close()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from carrystate.config import ConfigError
from carrystate.registry import load

if TYPE_CHECKING:
    from carrystate.config import EnvConfig

VECENV_ATTRIBUTES = ("num_agents", "single_observation_space", "single_action_space", "reset", "step", "close")
VECENV_METHODS = ("reset", "step", "close")


def make_custom(factory: str, kwargs: dict[str, Any], num_envs: int, seed: int):
    """`factory(num_envs, seed, **kwargs)`, checked to accept those arguments and to have the VecEnv attributes
    (a ConfigError names the signature that does not fit, or lists the missing attributes)."""
    build = load(factory, "env.custom.factory")
    if not callable(build):
        raise ConfigError(f"env.custom.factory={factory!r} is a {type(build).__name__}, not a function")
    check_signature(build, factory, num_envs, seed, kwargs)
    env = build(num_envs, seed, **kwargs)
    missing = [a for a in VECENV_ATTRIBUTES if not hasattr(env, a)]
    missing += [f"{m} (not callable)" for m in VECENV_METHODS if hasattr(env, m) and not callable(getattr(env, m))]
    if missing:
        close = getattr(env, "close", None)
        if callable(close):
            close()
        raise ConfigError(
            f"env.custom.factory={factory!r} returned a {type(env).__name__} that is not a VecEnv: it lacks "
            f"{', '.join(missing)} (see carrystate/envs/base.py)"
        )
    return env


def check_signature(build: Callable, factory: str, num_envs: int, seed: int, kwargs: dict[str, Any]) -> None:
    """A one-line ConfigError naming `env.custom.factory` where `build` cannot take (num_envs, seed, **kwargs); the
    check binds the arguments without calling, so a TypeError raised inside a factory that fits stays its own."""
    try:
        signature = inspect.signature(build)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call itself will tell
        return
    try:
        signature.bind(num_envs, seed, **kwargs)
    except TypeError as err:
        raise ConfigError(
            f"env.custom.factory={factory!r} has the signature {signature}, which cannot be called as "
            f"factory(num_envs, seed, **kwargs) with env.custom.kwargs={kwargs} ({err})"
        ) from None


def make_wrappers(entries: list) -> list[Callable[[Any], Any]]:
    """For each entry of `env.gymnasium.wrappers` (`module:Class`, or `{module:Class: kwargs}`), in order, a
    function that wraps an env in that class with those keyword arguments."""
    wrappers = []
    for i, entry in enumerate(entries):
        spec, kwargs = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        cls = load(spec, f"env.gymnasium.wrappers[{i}]")
        if not isinstance(cls, type):
            raise ConfigError(f"env.gymnasium.wrappers[{i}]={spec!r} is a {type(cls).__name__}, not a wrapper class")
        wrappers.append(partial(cls, **kwargs))
    return wrappers


def build(cfg: EnvConfig, num_envs: int, seed: int):
    """The registry's builder of env.name=custom."""
    return make_custom(cfg.custom.factory, cfg.custom.kwargs, num_envs, seed)
