"""carrystate.load gives an agent (initial_state, act(obs, state)) that plays episodes in a loop of one's own as the
policy does with its state carried; the documentation's Python example (docs/api.md) runs as written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import carrystate
from carrystate.agent import Agent
from carrystate.envs import TMaze
from tests.helpers import ROOT, SMALL_TMAZE


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tmaze"
    carrystate.train(None, [*SMALL_TMAZE, "logging.report=false"], run_dir=run_dir, iterations=2)
    return run_dir


def test_agent_plays_an_episode_choosing_the_policys_most_likely_actions(run_dir):
    agent = carrystate.load(run_dir)
    assert isinstance(agent, Agent)
    env = TMaze(1, 3, 20, seed=5)
    obs, state, seen, actions = env.reset(seed=5)[0], agent.initial_state(), [], []
    for _ in range(100):
        action, state = agent.act(obs, state, deterministic=True)  # one observation, one action
        seen.append(obs)
        actions.append(int(action))
        res = env.step(np.array([action]))
        obs = res.obs[0]
        if res.terminated[0] or res.truncated[0]:
            break
    assert res.terminated[0] and len(res.episode_returns) == 1  # the episode ended within 100 steps

    # independently: the policy stepped through the same observations, its state carried by hand
    policy, h = agent.policy, agent.policy.initial_state(1)
    expected = []
    with torch.no_grad():
        for o in seen:
            params, _, h = policy.step(torch.as_tensor(o[None]), h)
            expected.append(int(params.argmax(-1)))
    assert actions == expected
    assert all(torch.equal(a, b) for a, b in zip(state, h))  # the agent's state is the hand-carried one


def test_agent_acts_on_a_batch_and_resets_only_the_rows_that_ended(run_dir):
    agent = carrystate.load(run_dir, seed=3)
    env = TMaze(4, 3, 20, seed=1)
    obs, state = env.reset(seed=1), agent.initial_state(4)
    actions, state = agent.act(obs, state)
    assert actions.shape == (4,) and env.single_action_space.contains(int(actions[0]))
    assert all(s.abs().sum() > 0 for s in state)
    done = np.array([True, False, True, False])
    reset = agent.reset(state, done)
    for before, after in zip(state, reset):
        assert torch.equal(after[:, ~torch.as_tensor(done)], before[:, ~torch.as_tensor(done)])
        assert not after[:, torch.as_tensor(done)].any()


def test_load_still_unpacks_as_policy_and_config(run_dir):
    policy, cfg = carrystate.load(run_dir)
    assert isinstance(policy, torch.nn.Module) and cfg.env.name == "tmaze"
    stats = carrystate.evaluate(policy, cfg, episodes=5, num_envs=4)
    assert len(stats.episode_returns) >= 5


def test_docs_python_example_runs(tmp_path, monkeypatch, capsys):
    page = (ROOT / "docs" / "api.md").read_text()
    code = page.split("## Train, evaluate, act", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "cartpole_novel.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    train = carrystate.train
    small = ["trainer.total_timesteps=512", "logging.report=false"]  # 2 iterations of the config's 256 steps
    monkeypatch.setattr(carrystate, "train", lambda config, overrides, **kw: train(config, [*overrides, *small], **kw))
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "trained 512 agent-steps in 2 iterations" in out
    assert "mean return" in out and "one episode:" in out
    assert float(out.split("one episode:")[1].split()[0]) >= 1
    assert (tmp_path / "runs" / "py-cartpole" / "checkpoints").is_dir()
