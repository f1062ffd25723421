"""Config loading, overrides and validation: bad input fails before any work, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from carrystate.config import Config, ConfigError, check_layout, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_overrides_apply_on_top_of_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  bptt_horizon: 16\n  minibatch_size: 512\n")
    cfg = load_config(f, ["trainer.seed=7", "policy.core=gru", "env.tmaze.length_max=30"])
    assert (cfg.trainer.bptt_horizon, cfg.trainer.seed, cfg.policy.core, cfg.env.tmaze.length_max) == (16, 7, "gru", 30)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.minibatch_size=100", "trainer.minibatch_size=100 must be a multiple of trainer.bptt_horizon=64"),
        ("trainer.minibatch_size=3072", "trainer.batch_size=8192 must be divisible by trainer.minibatch_size=3072"),
        ("trainer.bogus=1", "unknown setting 'trainer.bogus'"),
        ("bogus.x=1", "unknown setting 'bogus'"),
        ("env.tmaze.length_max=2", "env.tmaze.length_max=2 must be >= env.tmaze.length_min=8"),
        ("trainer.update_epochs=0", "trainer.update_epochs"),
        ("policy.core=transformer", "policy.core"),
    ],
)
def test_invalid_settings_fail_naming_the_setting(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_batch_that_agents_cannot_fill_fails_when_the_env_has_counted_them():
    """The agents are counted by the env (not by config validation): a batch they cannot split into whole
    segments fails as the run is built, naming the setting, the count and the nearest valid sizes."""
    from carrystate.trainer import Trainer

    with pytest.raises(
        ConfigError,
        match="trainer.batch_size=1024 must be a multiple of agents × trainer.bptt_horizon = 64 × 64 = 4096",
    ):
        Trainer(load_config(None, ["trainer.batch_size=1024", "trainer.minibatch_size=64"]), quiet=True)
    with pytest.raises(ConfigError, match="nearest valid: 4096 or 8192"):
        check_layout(load_config(None, ["trainer.batch_size=5120", "trainer.minibatch_size=1024"]).trainer, 64)
    check_layout(load_config(None, []).trainer, 64)  # the defaults fit


def test_batch_error_suggests_valid_values():
    with pytest.raises(ConfigError, match="2048, 4096, 8192"):
        load_config(None, ["trainer.minibatch_size=3072"])


def test_unknown_key_in_file_lists_allowed_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  bptt: 16\n")
    with pytest.raises(ConfigError, match="allowed here: total_timesteps, batch_size, bptt_horizon"):
        load_config(f)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["trainer.seed"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_adam_with_muon_learning_rate_warns():
    with pytest.warns(UserWarning, match="trainer.optimizer=adam is likely to diverge"):
        load_config(None, ["trainer.learning_rate=0.018"])


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    load_config(CONFIGS / name)


def test_metta_config_holds_the_seed_settings():
    t = load_config(CONFIGS / "metta.yaml").trainer
    assert (t.bptt_horizon, t.batch_size, t.minibatch_size, t.update_epochs) == (64, 524288, 16384, 1)
    assert t.optimizer == "muon" and t.learning_rate == 0.018


def test_default_yaml_equals_builtin_defaults():
    assert load_config(CONFIGS / "default.yaml") == Config()


def test_metta_config_runs_one_iteration_on_cpu():
    from carrystate.trainer import Trainer

    cfg = load_config(CONFIGS / "metta.yaml")
    trainer = Trainer(cfg, quiet=True)
    summary = trainer.train()
    assert summary.iterations == 1 and summary.global_step == 524288
    assert trainer.buffer.obs.shape[:2] == (8192, 64) and trainer.buffer.rows_per_agent == 8
