"""PettingZoo, POPGym and MettaGrid adapters: shapes, resets, padding of agents that leave early."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from carrystate.buffer import SegmentBuffer
from carrystate.config import ConfigError, load_config
from carrystate.policy import Policy
from carrystate.policy.encoders import TokenEncoder
from carrystate.policy.kernels import cpu
from carrystate.rollout import Rollout
from carrystate.state import StateStore
from tests.helpers import make_policy

pettingzoo = pytest.importorskip("pettingzoo")

from carrystate.envs.pettingzoo_adapter import PettingZooVecEnv  # noqa: E402

LIFETIMES = {"a": 2, "b": 4, "c": 6}  # steps each agent lives per episode; the episode ends when c leaves
TRUNCATES = {"b"}  # b's exit is a truncation (bootstrapped), the others terminate


class DropoutEnv(pettingzoo.ParallelEnv):
    """Three agents that leave after fixed lifetimes. Observation [agent index, step, episode, 1]."""

    metadata = {"name": "dropout_v0"}

    def __init__(self):
        self.possible_agents = list(LIFETIMES)
        self.episode = -1

    def observation_space(self, agent):
        return gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)

    def action_space(self, agent):
        return gym.spaces.Discrete(3)

    def _obs(self, agent):
        return np.array([self.possible_agents.index(agent), self.t, self.episode, 1.0], np.float32)

    def reset(self, seed=None, options=None):
        self.t, self.episode = 0, self.episode + 1
        self.agents = list(self.possible_agents)
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), "actions only for the agents still in the episode"
        self.t += 1
        obs = {a: self._obs(a) for a in self.agents}
        rew = {a: 1.0 for a in self.agents}
        term = {a: self.t == LIFETIMES[a] and a not in TRUNCATES for a in self.agents}
        trunc = {a: self.t == LIFETIMES[a] and a in TRUNCATES for a in self.agents}
        self.agents = [a for a in self.agents if self.t < LIFETIMES[a]]
        return obs, rew, term, trunc, {a: {} for a in obs}


def expected_row(agent: str, steps: int):
    """Independent expectation for one agent's row over `steps` steps starting at a reset: whether the
    observation before step k is valid, whether it starts an episode, and the episode end at step k."""
    period, life = LIFETIMES["c"], LIFETIMES[agent]
    valid, starts, ends = [], [], []
    for k in range(steps):
        t = k % period  # step within the copy's episode
        valid.append(t < life)
        # an episode starts at t == 0; the padding step right after a drop is flagged as a start too
        starts.append(t == 0 or t == life)
        ends.append(t == life - 1)
    return np.array(valid), np.array(starts), np.array(ends)


def test_pettingzoo_rows_padding_and_same_step_reset():
    env = PettingZooVecEnv(DropoutEnv, num_envs=2)
    assert env.num_agents == 6 and env.agents_per_env == 3
    obs = env.reset()
    assert obs.shape == (6, 4) and np.array_equal(obs[:, 0], [0, 1, 2, 0, 1, 2])
    lengths, acted = [], np.ones(6, bool)
    for k in range(14):
        res = env.step(np.zeros(6, np.int64))
        lengths += res.episode_lengths
        t = (k + 1) % 6  # step within the episode after this step (0: the copy has just reset)
        for row, agent in enumerate(["a", "b", "c"] * 2):
            life = LIFETIMES[agent]
            ended = (k % 6) == life - 1
            assert res.terminated[row] == (ended and agent not in TRUNCATES)
            assert res.truncated[row] == (ended and agent in TRUNCATES)
            if ended:
                assert res.final_obs[row][1] == life, "final_obs is the agent's last observation"
            assert res.valid[row] == (t < life)
            if res.valid[row]:
                assert res.obs[row][1] == t and res.obs[row][3] == 1.0
            else:
                assert np.all(res.obs[row] == 0.0), "padding rows are zero"
            assert res.reward[row] == (1.0 if acted[row] else 0.0), "a padding row neither acts nor earns"
        acted = res.valid
    assert sorted(set(lengths)) == [2, 4, 6], "episode lengths count only the agent's own steps"


def test_dropped_agent_state_is_zeroed_exactly_when_its_next_episode_starts():
    env = PettingZooVecEnv(DropoutEnv, num_envs=2)
    policy = make_policy(obs_dim=4)
    store = StateStore(policy.state_shapes)
    rollout = Rollout(env, store)
    steps, horizon = 16, 8
    buf = SegmentBuffer.for_spaces(
        6,
        env.single_observation_space,
        env.single_action_space,
        policy.initial_state(1),
        batch_size=6 * steps,
        horizon=horizon,
    )
    rollout.collect(policy, buf, torch.Generator().manual_seed(0))
    obs, values = buf.timeline(buf.obs), buf.timeline(buf.values)  # [agents, steps, ...]
    for row, agent in enumerate(["a", "b", "c"] * 2):
        valid, starts, ends = expected_row(agent, steps)
        assert np.array_equal(buf.timeline(buf.valid)[row].numpy(), valid)
        assert np.array_equal(buf.timeline(buf.starts)[row].numpy(), starts)
        done = (buf.timeline(buf.terminated) | buf.timeline(buf.truncated))[row].numpy()
        assert np.array_equal(done, ends)
        # independent reference: each of the agent's episodes on its own (its valid steps from the episode's
        # first step on), from a zero state; padding steps are skipped
        state = None
        for k in range(steps):
            if not valid[k]:
                continue
            if k % LIFETIMES["c"] == 0:  # the copy's episode (and so this agent's) begins here
                state = policy.initial_state(1)
            with torch.no_grad():
                _, v, state = policy.step(obs[row, k : k + 1], state)
            assert torch.allclose(values[row, k], v[0], atol=1e-6), f"agent {agent} step {k}"
    # replay from the stored start states reproduces every step, padding included
    with torch.no_grad():
        _, replay, _ = policy.sequence(buf.obs, buf.start_state, buf.starts)
    assert torch.allclose(replay, buf.values, atol=1e-5)


def test_pettingzoo_knights_archers_zombies_from_config():
    pytest.importorskip("pygame")
    from carrystate.envs import make_env

    cfg = load_config(
        overrides=[
            "env.name=pettingzoo",
            "env.num_envs=2",
            "env.pettingzoo.kwargs={max_cycles: 50}",
            "trainer.batch_size=128",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=64",
        ]
    )
    env = make_env(cfg.env, seed=0)
    assert env.agents_per_env == 4 and env.num_agents == 8  # counted by the env, not by the config
    obs = env.reset()
    assert obs.shape == (8, *env.single_observation_space.shape) and obs.dtype == np.float32
    ended = 0
    for _ in range(60):
        res = env.step(np.random.default_rng(0).integers(0, 6, 8))
        ended += int((res.terminated | res.truncated).sum())
        assert not np.any(res.obs[~res.valid]), "padding rows are zero"
    assert ended >= 8, "every agent's episode ends within max_cycles"
    env.close()


def test_pettingzoo_env_that_cannot_be_built_names_the_setting():
    from carrystate.envs import make_env

    cfg = load_config(overrides=["env.name=pettingzoo", "env.pettingzoo.env=no_such_module"])
    with pytest.raises(ConfigError, match="env.pettingzoo.env='no_such_module'"):
        make_env(cfg.env, seed=0)


# ---- POPGym ------------------------------------------------------------------------------------------------

popgym = pytest.importorskip("popgym")

from carrystate.envs.popgym_adapter import PopGymVecEnv, popgym_registry  # noqa: E402


def test_popgym_previous_action_is_one_hot_and_zero_at_episode_start():
    env = PopGymVecEnv("RepeatPreviousEasy", 3, seed=0)
    n_obs, n_act = env.obs_size, env.single_action_space.n
    obs = env.reset()
    assert obs.shape == (3, n_obs + n_act)
    assert np.all(obs[:, n_obs:] == 0.0), "no previous action at an episode's first step"
    rng = np.random.default_rng(0)
    saw_reset = False
    for _ in range(60):
        actions = rng.integers(0, n_act, 3)
        res = env.step(actions)
        done = res.terminated | res.truncated
        for row in range(3):
            if done[row]:
                saw_reset = True
                assert np.all(res.obs[row, n_obs:] == 0.0)
                assert np.array_equal(res.final_obs[row, n_obs:], np.eye(n_act)[actions[row]])
            else:
                assert np.array_equal(res.obs[row, n_obs:], np.eye(n_act)[actions[row]])
    assert saw_reset


def test_popgym_multidiscrete_and_box_previous_actions():
    env = PopGymVecEnv("BattleshipEasy", 2, seed=0)  # MultiDiscrete([8, 8]) actions
    env.reset()
    res = env.step(np.array([[1, 7], [0, 3]]))
    prev = res.obs[:, env.obs_size :]
    assert prev.shape == (2, 16)
    assert np.array_equal(np.flatnonzero(prev[0]), [1, 8 + 7]) and np.array_equal(np.flatnonzero(prev[1]), [0, 8 + 3])
    env = PopGymVecEnv("PositionOnlyPendulumEasy", 2, seed=0)  # Box(1) actions
    env.reset()
    res = env.step(np.array([[0.5], [-1.5]], np.float32))
    assert np.allclose(res.obs[:, env.obs_size :], [[0.5], [-1.5]])


def test_every_registered_popgym_env_builds_and_steps():
    ids = sorted({cls.__name__ for cls in popgym_registry().values()})
    assert len(ids) >= 40
    for env_id in ids:
        env = PopGymVecEnv(env_id, 2, seed=0)
        obs = env.reset()
        assert obs.shape == (2, *env.single_observation_space.shape) and obs.dtype == np.float32
        space = env.single_action_space
        for _ in range(3):
            actions = np.stack([space.sample() for _ in range(2)])
            res = env.step(actions)
            assert res.obs.shape == obs.shape and np.isfinite(res.obs).all()
        env.close()


def test_popgym_by_gym_id_and_unknown_id():
    assert PopGymVecEnv("popgym-RepeatFirstEasy-v0", 1).id == "RepeatFirstEasy"
    with pytest.raises(ValueError, match="env.popgym.id='RepeatPrevEasy' is not a registered POPGym env"):
        PopGymVecEnv("RepeatPrevEasy", 1)


# ---- token encoder -------------------------------------------------------------------------------------------


@pytest.fixture(params=["cpp", "embedding_bag"])
def token_sum(request, monkeypatch):
    """Each test of the token encoder runs twice: with the C++ sum over uint8 tokens (policy/kernels/
    tokens_cpu.cpp, skipped where it cannot be built) and with the `nn.EmbeddingBag` call that runs elsewhere."""
    if request.param == "cpp":
        if cpu.get() is None:
            pytest.skip("the CPU kernels are not built here")
        probe = cpu.token_bag(torch.full((1, 1, 3), 255, dtype=torch.uint8), torch.zeros(2 * 256, 2), 1)
        assert probe is not None, "uint8 tokens on the CPU take the C++ sum"
    else:
        monkeypatch.setattr(cpu, "token_bag", lambda *args: None)
    return request.param


def test_token_encoder_ignores_order_and_empty_tokens(token_sum):
    torch.manual_seed(0)
    enc = TokenEncoder((6, 3), embed_size=8, sizes=[16])
    tokens = torch.tensor(
        [[[3, 1, 10], [17, 2, 200], [255, 255, 255], [255, 255, 255], [40, 5, 1], [255, 255, 255]]], dtype=torch.uint8
    )  # [1, tokens, 3]
    shuffled = tokens[:, [4, 2, 0, 5, 1, 3]]
    short = tokens[:, [0, 1, 4]]  # the same tokens without padding
    out = enc(tokens)
    assert out.shape == (1, 16)
    assert torch.allclose(out, enc(shuffled), atol=1e-6)
    enc_short = TokenEncoder((3, 3), embed_size=8, sizes=[16])
    enc_short.load_state_dict(enc.state_dict())
    assert torch.allclose(out, enc_short(short), atol=1e-6)
    assert enc(tokens.expand(2, 5, 6, 3)).shape == (2, 5, 16), "leading batch and time dimensions"
    with pytest.raises(ValueError, match="policy.encoder=token needs observations of shape \\[tokens, 3\\]"):
        TokenEncoder((4,), 8, [16])


def test_token_encoder_equals_linear_layer_on_dense_location_feature_grid_with_gradients(token_sum):
    """The encoder sums table rows over present tokens only; building the dense [location, feature] grid of
    presence and value/255 and multiplying it by the table must give the same features and parameter
    gradients, including for a row with no tokens at all."""
    torch.manual_seed(1)
    features = 6
    enc = TokenEncoder((12, 3), embed_size=8, sizes=[16], features=features)
    obs = torch.randint(0, 255, (4, 5, 12, 3), dtype=torch.uint8)
    obs[..., 1] %= features
    obs[torch.rand(4, 5, 12) < 0.6] = 255  # about 60% empty slots
    obs[0, 0] = 255  # a row with no token

    def dense(tokens):
        rows = tokens.reshape(-1, 12, 3).long()
        grid = torch.zeros(rows.shape[0], 2, 256, features)
        for r, row in enumerate(rows):
            for loc, feat, val in row.tolist():
                if loc != 255:
                    grid[r, 0, loc, feat] += 1.0
                    grid[r, 1, loc, feat] += val / 255.0
        pooled = grid.reshape(rows.shape[0], -1) @ enc.table.weight
        return enc.mlp(torch.relu(pooled)).reshape(4, 5, -1)

    want = dense(obs)
    want.square().sum().backward()
    want_grads = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    got = enc(obs)
    got.square().sum().backward()
    assert got.shape == (4, 5, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip([p.grad for p in enc.parameters()], want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_token_encoder_tells_where_a_feature_is_and_rejects_feature_ids_beyond_its_table(token_sum):
    torch.manual_seed(2)
    enc = TokenEncoder((2, 3), embed_size=8, sizes=[16], features=4)
    here = torch.tensor([[[3, 1, 10], [17, 2, 200]]], dtype=torch.uint8)
    swapped = torch.tensor([[[17, 1, 10], [3, 2, 200]]], dtype=torch.uint8)  # same features, places exchanged
    assert not torch.allclose(enc(here), enc(swapped))
    with pytest.raises(ValueError, match="feature id 9, but policy.token_features=4"):
        enc(torch.tensor([[[3, 9, 10], [255, 255, 255]]], dtype=torch.uint8))


# ---- MettaGrid -----------------------------------------------------------------------------------------------


def test_mettagrid_token_shapes_and_truncation_reset():
    pytest.importorskip("mettagrid")
    from carrystate.envs.mettagrid_adapter import MettaGridVecEnv

    for map_name in ("arena", "navigation"):
        env = MettaGridVecEnv(2, map_name, agents=4, size=12, altars=4, walls=4, max_steps=10, obs_tokens=64, seed=1)
        obs = env.reset()
        assert obs.shape == (8, 64, 3) and obs.dtype == np.uint8
        assert env.single_observation_space.shape == (64, 3)
        assert np.all((obs[:, :, 0] != 255).sum(1) > 0), "every agent sees some tokens"
        for k in range(10):
            res = env.step(np.random.default_rng(k).integers(0, env.single_action_space.n, 8))
            assert not res.terminated.any()
            assert res.truncated.all() == (k == 9), "episodes are cut (bootstrapped) at max_steps"
        assert len(res.episode_returns) == 8 and set(res.episode_lengths) == {10}
        assert not np.array_equal(res.final_obs, res.obs), "a new map starts in the same step"
        env.close()


SMALL_METTAGRID = [
    "env.num_envs=2",
    "env.mettagrid.agents=4",
    "env.mettagrid.size=12",
    "env.mettagrid.max_steps=40",
    "env.mettagrid.obs_tokens=64",
    "trainer.batch_size=256",
    "trainer.bptt_horizon=16",
    "trainer.minibatch_size=128",
    "trainer.total_timesteps=512",
    "trainer.update_epochs=1",
    "policy.hidden_size=16",
    "policy.token_embed_size=8",
    "policy.encoder_sizes=[16]",
]


def test_mettagrid_short_training_run(tmp_path):
    pytest.importorskip("mettagrid")
    from carrystate.trainer import Trainer

    cfg = load_config("configs/mettagrid_arena.yaml", [*SMALL_METTAGRID, "env.workers=1"])
    assert cfg.policy.encoder == "token"
    trainer = Trainer(cfg, run_dir=tmp_path / "run", quiet=True)
    try:
        summary = trainer.train()
    finally:
        trainer.env.close()  # its worker process, also when training failed
    assert summary is not None
    assert (tmp_path / "run" / "summary.json").exists() or any((tmp_path / "run").iterdir())


def test_mettagrid_buffer_keeps_uint8_tokens_and_replay_reproduces_the_rollout():
    """The segment buffer stores MettaGrid's tokens as the uint8 the env emits (a quarter of float32), and
    replaying the stored rows from their start states gives the rollout's values and log-probabilities."""
    pytest.importorskip("mettagrid")
    from carrystate.buffer import SegmentBuffer, obs_dtype
    from carrystate.trainer import Trainer

    cfg = load_config(
        "configs/mettagrid_arena.yaml",
        [*SMALL_METTAGRID, "env.mettagrid.max_steps=20", "env.workers=0", "env.double_buffer=false"],
    )
    tr = Trainer(cfg, quiet=True)
    tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    buf = tr.buffer
    assert buf.obs.dtype == torch.uint8 and buf.obs.shape[-2:] == (64, 3)
    assert (buf.obs[..., 0] != 255).any() and buf.starts[:, 1:].any()
    with torch.no_grad():
        params, values, _ = tr.policy.sequence(buf.obs, buf.start_state, buf.starts)
        logprobs, _ = tr.policy.actor.log_prob_entropy(params, buf.actions)
    torch.testing.assert_close(values, buf.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(logprobs, buf.logprobs, atol=1e-5, rtol=0)
    tr.env.close()
    assert obs_dtype(gym.spaces.Box(-1, 1, (3,), np.float64)) == torch.float32
    assert obs_dtype(gym.spaces.Box(0, 9, (3,), np.int16)) == torch.int16
    assert (
        SegmentBuffer.for_spaces(
            2,
            gym.spaces.Box(0, 255, (4, 3), np.uint8),
            gym.spaces.Discrete(3),
            (torch.zeros(1, 2, 4),),
            batch_size=8,
            horizon=4,
        ).obs.dtype
        == torch.uint8
    )


def test_mettagrid_env_counts_its_agents_and_the_run_checks_the_batch_against_them():
    from carrystate.envs import make_env
    from carrystate.trainer import Trainer

    cfg = load_config(
        overrides=[
            "env.name=mettagrid",
            "env.num_envs=2",
            "env.mettagrid.agents=24",
            "trainer.batch_size=3072",
            "trainer.bptt_horizon=64",
            "trainer.minibatch_size=1024",
        ]
    )
    env = make_env(cfg.env, seed=0)
    assert env.agents_per_env == 24 and env.num_agents == 48
    env.close()
    with pytest.raises(ConfigError, match="agents × trainer.bptt_horizon = 48 × 64"):
        Trainer(load_config(overrides=["env.name=mettagrid", "env.num_envs=2", "trainer.batch_size=8192"]), quiet=True)


def test_policy_config_builds_token_encoder():
    from carrystate.config import PolicyConfig

    cfg = PolicyConfig(encoder="token", token_embed_size=8, encoder_sizes=[16], hidden_size=8)
    policy = Policy(cfg, gym.spaces.Box(0, 255, (10, 3), np.uint8), gym.spaces.Discrete(5))
    obs = torch.randint(0, 256, (4, 10, 3))
    obs[..., 1] %= cfg.token_features
    params, value, _ = policy.step(obs.float(), policy.initial_state(4))
    assert params.shape == (4, 5) and value.shape == (4,)


def test_episode_starts_after_ends_and_where_padding_rejoins():
    """The one rule the rollout and `evaluate` share: row 0 ended, row 1 rejoins after padding, row 2 carries
    on, row 3 stays padding."""
    from carrystate.envs.base import StepResult
    from carrystate.rollout import episode_starts

    z = np.zeros(4, np.float32)
    res = StepResult(
        np.zeros((4, 1)),
        z,
        np.array([True, False, False, False]),
        np.zeros(4, bool),
        np.zeros((4, 1)),
        valid=np.array([True, True, True, False]),
    )
    starts, valid = episode_starts(res, np.array([True, False, True, False]))
    assert starts.tolist() == [True, True, False, False] and valid.tolist() == [True, True, True, False]
    res.valid = None
    starts, valid = episode_starts(res, np.ones(4, bool))
    assert starts.tolist() == [True, False, False, False] and valid.all()
