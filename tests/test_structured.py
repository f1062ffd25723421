"""Structured observations: Dict/Tuple observations packed into byte records (carrystate/structured.py), one encoder
per field (policy/encoders.py), and MiniGrid-MemoryS7 trained from its config with no user code."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import carrystate
from carrystate.agent import Agent
from carrystate.config import ConfigError, PolicyConfig, load_config
from carrystate.envs.gym_adapter import GymVecEnv
from carrystate.envs.vector import ProcessVecEnv
from carrystate.policy import Policy
from carrystate.policy.encoders import DiscreteEncoder, ImageEncoder, StructuredEncoder
from carrystate.structured import PackedObservation, StructuredSpace
from tests.helpers import HANG_S

Box = gym.spaces.Box
SPACE = gym.spaces.Dict(
    {
        "image": Box(0, 10, (5, 4, 3), np.uint8),
        "direction": gym.spaces.Discrete(4),
        "pos": Box(-2, 2, (2,), np.float64),
        "inner": gym.spaces.Dict(
            {"flags": gym.spaces.MultiBinary(3), "counts": gym.spaces.MultiDiscrete([3, 5], start=[1, 0])}
        ),
        "pair": gym.spaces.Tuple((gym.spaces.Discrete(2, start=-1), Box(-1, 1, (1,), np.float32))),
        "mission": gym.spaces.Text(8),
    }
)
# each leaf of SPACE as the test reads it from a sample by hand, with the dtype it must come back in
LEAVES = {
    "direction": (lambda o: o["direction"], torch.int64),
    "image": (lambda o: o["image"], torch.uint8),
    "inner/counts": (lambda o: o["inner"]["counts"], torch.int64),
    "inner/flags": (lambda o: o["inner"]["flags"], torch.int8),
    "pair/0": (lambda o: o["pair"][0], torch.int64),
    "pair/1": (lambda o: o["pair"][1], torch.float32),
    "pos": (lambda o: o["pos"], torch.float64),
}


def samples(n: int, seed: int = 0) -> list:
    SPACE.seed(seed)
    return [SPACE.sample() for _ in range(n)]


def test_records_unpack_to_every_field_bit_for_bit_in_its_own_dtype():
    space = StructuredSpace(SPACE)
    assert space.dropped == ["mission"]
    assert space.shape == (5 * 4 * 3 + 8 + 2 * 8 + 3 + 2 * 8 + 8 + 4,) and space.dtype == np.uint8
    obs = samples(6)
    records = np.stack([space.pack(o) for o in obs])
    # a lead of [2, 3], of [1] (size-1 dimensions keep odd strides) and none
    for lead, batch in (((2, 3), records.reshape(2, 3, -1)), ((1,), records[:1]), ((), records[0])):
        fields = space.unpack(torch.from_numpy(batch))
        assert sorted(fields) == sorted(LEAVES)
        flat = [obs[i] for i in range(int(np.prod(lead)))] if lead else [obs[0]]
        for name, (get, dtype) in LEAVES.items():
            expected = np.stack([np.asarray(get(o)) for o in flat]).reshape((*lead, *np.shape(get(obs[0]))))
            assert fields[name].dtype == dtype, name
            assert np.array_equal(fields[name].numpy(), expected.astype(fields[name].numpy().dtype)), name
            assert np.array_equal(fields[name].numpy().astype(np.float64), expected.astype(np.float64)), name
    # a batch of observations (what gymnasium's vector envs return) packs to the same records
    batched = {
        "image": np.stack([o["image"] for o in obs]),
        "direction": np.array([o["direction"] for o in obs]),
        "pos": np.stack([o["pos"] for o in obs]),
        "inner": {k: np.stack([o["inner"][k] for o in obs]) for k in ("flags", "counts")},
        "pair": (np.array([o["pair"][0] for o in obs]), np.stack([o["pair"][1] for o in obs])),
    }
    assert np.array_equal(space.pack(batched, batch=6), records)
    assert np.array_equal(space.pack_any(batched), records) and np.array_equal(space.pack_any(obs[0]), records[0])


def test_observations_without_numbers_are_a_one_line_config_error():
    for space, names in ((gym.spaces.Text(8), "obs"), (gym.spaces.Dict({"note": gym.spaces.Text(8)}), "note")):
        with pytest.raises(ConfigError) as err:
            StructuredSpace(space)
        assert f"hold no numbers ({names} dropped)" in str(err.value) and "\n" not in str(err.value)


def test_image_embedding_gives_each_channel_value_its_own_vector_before_the_cnn():
    torch.manual_seed(0)
    space = Box(0, 10, (5, 4, 3), np.uint8)
    enc = ImageEncoder(space, embed_size=4, channels=[6], out_size=7, encoding="embed")
    x = torch.randint(0, 11, (2, 5, 4, 3), dtype=torch.uint8)
    # by hand: channel c's value v picks row c * 11 + v of the table; the channels' vectors side by side
    rows = [enc.table.weight[c * 11 + x[..., c].long()] for c in range(3)]  # each [2, 5, 4, 4]
    manual = torch.cat(rows, -1).permute(0, 3, 1, 2)  # [2, 12, 5, 4]
    expected = enc.head(enc.cnn(manual).flatten(1))
    torch.testing.assert_close(enc(x), expected, rtol=0, atol=0)
    # an object id is a category: ids 1 and 2 in one cell give unrelated inputs, not one twice the other
    a, b = x.clone(), x.clone()
    a[0, 2, 2, 0], b[0, 2, 2, 0] = 1, 2
    assert not torch.equal(enc(a)[0], enc(b)[0])
    # scale: value / high per channel, as intensities; float images are always scaled
    scaled = ImageEncoder(space, embed_size=4, channels=[6], out_size=7, encoding="scale")
    assert not scaled.embed
    expected = scaled.head(scaled.cnn((x.float() / 10).permute(0, 3, 1, 2)).flatten(1))
    torch.testing.assert_close(scaled(x), expected, rtol=0, atol=0)
    assert not ImageEncoder(Box(0, 1, (5, 4, 3), np.float32), 4, [6], 7, "embed").embed
    # channels first ([C, H, W], the first dimension the smallest) reads the same pixels
    first = ImageEncoder(Box(0, 10, (3, 5, 4), np.uint8), 4, [6], 7, "embed")
    first.load_state_dict(enc.state_dict())
    torch.testing.assert_close(first(x.permute(0, 3, 1, 2)), enc(x), rtol=0, atol=0)


def test_discrete_values_pick_their_row_counting_from_the_space_start():
    enc = DiscreteEncoder(gym.spaces.MultiDiscrete([3, 5], start=[1, 0]), embed_size=2)
    w = enc.table.weight
    torch.testing.assert_close(
        enc(torch.tensor([[1, 4], [3, 0]])), torch.stack([torch.cat([w[0], w[7]]), torch.cat([w[2], w[3]])])
    )
    single = DiscreteEncoder(gym.spaces.Discrete(2, start=-1), embed_size=2)
    torch.testing.assert_close(single(torch.tensor([-1, 0])), single.table.weight)


def test_policy_encodes_each_field_with_its_own_encoder_and_normalises_vectors_only():
    space = StructuredSpace(SPACE)
    policy = Policy(PolicyConfig(hidden_size=8, encoder_sizes=[16], embed_size=3), space, gym.spaces.Discrete(3))
    kinds = {name: type(enc).__name__ for name, enc in policy.encoder.encoders.items()}
    assert kinds == {
        "image": "ImageEncoder",
        "direction": "DiscreteEncoder",
        "pos": "MLPEncoder",
        "inner/flags": "MLPEncoder",
        "inner/counts": "DiscreteEncoder",
        "pair/0": "DiscreteEncoder",
        "pair/1": "MLPEncoder",
    }
    assert isinstance(policy.encoder, StructuredEncoder) and policy.core.rnn.input_size == 16 + 3 + 16 + 16 + 6 + 3 + 16
    assert sorted(policy.obs_norm.norms) == ["inner/flags", "pair/1", "pos"]
    records = torch.from_numpy(np.stack([space.pack(o) for o in samples(50)]))
    policy.update_obs_norm(records)
    stats = policy.obs_norm.norms["pos"].stats
    pos = np.stack([o["pos"] for o in samples(50)])
    np.testing.assert_allclose(stats.mean.numpy(), pos.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var.numpy(), pos.var(0), rtol=1e-10)
    params, values, state = policy.step(records[:4], policy.initial_state(4))
    assert params.shape == (4, 3) and values.shape == (4,) and torch.isfinite(params).all()
    with pytest.raises(ValueError, match="policy.encoder=token reads token lists"):
        Policy(PolicyConfig(encoder="token"), space, gym.spaces.Discrete(3))


def _dict_env(seed: int = 0) -> GymVecEnv:
    return GymVecEnv("tests.custom_envs:CarrystateDictObs-v0", 3, seed=seed)


def test_structured_records_cross_worker_processes_through_shared_memory_unchanged():
    remote = ProcessVecEnv([_dict_env, _dict_env], timeout=HANG_S, shared_memory=True)
    reference = [_dict_env(), _dict_env()]
    try:
        assert remote.single_observation_space == reference[0].single_observation_space
        assert np.array_equal(remote.reset(), np.concatenate([e.reset() for e in reference]))
        for _ in range(5):
            res = remote.step(np.zeros(6, np.int64))
            ref = np.concatenate([e.step(np.zeros(3, np.int64)).obs for e in reference])
            assert res.obs.dtype == np.uint8 and np.array_equal(res.obs, ref)
    finally:
        remote.close()
        for e in reference:
            e.close()


MINIGRID_SMALL = [
    "env.num_envs=8",
    "trainer.batch_size=2048",
    "trainer.minibatch_size=512",
    "policy.hidden_size=16",
    "policy.cnn_channels=[8]",
]


def test_minigrid_memory_buffer_keeps_records_and_replay_reproduces_the_rollout():
    """MiniGrid's {image, direction, mission} is stored as one uint8 record per step (147 image bytes, 8 for the
    direction), and replaying the stored rows from their start states (episode starts inside them applied) gives
    the rollout's values and log-probabilities."""
    pytest.importorskip("minigrid")
    from carrystate.trainer import Trainer

    tr = Trainer(load_config("configs/minigrid_memory.yaml", MINIGRID_SMALL), quiet=True)
    try:
        tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    finally:
        tr.env.close()
    buf = tr.buffer
    assert buf.obs.dtype == torch.uint8 and buf.obs.shape[-1] == 7 * 7 * 3 + 8
    fields = tr.env.single_observation_space.unpack(buf.obs)
    assert fields["direction"].dtype == torch.int64 and set(fields["direction"].unique().tolist()) <= {0, 1, 2, 3}
    assert fields["image"][..., 0].max() <= 10 and buf.starts[:, 1:].any()
    with torch.no_grad():
        params, values, _ = tr.policy.sequence(buf.obs, buf.start_state, buf.starts)
        logprobs, _ = tr.policy.actor.log_prob_entropy(params, buf.actions)
    torch.testing.assert_close(values, buf.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(logprobs, buf.logprobs, atol=1e-5, rtol=0)


def test_minigrid_memory_trains_from_its_config_and_the_agent_acts_on_raw_observations():
    pytest.importorskip("minigrid")
    trainer = carrystate.train("configs/minigrid_memory.yaml", MINIGRID_SMALL, iterations=2)
    assert trainer.iteration == 2 and np.isfinite(trainer.history[-1]["losses/value_loss"])
    assert "charts/success_rate" in trainer.history[-1]  # episodes of at most 245 steps ended in 256
    env = gym.make("MiniGrid-MemoryS7-v0")
    agent = Agent(trainer.policy, trainer.cfg, trainer.env.single_observation_space, env.action_space)
    obs, _ = env.reset(seed=0)
    state = agent.initial_state()
    for _ in range(3):
        action, state = agent.act(obs, state)
        assert env.action_space.contains(int(action))
        obs, *_ = env.step(int(action))
    wrapped = PackedObservation(gym.make("MiniGrid-MemoryS7-v0"))
    packed, _ = wrapped.reset(seed=0)
    raw, _ = gym.make("MiniGrid-MemoryS7-v0").reset(seed=0)
    assert np.array_equal(agent.observation_space.pack(raw), packed)
    env.close()


def test_pettingzoo_dict_observations_are_packed_per_agent_row():
    from carrystate.envs.pettingzoo_adapter import PettingZooVecEnv
    from tests.test_adapters import DropoutEnv

    class DictDropout(DropoutEnv):
        def observation_space(self, agent):
            return gym.spaces.Dict({"who": gym.spaces.Discrete(3), "t": Box(0, 10, (1,), np.float32)})

        def _obs(self, agent):
            return {"who": self.possible_agents.index(agent), "t": np.array([self.t], np.float32)}

    env = PettingZooVecEnv(DictDropout, num_envs=2)
    space = env.single_observation_space
    assert isinstance(space, StructuredSpace) and space.shape == (8 + 4,)
    obs = [env.reset()] + [env.step(np.zeros(6, np.int64)).obs for _ in range(3)]
    fields = space.unpack(torch.from_numpy(np.stack(obs)))  # [4 steps, 6 rows]
    assert fields["who"][0].tolist() == [0, 1, 2, 0, 1, 2]
    # a leaves after 2 steps: its row is padding (zero bytes, so zeros) from then on; b and c count their steps
    assert fields["t"][..., 0].T.tolist()[:3] == [[0, 1, 0, 0], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_non_finite_float_entry_of_a_record_stops_the_rollout_naming_the_row():
    cfg = load_config(
        overrides=[
            "env.name=gymnasium",
            "env.gymnasium.id=tests.custom_envs:CarrystateNaNDictObs-v0",
            "env.num_envs=2",
            "trainer.batch_size=64",
            "trainer.bptt_horizon=8",
            "trainer.minibatch_size=32",
        ]
    )
    from carrystate.envs.base import EnvError
    from carrystate.trainer import Trainer

    tr = Trainer(cfg, quiet=True)
    try:
        with pytest.raises(EnvError, match=r"non-finite obs from step at agent row 0 .*2 rows affected"):
            tr.rollout.collect(tr.policy, tr.buffer, tr.parts.generators.sample)
    finally:
        tr.env.close()
