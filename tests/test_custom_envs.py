"""Your own environment from config: gymnasium's `module:EnvId`, make kwargs, wrappers in order, env.name=custom
with a factory, and one-line errors that name what failed to import."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import carrystate
from carrystate.config import ConfigError, load_config
from carrystate.envs import make_env
from carrystate.structured import StructuredSpace
from tests.helpers import ROOT, SMALL_TMAZE
from tests.remember_cue import RememberCue

GYM = ["env.name=gymnasium", "env.num_envs=2"]


def build(overrides: list[str]):
    return make_env(load_config(None, overrides).env, seed=0)


def first_obs(overrides: list[str]) -> np.ndarray:
    env = build(overrides)
    try:
        return env.reset(seed=0)
    finally:
        env.close()


def steps_until_episode_end(overrides: list[str]) -> tuple[int, bool]:
    """Steps the first copy takes until its episode ends, and whether it was a truncation."""
    env = build(overrides)
    try:
        env.reset(seed=0)
        for t in range(1, 100):
            res = env.step(np.zeros(env.num_agents, np.int64))
            if res.terminated[0] or res.truncated[0]:
                return t, bool(res.truncated[0])
        raise AssertionError("no episode end in 100 steps")
    finally:
        env.close()


def test_module_colon_id_imports_the_module_that_registers_the_env():
    obs = first_obs([*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0"])
    assert obs.tolist() == [[0.5], [0.5]]  # CountEnv's reset observation


def test_gymnasium_kwargs_reach_the_env_constructor():
    base = [*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0"]
    assert steps_until_episode_end(base) == (5, False)  # CountEnv's default length
    assert steps_until_episode_end([*base, "env.gymnasium.kwargs={length: 3}"]) == (3, False)


def test_gymnasium_kwargs_set_the_time_limit():
    base = [*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0"]
    assert steps_until_episode_end([*base, "env.gymnasium.kwargs={max_episode_steps: 2}"]) == (2, True)


def test_wrappers_apply_in_the_configured_order():
    base = [*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0"]
    ten_then_one = first_obs([*base, "env.gymnasium.wrappers=[tests.custom_envs:TimesTen, tests.custom_envs:PlusOne]"])
    one_then_ten = first_obs([*base, "env.gymnasium.wrappers=[tests.custom_envs:PlusOne, tests.custom_envs:TimesTen]"])
    assert ten_then_one[0, 0] == 0.5 * 10 + 1
    assert one_then_ten[0, 0] == (0.5 + 1) * 10


def test_wrapper_keyword_arguments_reach_the_wrapper():
    base = [*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0"]
    limited = [*base, "env.gymnasium.wrappers=[{gymnasium.wrappers:TimeLimit: {max_episode_steps: 3}}]"]
    assert steps_until_episode_end(limited) == (3, True)  # CountEnv alone terminates after 5


def test_custom_factory_trains_the_docs_example():
    trainer = carrystate.train(
        None,
        [
            *SMALL_TMAZE[1:4],
            "env.num_envs=8",
            "env.name=custom",
            "env.custom.factory=tests.remember_cue:RememberCue",
            "env.custom.kwargs={delay: 2}",
        ],
        iterations=3,
    )
    assert isinstance(trainer.env, RememberCue) and trainer.env.delay == 2
    assert trainer.iteration == 3 and trainer.global_step == 3 * 512
    # 512 agent-steps per rollout in episodes of delay + 1 = 3 steps: about 170 episodes, each a success or not
    assert all(0.0 <= h["charts/success_rate"] <= 1.0 for h in trainer.history)
    assert all(h["charts/episodic_length"] == 3.0 for h in trainer.history)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            [*GYM, "env.gymnasium.id=no_such_module_xyz:Foo-v0"],
            "env.gymnasium.id='no_such_module_xyz:Foo-v0': cannot import module 'no_such_module_xyz'",
        ),
        (
            [*GYM, "env.gymnasium.id=tests.custom_envs:NotThere-v0"],
            "'NotThere-v0' is not a registered gymnasium id (after importing 'tests.custom_envs')",
        ),
        (
            [*GYM, "env.gymnasium.wrappers=[no_such_module_xyz:Wrap]"],
            "env.gymnasium.wrappers[0]='no_such_module_xyz:Wrap': cannot import module 'no_such_module_xyz'",
        ),
        (
            [*GYM, "env.gymnasium.wrappers=[tests.custom_envs:PlusOne, tests.custom_envs:Missing]"],
            "env.gymnasium.wrappers[1]='tests.custom_envs:Missing': module 'tests.custom_envs' has no attribute "
            "'Missing'",
        ),
        (
            [*GYM, "env.gymnasium.wrappers=[tests.custom_envs:NOT_A_CLASS]"],
            "env.gymnasium.wrappers[0]='tests.custom_envs:NOT_A_CLASS' is a int, not a wrapper class",
        ),
        ([*GYM, "env.gymnasium.wrappers=[gymnasium]"], "must look like package.module:attribute"),
        (
            [*GYM, "env.gymnasium.wrappers=[{a:B: {}, c:D: {}}]"],
            "env.gymnasium.wrappers[0] must be one `module:Class: {keyword: value}` pair, got 2 keys",
        ),
        (
            ["env.name=custom", "env.custom.factory=no_such_module_xyz:make"],
            "env.custom.factory='no_such_module_xyz:make': cannot import module 'no_such_module_xyz'",
        ),
        (
            ["env.name=custom", "env.custom.factory=tests.remember_cue:Missing"],
            "env.custom.factory='tests.remember_cue:Missing': module 'tests.remember_cue' has no attribute 'Missing'",
        ),
        (
            ["env.name=custom", "env.custom.factory=tests.custom_envs:missing_step"],
            "returned a Half that is not a VecEnv: it lacks single_action_space, step",
        ),
        (["env.name=custom"], "env.name=custom needs env.custom.factory='module:function'"),
    ],
    ids=[
        "id-module",
        "id-unregistered",
        "wrapper-module",
        "wrapper-attribute",
        "wrapper-not-class",
        "wrapper-form",
        "wrapper-mapping",
        "factory-module",
        "factory-attribute",
        "factory-not-vecenv",
        "factory-unset",
    ],
)
def test_custom_env_errors_are_one_line_naming_what_failed(overrides, message):
    with pytest.raises(ConfigError) as err:
        build(overrides).close()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_docs_example_env_is_the_tested_module():
    page = (ROOT / "docs" / "custom.md").read_text()
    section = page.split("## Your own environment", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code == (ROOT / "tests" / "remember_cue.py").read_text()


def test_dict_observations_are_packed_per_entry_with_text_dropped():
    env = build([*GYM, "env.gymnasium.id=tests.custom_envs:CarrystateDictObs-v0"])
    try:
        space = env.single_observation_space
        assert isinstance(space, StructuredSpace) and space.dropped == ["note"]
        assert space.shape == (8 + 2 * 4,)  # flag as its int64, pos as its two float32; the text entry dropped
        obs = [env.reset(seed=0)[0]] + [env.step(np.zeros(2, np.int64)).obs[0] for _ in range(4)]
    finally:
        env.close()
    fields = space.unpack(torch.from_numpy(np.stack(obs)))
    assert fields["flag"].tolist() == [t % 3 for t in range(5)]
    expected = np.array([[t / 10, -t / 10] for t in range(5)], np.float32)
    np.testing.assert_array_equal(fields["pos"].numpy(), expected)


def test_minigrid_trains_by_its_module_colon_id():
    pytest.importorskip("minigrid")
    trainer = carrystate.train(
        None,
        [
            *SMALL_TMAZE[1:4],
            "env.num_envs=8",
            "env.name=gymnasium",
            "env.gymnasium.id=minigrid:MiniGrid-Empty-5x5-v0",
        ],
        iterations=2,
    )
    # {direction: Discrete(4) as int64, image: Box(7, 7, 3) uint8} packed; the mission text dropped
    assert trainer.env.single_observation_space.shape == (8 + 7 * 7 * 3,)
    assert trainer.iteration == 2 and np.isfinite(trainer.history[-1]["losses/value_loss"])
