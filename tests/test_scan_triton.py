"""The triton unroll (GPU kernels; on a CPU they run in triton's interpreter) against the step-by-step
reference: outputs, end state and every gradient, on random reset patterns."""

import pytest
import torch

from carrystate.policy.cores.recurrent import GRUCore, LSTMCore
from carrystate.policy.kernels import triton_scan
from tests.helpers import outputs_and_gradients

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_WHY = triton_scan.why_unavailable(DEVICE, 16)
needs_triton = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


@needs_triton
@pytest.mark.parametrize(
    "rows,steps,hidden,layers,density",
    [
        (5, 7, 16, 1, 0.25),  # fewer rows than one block
        (37, 9, 32, 2, 0.2),  # rows not a multiple of the block, two layers
        (20, 5, 128, 1, 0.3),  # one 128-wide tile per gate
        (18, 4, 256, 1, 0.3),  # several column tiles per gate
        (16, 6, 16, 1, 1.0),  # a reset at every step
    ],
)
def test_triton_unroll_equals_step_loop_outputs_and_gradients(rows, steps, hidden, layers, density, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the oracle is fp32
    torch.manual_seed(0)
    core = LSTMCore(8, hidden, layers, "loop").to(DEVICE)
    x = torch.randn(rows, steps, 8, device=DEVICE, requires_grad=True)
    resets = (torch.rand(rows, steps) < density).to(DEVICE)
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(rows, DEVICE))
    out = {}
    for impl in ("loop", "triton"):
        core.impl = impl
        out[impl] = outputs_and_gradients(core, x, state, resets)
    for ref, got in zip(out["loop"], out["triton"]):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_triton_unroll_refuses_what_it_cannot_run_with_a_clear_error():
    with pytest.raises(ValueError, match="sequence_impl=triton is written for core=lstm"):
        GRUCore(4, 16, 1, "triton")
    core = LSTMCore(4, 6, 1, "triton")
    x, resets = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool)
    why = "power of two" if triton_scan.triton is not None and DEVICE.type == "cpu" else ""
    with pytest.raises(ValueError, match=f"sequence_impl=triton cannot run here: .*{why}"):
        core.sequence(x, core.initial_state(2), resets)
