"""The C++ kernels (kernels/scan_cpu.cpp) against the scan's torch-op loop and the step-by-step reference:
outputs, end state and every gradient, on random reset patterns; and their explicit build: its folder, its lock."""

import hashlib
import os
import re
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import get_default_build_root
from torch.utils.file_baton import FileBaton

from carrystate.policy import kernels
from carrystate.policy.cores.recurrent import LSTMCore
from carrystate.policy.kernels import cpu
from carrystate.policy.unroll import scan
from tests.helpers import child, kill_group, outputs_and_gradients

needs_kernels = pytest.mark.skipif(cpu.build() is None, reason="the C++ scan kernel did not build here")


def _run(core, x, state, resets, recurrence):
    unroll = (lambda x, state, resets: scan.lstm_scan(core.rnn, x, state, resets, recurrence)) if recurrence else None
    return outputs_and_gradients(core, x, state, resets, unroll)


@needs_kernels
@pytest.mark.parametrize(
    "rows,steps,hidden,layers,density",
    [
        (5, 7, 16, 1, 0.25),
        (37, 9, 33, 2, 0.2),  # a width that is no multiple of the vector width, two layers
        (1, 1, 1, 1, 0.0),  # one row, one step, one unit
        (8, 6, 8, 1, 1.0),  # a reset before every step
        (12, 20, 64, 1, 0.0),  # no resets at all
    ],
)
def test_cpp_scan_equals_torch_op_scan_and_step_loop(rows, steps, hidden, layers, density):
    torch.manual_seed(0)
    core = LSTMCore(4, hidden, layers, "loop")
    x = torch.randn(rows, steps, 4, requires_grad=True)
    resets = torch.rand(rows, steps) < density
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(rows))
    reference = _run(core, x, state, resets, None)  # core.impl = loop: nn.LSTM step by step
    ops = _run(core, x, state, resets, scan.LSTMScan)  # the torch-op loop
    cpp = _run(core, x, state, resets, cpu.LSTMScanCPU)  # the C++ kernels
    for ref, a, b in zip(reference, ops, cpp):
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, ref, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_scan_uses_cpp_kernels_for_float32_on_cpu_and_torch_ops_otherwise(monkeypatch):
    used = []

    def spy(cls):
        original = cls.apply

        def apply(*args):
            used.append(cls.__name__)
            return original(*args)

        monkeypatch.setattr(cls, "apply", apply)

    spy(scan.LSTMScan)
    spy(cpu.LSTMScanCPU)
    core = LSTMCore(3, 5, 1, "scan")
    x, resets = torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool)
    core.sequence(x, core.initial_state(2), resets)
    core.double()
    core.sequence(x.double(), tuple(s.double() for s in core.initial_state(2)), resets)
    monkeypatch.setattr(cpu, "_module", False)  # as when the build failed
    core.float()
    core.sequence(x, core.initial_state(2), resets)
    assert used == ["LSTMScanCPU", "LSTMScan", "LSTMScan"]


@needs_kernels
def test_cpp_scan_stays_finite_and_exact_for_saturating_gates():
    """Gate pre-activations far beyond exp's float range (the kernels clamp exp's argument, so fast-math's
    reordering meets no overflow) saturate as the op loop's do, outputs and gradients."""
    torch.manual_seed(0)
    core = LSTMCore(4, 8, 1, "loop")
    with torch.no_grad():
        core.rnn.weight_ih_l0.mul_(300.0)  # pre-activations of several hundred, both signs
    x = torch.randn(6, 5, 4, requires_grad=True)
    resets = torch.rand(6, 5) < 0.3
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(6))
    ops = _run(core, x, state, resets, scan.LSTMScan)
    cpp = _run(core, x, state, resets, cpu.LSTMScanCPU)
    for a, b in zip(ops, cpp):
        assert torch.isfinite(b).all()
        # float rounding of pre-activations in the hundreds: 1e-5 of each tensor's scale
        torch.testing.assert_close(b, a, atol=1e-5 * max(1.0, a.abs().max().item()), rtol=1e-5)


