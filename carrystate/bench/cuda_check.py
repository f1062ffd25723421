"""CUDA checks: the triton unroll equals the step-by-step reference on the GPU (fp32, outputs and every
gradient), the trainer runs there, replay equals rollout with every unroll, and whole-training speed with
the default GPU unroll against `bucketed`.

    python -m carrystate.bench.cuda_check      # prints one line per check; exits non-zero on a failure
"""

from __future__ import annotations

import sys
import time

import torch

from carrystate.config import load_config
from carrystate.policy import unroll
from carrystate.policy.kernels import triton_scan
from carrystate.policy.core import RecurrentCore
from carrystate.trainer import Trainer


def unroll_matches_reference(impl: str, hidden: int, steps: int, rows: int, layers: int = 1) -> bool:
    """Outputs, end state and the gradients of x, start state and weights against `loop`, in fp32.

    The error of a tensor is its largest difference relative to its largest entry. Passes when `impl` is
    within 1e-5 of the reference, or no further from it than 1.5× `scan` is: `scan` is the same math in
    plain torch ops, the control. The weight gradients sum rows × steps terms whose order differs between
    any two unrolls, so at these sizes rounding alone reaches ~1e-5 (on an H200: 1.1e-5 for both at
    h128/T64/B256), and the strict elementwise figure (|a - b| <= 1e-5 + 1e-5 |b|) exceeds 1 for `scan`
    too; it is printed alongside."""
    torch.manual_seed(0)
    core = RecurrentCore("lstm", 32, hidden, layers, "loop").cuda()
    x = torch.randn(rows, steps, 32, device="cuda", requires_grad=True)
    resets = (torch.rand(rows, steps) < 1 / 50).cuda()
    state = tuple(torch.randn_like(s).requires_grad_(True) for s in core.initial_state(rows, "cuda"))
    out = {}
    for name in ("loop", impl, "scan"):
        core.impl = name
        y, end = core.sequence(x, state, resets)
        loss = (y * torch.linspace(-1, 1, hidden, device="cuda")).square().sum() + (end[0] ** 3).sum() - end[1].sum()
        out[name] = [y, *end, *torch.autograd.grad(loss, [x, *state, *core.parameters()])]

    def errors(name):
        pairs = list(zip(out[name], out["loop"]))
        norm = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in pairs)
        elem = max(((a - b).abs() / (1e-5 + 1e-5 * b.abs())).max().item() for a, b in pairs)
        return norm, elem
    norm, elem = errors(impl)
    norm_scan, elem_scan = errors("scan")
    good = norm <= max(1e-5, 1.5 * norm_scan)
    print(f"{impl} == loop on cuda, h{hidden} T{steps} B{rows} L{layers}, {int(resets.sum())} resets: max error "
          f"{norm:.1e} of the tensor's scale (scan {norm_scan:.1e}); elementwise {elem:.2f} of 1e-5 + 1e-5|ref| "
          f"(scan {elem_scan:.2f}) -> {'ok' if good else 'FAIL'}", flush=True)
    return good


def train(impl: str, steps: int = 327680):
    over = ["trainer.device=cuda", "env.num_envs=256", "trainer.batch_size=65536", "trainer.minibatch_size=8192",
            "policy.hidden_size=128", f"trainer.total_timesteps={steps}", "env.tmaze.length_min=8",
            "env.tmaze.length_max=80", f"policy.sequence_impl={impl}"]
    tr = Trainer(load_config(None, over), quiet=True)
    t0 = time.perf_counter()
    s = tr.train()
    wall = time.perf_counter() - t0
    print(f"train on cuda [{impl} -> {unroll.resolve_auto('lstm', torch.device('cuda'), 128) if impl == 'auto' else impl}]: "
          f"{s.global_step} steps in {wall:.1f}s ({s.sps:,.0f} SPS), success {s.success_rate}", flush=True)
    return tr


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    ok = True
    has_triton = triton_scan.available(torch.device("cuda"), 128)
    if has_triton:
        torch.backends.cudnn.allow_tf32 = False  # the reference is fp32
        try:
            for hidden, steps, rows, layers in [(128, 64, 256, 1), (256, 64, 1024, 1), (128, 256, 256, 2), (64, 16, 100, 1)]:
                ok &= unroll_matches_reference("triton", hidden, steps, rows, layers)
        except Exception as err:  # noqa: BLE001 - report and go on with the other checks
            print(f"triton unroll failed on cuda: {type(err).__name__}: {str(err)[:400]}", flush=True)
            ok, has_triton = False, False
        torch.backends.cudnn.allow_tf32 = True
    else:
        print("triton unroll unavailable:", triton_scan.why_unavailable(torch.device("cuda"), 128), flush=True)
    train("bucketed")  # warms up CUDA and cuDNN for the timed pair below
    train("bucketed")
    tr = train("auto" if has_triton else "bucketed")
    b = tr.buffer
    tr.rollout.collect(tr.policy, b, tr.sample_gen)  # weights unchanged since: replay must equal rollout
    impls = ["chunked", "packed", "bucketed", "loop", "scan"]
    impls += ["triton"] if has_triton else []
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        tr.rollout.collect(tr.policy, b, tr.sample_gen)
        for impl in impls if not tf32 else impls[-1:]:
            tr.policy.core.impl = impl
            with torch.no_grad():
                params, values, _ = tr.policy.sequence(b.obs, b.start_state, b.starts)
                logp, _ = tr.policy.actor.log_prob_entropy(params, b.actions)
            dv, dl = (values - b.values).abs().max().item(), (logp - b.logprobs).abs().max().item()
            good = dv < 1e-5 and dl < 1e-5
            if not tf32:
                ok &= good
            print(f"replay == rollout on cuda [{impl}, cuDNN TF32 {'on' if tf32 else 'off'}]: max |dv| {dv:.2e}, "
                  f"max |dlogp| {dl:.2e} -> {'ok' if good else 'FAIL' if not tf32 else 'differs (TF32 rounding)'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
