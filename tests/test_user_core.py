"""A memory core of a user's own (`policy.core=module:Class`, tests/user_core.py) trains from the command line with
its `policy.core_options`, and a core that cannot be used is refused by a one-line error naming `policy.core`.
The invariant tests run over it with the registered cores (test_invariants, test_properties,
test_resume_after_stop)."""

from __future__ import annotations

import sys
import types

import pytest
from torch import nn

from carrystate.cli import main
from carrystate.config import load_config
from carrystate.errors import ConfigError
from tests.helpers import HANG_S, ROOT, SMALL_TMAZE, child, make_policy
from tests.user_core import LeakyRNN

USER = "tests.user_core:LeakyRNN"


def test_user_core_trains_from_the_cli_and_its_checkpoint_evaluates(tmp_path):
    runs = tmp_path / "runs"
    train = [f"policy.core={USER}", "policy.core_options.decay=0.5", *SMALL_TMAZE, "trainer.total_timesteps=1024"]
    with child(["-m", "carrystate.cli", "train", *train, f"trainer.runs_dir={runs}", "--quiet"], cwd=ROOT) as proc:
        out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, out + err
    (run,) = runs.iterdir()
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["iter_000002"], "two iterations of 512 steps"
    assert load_config(run / "config.yaml").policy.core_options == {"decay": 0.5}
    with child(["-m", "carrystate.cli", "eval", str(run), "--episodes", "5"], cwd=ROOT) as proc:
        out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, out + err
    assert "5 episodes: return" in out


def test_core_options_reach_the_user_core_as_keywords():
    policy = make_policy(USER, hidden=6, core_options={"decay": 0.25})
    assert type(policy.core) is LeakyRNN and policy.core.decay == 0.25 and policy.core.out_size == 6
    assert policy.state_shapes == ((1, 6),)


@pytest.fixture
def cores_module(monkeypatch):
    """An importable module `my_cores` holding broken cores: `NoSequence` (no `sequence`) and `NotAModule` (every
    part of the protocol, but no `torch.nn.Module`: its weights would be neither trained nor saved)."""

    class NoSequence(nn.Module):
        state_shapes = ()

        def __init__(self, in_size, cfg):
            super().__init__()
            self.out_size = cfg.hidden_size

        def step(self, x, state):
            return x, state

    class NotAModule:
        state_shapes = ()

        def __init__(self, in_size, cfg):
            self.out_size = in_size

        def step(self, x, state):
            return x, state

        def sequence(self, x, state, resets, end_state=True):
            return x, state

    module = types.ModuleType("my_cores")
    module.NoSequence, module.NotAModule = NoSequence, NotAModule
    monkeypatch.setitem(sys.modules, "my_cores", module)


def _refusal(core: str, **settings) -> str:
    with pytest.raises(ConfigError) as err:
        make_policy(core, **settings)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"policy.core={core!r}: "), message
    return message


def test_unimportable_user_core_is_a_one_line_error_naming_policy_core():
    assert "cannot import module 'nosuchmodule'" in _refusal("nosuchmodule:X")


def test_missing_class_in_user_module_is_a_one_line_error_naming_policy_core():
    assert "module 'tests.user_core' has no attribute 'NoSuchCore'" in _refusal("tests.user_core:NoSuchCore")


def test_user_core_without_sequence_is_refused_naming_what_it_lacks(cores_module):
    assert "NoSequence lacks sequence" in _refusal("my_cores:NoSequence")


def test_user_core_that_is_no_module_is_refused(cores_module):
    assert "NotAModule is not a torch.nn.Module" in _refusal("my_cores:NotAModule")


def test_core_option_the_user_core_does_not_take_is_refused_naming_policy_core():
    assert "unexpected keyword argument 'decayy'" in _refusal(USER, core_options={"decayy": 0.5})


def test_core_options_with_a_built_in_core_are_refused():
    with pytest.raises(ConfigError, match=r"policy.core_options are for a core of your own \(module:Class\)") as err:
        load_config(None, ["policy.core=gru", "policy.core_options.decay=0.5"])
    assert "\n" not in str(err.value)


def test_cli_reports_an_unimportable_core_in_one_line_and_exits_2(tmp_path, capsys):
    rc = main(["train", "policy.core=nosuchmodule:X", f"trainer.runs_dir={tmp_path}", "--quiet"])
    err = capsys.readouterr().err
    assert (
        rc == 2 and err.count("\n") == 1 and "policy.core='nosuchmodule:X': cannot import module 'nosuchmodule'" in err
    )
    assert not any(tmp_path.iterdir()), "refused before a run folder is made"