@needs_kernels
def test_cpp_scan_is_non_finite_exactly_where_the_torch_op_scan_is():
    """A NaN input (and a NaN start state) reaches the same outputs, end state and gradients in the C++ kernels
    as in the torch-op loop: built without -ffinite-math-only, the kernels cannot turn it into a finite value."""
    torch.manual_seed(0)
    core = LSTMCore(4, 16, 1, "loop")
    x = torch.randn(6, 9, 4)
    x[1, 3, 2] = float("nan")
    x = x.requires_grad_(True)
    resets = torch.rand(6, 9) < 0.2
    state = [torch.randn_like(s) for s in core.initial_state(6)]
    state[1][0, 4, 5] = float("nan")
    state = tuple(s.requires_grad_(True) for s in state)
    ops = _run(core, x, state, resets, scan.LSTMScan)
    cpp = _run(core, x, state, resets, cpu.LSTMScanCPU)
    assert not torch.isfinite(ops[0]).all(), "the NaN did reach the outputs"
    for a, b in zip(ops, cpp):
        assert torch.equal(torch.isfinite(b), torch.isfinite(a))


@needs_kernels
@pytest.mark.parametrize("rows,hidden,layers", [(64, 64, 1), (37, 33, 2), (1, 1, 1)])
def test_cpp_rollout_step_equals_nn_lstm_one_step(rows, hidden, layers):
    """lstm_step (the rollout's C++ step) gives nn.LSTM's output and state for T=1, also from zeroed rows."""
    torch.manual_seed(0)
    core = LSTMCore(4, hidden, layers, "scan")
    x = torch.randn(rows, 4)
    state = tuple(torch.randn_like(s) for s in core.initial_state(rows))
    state[0][:, ::3] = 0  # rows whose episode starts here
    state[1][:, ::3] = 0
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = core.rnn(x.unsqueeze(1), state)
        y, (h, c) = cpu.lstm_step(core.rnn, x, state)
    for a, ref in ((y, y_ref.squeeze(1)), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_rollout_step_uses_cpp_kernel_without_grad_and_nn_lstm_with_grad(monkeypatch):
    """Under no_grad (the rollout) core.step runs the C++ step; with grad enabled it must keep autograd, so
    it runs nn.LSTM, and the two agree."""
    core = LSTMCore(3, 5, 1, "scan")
    calls, kernels = [], cpu._module

    class Spy:  # the compiled module's attributes are read-only: stand in for the module
        def __getattr__(self, name):
            return getattr(kernels, name)

        def step(self, *args):
            calls.append(1)
            return kernels.step(*args)

    monkeypatch.setattr(cpu, "_module", Spy())
    x, state = torch.randn(4, 3), core.initial_state(4)
    with torch.no_grad():
        y_fast, _ = core.step(x, state)
    assert calls == [1]
    y_grad, _ = core.step(x, state)
    assert calls == [1] and y_grad.requires_grad
    torch.testing.assert_close(y_fast, y_grad.detach(), atol=1e-6, rtol=1e-6)


def _failing_load(*args, **kwargs):
    raise AssertionError("compiled outside the explicit build")


def _no_compiler(*args, **kwargs):
    raise OSError("no compiler")


@needs_kernels
def test_explicit_build_leaves_nothing_to_compile_for_the_rollout_or_the_learner(monkeypatch):
    """After `kernels.build` (the trainer calls it while wiring), the rollout step and the scan unroll use the
    kernels without calling the compiler."""
    path = kernels.build("cpu", "lstm")
    assert path is not None and path.exists()
    # in a folder of its own under torch's extension root, named for this torch
    assert path.parent.parent == Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    assert f"-torch{torch.__version__.replace('+', '_')}-" in path.parent.name
    monkeypatch.setattr("torch.utils.cpp_extension.load", _failing_load)
    core = LSTMCore(3, 5, 1, "scan")
    x, resets = torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool)
    with torch.no_grad():
        core.step(x[:, 0], core.initial_state(2))
    core.sequence(x, core.initial_state(2), resets)


@needs_kernels
def test_kernel_build_leaves_path_as_it_was(monkeypatch):
    monkeypatch.setattr(cpu, "_module", None)  # as in a fresh process (the library is then loaded from the cache)
    before = os.environ.get("PATH")
    assert cpu.build() is not None
    assert os.environ.get("PATH") == before


