"""Errors about an env name what is at fault: a custom factory whose signature does not fit, the gymnasium id and
the Dict entry of a non-finite observation, and an env call in the training process that outlives
env.worker_timeout × (env.max_slow_warnings + 1), which stops training instead of hanging it."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from carrystate.config import ConfigError, PolicyConfig, load_config
from carrystate.envs import GymVecEnv, make_env
from carrystate.errors import EnvError
from carrystate.policy import Policy
from carrystate.trainer import Trainer
from tests.helpers import child, collect, make_policy, wait_for
from tests.remember_cue import RememberCue

HANG_BOUND_S = 120  # how long the hanging envs below hang at most, so that no test can hang for ever


def one_argument(num_envs):
    """A factory that forgot the seed."""
    return RememberCue(num_envs, 0)


def type_error_inside(num_envs: int, seed: int):
    """A factory that fits the signature and fails inside with a TypeError of its own."""
    raise TypeError("a bug inside the factory")


class HangingCue(RememberCue):
    """RememberCue whose 75th step (in the second rollout of the run below, after its first checkpoint) creates the
    file `hanging` in the working folder and does not return for HANG_BOUND_S seconds: in small sleeps (the env keeps
    running Python) or, with `native`, in one call that never gives control back to Python (as a hang inside native
    code does)."""

    def __init__(self, num_envs: int, seed: int, native: bool = False):
        super().__init__(num_envs, seed)
        self.native, self.steps = native, 0

    def step(self, actions):
        self.steps += 1
        if self.steps == 75:
            Path("hanging").touch()
            if self.native:
                time.sleep(HANG_BOUND_S)
            deadline = time.monotonic() + HANG_BOUND_S
            while time.monotonic() < deadline:
                time.sleep(0.01)
        return super().step(actions)


class NaNAfterReset(gym.ObservationWrapper):
    """Observations that are NaN from the first step on (the reset's are kept)."""

    def reset(self, **kwargs):
        self.stepped = False
        return super().reset(**kwargs)

    def step(self, action):
        self.stepped = True
        return super().step(action)

    def observation(self, observation):
        return observation * np.nan if self.stepped else observation


@pytest.mark.parametrize(
    "overrides, fault",
    [
        (["env.custom.factory=tests.test_env_errors:one_argument"], "(too many positional arguments)"),
        (
            ["env.custom.factory=tests.remember_cue:RememberCue", "env.custom.kwargs={colour: red}"],
            "with env.custom.kwargs={'colour': 'red'} (got an unexpected keyword argument 'colour')",
        ),
    ],
    ids=["one-argument", "unknown-kwarg"],
)
def test_factory_that_cannot_take_num_envs_seed_kwargs_is_a_one_line_config_error(overrides, fault):
    with pytest.raises(ConfigError) as err:
        make_env(load_config(None, ["env.name=custom", "env.num_envs=2", *overrides]).env, seed=0).close()
    message = str(err.value)
    assert message.startswith("env.custom.factory=")
    assert "cannot be called as factory(num_envs, seed, **kwargs)" in message
    assert fault in message and "\n" not in message


def test_type_error_inside_a_factory_that_fits_stays_its_own():
    cfg = load_config(None, ["env.name=custom", "env.custom.factory=tests.test_env_errors:type_error_inside"])
    with pytest.raises(TypeError, match="a bug inside the factory"):
        make_env(cfg.env, seed=0)


def test_non_finite_obs_of_a_gymnasium_env_names_its_id():
    env = GymVecEnv("CartPole-v1", 2, wrappers=["tests.test_env_errors:NaNAfterReset"])
    try:
        with pytest.raises(
            EnvError, match=r"^GymVecEnv \(env.gymnasium.id=CartPole-v1\): non-finite obs from step at agent row 0 "
        ):
            collect(make_policy("gru", obs_dim=4, num_actions=2), env, 64, 16)
    finally:
        env.close()


def test_non_finite_entry_of_a_dict_obs_is_named():
    env = GymVecEnv("tests.custom_envs:CarrystateNaNDictObs-v0", 2)
    space, actions = env.single_observation_space, env.single_action_space
    policy = Policy(PolicyConfig(core="gru", hidden_size=8, encoder_sizes=[16]), space, actions)
    try:
        with pytest.raises(EnvError) as err:
            collect(policy, env, 64, 16)
    finally:
        env.close()
    assert str(err.value) == (
        "GymVecEnv (env.gymnasium.id=tests.custom_envs:CarrystateNaNDictObs-v0): non-finite obs from step at agent "
        "row 0 (env 0, agent 0) in entry 'pos'; 2 rows affected"
    )


@pytest.mark.filterwarnings("ignore:HangingCue cannot save its state")  # the resume check: new episodes are fine
@pytest.mark.parametrize(
    "native, ending",
    [(False, ""), (True, ", nor gave control back within a further 0.5s; the process exits")],
    ids=["python", "native"],
)
def test_env_step_that_hangs_stops_training_after_max_slow_warnings(tmp_path, native, ending):
    """The claim is a bound: the step hangs for HANG_BOUND_S, and the child exits with one line naming the env and
    the settings long before; the checkpoint written before the hang resumes."""
    args = [
        "-m",
        "carrystate.cli",
        "train",
        "env.name=custom",
        "env.custom.factory=tests.test_env_errors:HangingCue",
        f"env.custom.kwargs={{native: {str(native).lower()}}}",
        "env.num_envs=8",
        "env.worker_timeout=0.5",
        "env.max_slow_warnings=1",
        "trainer.batch_size=512",
        "trainer.bptt_horizon=16",
        "trainer.minibatch_size=128",
        "trainer.total_timesteps=100000000",
        "trainer.checkpoint_interval=1",
        "trainer.run_name=hang",
        "policy.core=gru",  # nothing to compile first
    ]
    with child(args, cwd=tmp_path) as proc:
        wait_for((tmp_path / "hanging").exists, proc, "the env's step hangs")
        try:
            out, err = proc.communicate(timeout=HANG_BOUND_S / 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"training still runs {HANG_BOUND_S / 2:g}s after the env's step began to hang")
    assert proc.returncode == 1, err
    expected = (
        "carrystate: training stopped: HangingCue: step did not return within 1s (env.worker_timeout=0.5s × "
        f"(env.max_slow_warnings=1 + 1)){ending}"
    )
    lines = err.strip().splitlines()
    assert lines[-1].startswith(expected) and "Traceback" not in err, err
    assert re.search(r"HangingCue: step has not returned after 0.5s \(env.worker_timeout\); still waiting", err)
    Trainer.resume(tmp_path / "runs" / "hang", quiet=True).env.close()  # the last checkpoint is intact