def test_failed_kernel_build_warns_falls_back_and_leaves_path_as_it_was(monkeypatch):
    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.delenv("CARRYSTATE_NO_CPP", raising=False)
    monkeypatch.setattr("torch.utils.cpp_extension.load", _no_compiler)
    before = os.environ.get("PATH")
    with pytest.warns(UserWarning, match="did not build .*no compiler.*torch-op loop"):
        assert cpu.build() is None
    assert os.environ.get("PATH") == before
    assert cpu.get() is None and kernels.build("cpu", "lstm") is None  # tried once per process
    core = LSTMCore(3, 5, 1, "scan")
    y, _ = core.sequence(torch.randn(2, 4, 3), core.initial_state(2), torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(y).all()


def test_no_cpp_setting_skips_the_kernel_build(monkeypatch):
    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setenv("CARRYSTATE_NO_CPP", "1")
    monkeypatch.setattr("torch.utils.cpp_extension.load", _failing_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.build() is None


def test_kernel_build_is_skipped_where_no_kernel_is_used(monkeypatch):
    monkeypatch.setattr(cpu, "build", lambda: pytest.fail("built for a core or device that does not use it"))
    assert kernels.build("cpu", "gru") is None
    assert kernels.build("cpu", "none") is None
    assert kernels.build("cuda", "lstm") is None


def test_kernel_folder_differs_with_source_flags_level_torch_and_python():
    made = dict(level="AVX2", source=b"kernel source", flags=["-O3", "-lmvec"], torch_version="2.13.0+cpu")
    folder = cpu.kernel_folder(Path("/cache"), python_tag="py311", **made)
    digest = hashlib.sha256(b"kernel source\x00-O3\x00-lmvec").hexdigest()[:12]
    assert folder == Path(f"/cache/carrystate_scan_cpu-avx2-torch2.13.0_cpu-py311-{digest}")
    for change in [
        {"source": b"kernel source 2"},
        {"flags": ["-O3"]},
        {"level": "AVX512"},
        {"torch_version": "2.12.0+cpu"},
        {"python_tag": "py312"},
    ]:
        assert cpu.kernel_folder(Path("/cache"), **{"python_tag": "py311", **made, **change}) != folder, change


# holds a kernel folder's build lock until its stdin closes or it is killed; "mid-build" also leaves torch's
# own lock file, as a build inside torch's load does
HOLD_LOCK = """
import sys
from pathlib import Path
from carrystate.policy.kernels import cpu
folder = Path(sys.argv[1])
with cpu.build_lock(folder, wait_s=0):
    if sys.argv[2] == "mid-build":
        (folder / "lock").touch()
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_build_waits_for_a_live_lock_holder_then_gives_up_naming_the_lock_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CARRYSTATE_KERNEL_LOCK_WAIT_S", "0.5")
    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setattr("torch.utils.cpp_extension.load", _failing_load)  # it never gets as far as compiling
    folder = cpu.build_spec().folder
    folder.mkdir()
    with child(["-c", HOLD_LOCK, str(folder), "idle"], stdin=subprocess.PIPE) as holder:
        assert holder.stdout.readline() == "holding\n", holder.communicate()
        started = time.monotonic()
        lock = re.escape(str(folder / "build.lock"))
        with pytest.warns(
            UserWarning, match=rf"KernelLockTimeout: waited 0.5s .* lock {lock}, held by pid {holder.pid}"
        ):
            assert cpu.build() is None
        assert time.monotonic() - started >= 0.5  # it did wait for the holder first
        assert holder.poll() is None, "the holder was alive all along"


@needs_kernels
def test_build_killed_while_holding_its_locks_blocks_no_later_build(monkeypatch):
    """kill -9 during a build leaves torch's `lock` file, on which torch's load would wait for ever; our flock
    went with the killed process, so the next build takes it, removes torch's file and loads."""
    folder = cpu.build_spec().folder
    with child(["-c", HOLD_LOCK, str(folder), "mid-build"], stdin=subprocess.PIPE) as builder:
        assert builder.stdout.readline() == "holding\n", builder.communicate()
        kill_group(builder)
    assert (folder / "lock").exists()
    monkeypatch.setattr(FileBaton, "wait", lambda self: pytest.fail(f"waited on {self.lock_file_path}"))
    monkeypatch.setattr(cpu, "_module", None)
    with cpu.build_lock(folder, wait_s=0):  # free at once
        pass
    module = cpu.build()
    assert module is not None and Path(module.__file__).parent == folder
    assert not (folder / "lock").exists()
