"""Learner benchmark: forward+backward of one minibatch of segments with exact in-segment resets.

Compares carrystate's unrolls (every one in `carrystate.policy.unroll`) with the leaky baseline (one fused
nn.LSTM call that ignores resets, the speed to match) and, when installed, torchrl's LSTMModule in recurrent mode,
on the same shapes and the same random reset pattern (about one episode end per 50 steps per row).
Also measures activation memory (bytes saved for backward) against bptt_horizon and episode length, and the
rollout's one-step call against nn.LSTM with T=1.

    python -m benchmarks.learner --device cpu --json out.json      # from the checkout root; medians over repeats
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

from carrystate.policy import unroll
from carrystate.policy.cores.recurrent import LSTMCore
from carrystate.policy.kernels import triton_scan


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats: int, warmup: int = 1, slow: float = 2.0) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup`; a call slower than `slow` seconds is
    timed once (its ratio to the fused call is then far from the target anyway)."""
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if time.perf_counter() - t0 > slow:
            repeats = 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torchrl_step(hidden, device, backend="pad"):
    """torchrl's LSTMModule in recurrent mode (it splits rows at `is_init` and pads the pieces)."""
    try:
        from tensordict import TensorDict
        from torchrl.modules import LSTMModule
    except Exception:  # noqa: BLE001 - optional comparison
        return None
    module = LSTMModule(
        input_size=hidden,
        hidden_size=hidden,
        in_keys=["x", "rs_h", "rs_c"],
        out_keys=["y", ("next", "rs_h"), ("next", "rs_c")],
        device=device,
        recurrent_backend=backend,
        default_recurrent_mode=True,
    )

    def run(x, state, resets):
        B, T, _ = x.shape
        h = state[0].transpose(0, 1).unsqueeze(1).expand(B, T, 1, hidden)
        c = state[1].transpose(0, 1).unsqueeze(1).expand(B, T, 1, hidden)
        td = TensorDict(
            {"x": x, "is_init": resets.unsqueeze(-1), "rs_h": h, "rs_c": c}, batch_size=[B, T], device=device
        )
        return module(td)["y"]

    return run


def _graphed_loop(core, x, state, resets):
    """The per-step loop captured forward and backward as CUDA graphs (no per-step launch overhead)."""
    core.impl = "loop"

    class Unroll(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.core = core

        def forward(self, x, h, c, resets):
            y, _ = self.core.sequence(x, (h, c), resets)
            return y

    graphed = torch.cuda.make_graphed_callables(Unroll(), (x, state[0], state[1], resets))

    def f():
        y = graphed(x, state[0], state[1], resets)
        y.sum().backward()
        core.zero_grad(set_to_none=False)
        x.grad = None

    return f


ALL_IMPLS = ["fused", *unroll.names(), "torchrl", "loop_graphed"]


def bench_learner(device, hiddens, horizons, rows, repeats, reset_every=50, seed=0, impls=ALL_IMPLS):
    results = []
    for hidden in hiddens:
        for T in horizons:
            torch.manual_seed(seed)
            core = LSTMCore(hidden, hidden, 1).to(device)
            x = torch.randn(rows, T, hidden, device=device, requires_grad=True)
            state = tuple(torch.randn(1, rows, hidden, device=device) for _ in range(2))
            g = torch.Generator().manual_seed(seed)
            resets = (torch.rand(rows, T, generator=g) < 1.0 / reset_every).to(device)

            def run(impl):
                def f():
                    if impl == "fused":
                        y, _ = core.rnn(x, state)
                    elif impl == "torchrl":
                        y = trl(x, state, resets)
                    else:
                        core.impl = impl
                        y, _ = core.sequence(x, state, resets, end_state=False)  # as the learner calls it
                    y.sum().backward()
                    core.zero_grad(set_to_none=True)
                    x.grad = None

                return f

            trl = _torchrl_step(hidden, device) if "torchrl" in impls else None
            row = {"hidden": hidden, "horizon": T, "rows": rows, "resets": int(resets.sum())}
            skip = {
                "torchrl": trl is None,
                "loop_graphed": device.type != "cuda",
                "triton": not triton_scan.available(device, hidden),
            }
            for impl in [i for i in impls if not skip.get(i, False)]:
                try:
                    fn = _graphed_loop(core, x, state, resets) if impl == "loop_graphed" else run(impl)
                    row[impl] = _time(fn, device, repeats) * 1e3
                except Exception as err:  # noqa: BLE001 - report, keep going
                    row[impl] = None
                    row[f"{impl}_error"] = f"{type(err).__name__}: {err}"[:200]
            results.append(row)
            print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return results


def tune_triton(device, hiddens, rows_list, repeats, horizon=64, configs=None):
    """Time the triton unroll's launch configurations (rows per program, tile widths, warps) for each hidden size
    over `rows_list` with `bench_learner`; keeps, per hidden size, the one with the least summed time relative
    to each shape's best in `triton_scan.CONFIG`, and returns every measurement."""
    configs = configs or [
        dict(block_b=b, block_n=n, block_k=n, num_warps=w)
        for b, n, w in [(16, 64, 4), (16, 32, 4), (16, 64, 8), (32, 64, 8), (16, 128, 8)]
    ]
    table = []
    for hidden in hiddens:
        scores = {}
        for rows in rows_list:
            times = {}
            for i, cfg in enumerate(configs):
                triton_scan.CONFIG[hidden] = cfg
                row = bench_learner(device, [hidden], [horizon], rows, repeats, impls=["triton"])[0]
                if row.get("triton") is not None:
                    times[i] = row["triton"]
            best = min(times.values(), default=None)
            for i in range(len(configs)):
                ms = times.get(i)
                scores[i] = scores.get(i, 0.0) + (ms / best if ms and best else float("inf"))
                table.append({"hidden": hidden, "horizon": horizon, "rows": rows, **configs[i], "ms": ms})
                print(
                    f"tune h{hidden} T{horizon} B{rows} {configs[i]}: "
                    + (f"{ms:.3f} ms ({ms / best:.2f}x best)" if ms and best else "failed"),
                    flush=True,
                )
        if min(scores.values()) < float("inf"):
            triton_scan.CONFIG[hidden] = configs[min(scores, key=scores.get)]
        else:
            triton_scan.CONFIG.pop(hidden, None)
    print("triton config chosen:", triton_scan.CONFIG, flush=True)
    return {"configs": table, "chosen": {str(k): v for k, v in triton_scan.CONFIG.items()}}


def activation_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (the learner's activation memory)."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def bench_memory(device, hidden, horizons, steps, reset_everys, impl):
    rows_out = []
    for T in horizons:
        rows = max(1, steps // T)
        for every in reset_everys:
            torch.manual_seed(0)
            core = LSTMCore(hidden, hidden, 1, impl).to(device)
            x = torch.randn(rows, T, hidden, device=device, requires_grad=True)
            state = core.initial_state(rows, device)
            g = torch.Generator().manual_seed(0)
            resets = (torch.rand(rows, T, generator=g) < (1.0 / every if every else 0.0)).to(device)
            nbytes = activation_bytes(lambda: core.sequence(x, state, resets)[0].sum())
            peak = None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                y, _ = core.sequence(x, state, resets)
                y.sum().backward()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            r = {
                "horizon": T,
                "rows": rows,
                "episode_len": every or "none",
                "saved_MiB": nbytes / 2**20,
                "peak_MiB": peak,
            }
            rows_out.append(r)
            print(r, flush=True)
    return rows_out


@torch.no_grad()
def bench_rollout_step(device, shapes=((64, 64), (256, 128), (1024, 128), (256, 256)), repeats=7, steps=50):
    """The rollout's recurrent step (`LSTMCore.step`: the C++ step on the CPU) against nn.LSTM called with
    T=1, per (agents, hidden): median time per step over `repeats` runs of `steps` carried steps."""
    rows = []
    for agents, hidden in shapes:
        torch.manual_seed(0)
        core = LSTMCore(hidden, hidden, 1).to(device)
        x = torch.randn(agents, hidden, device=device)

        def fused():
            state = core.initial_state(agents, device)
            for _ in range(steps):
                _, state = core.fused(x.unsqueeze(1), state)

        def step():
            state = core.initial_state(agents, device)
            for _ in range(steps):
                _, state = core.step(x, state)

        r = {
            "agents": agents,
            "hidden": hidden,
            "nn_lstm_us": _time(fused, device, repeats, warmup=3) / steps * 1e6,
            "step_us": _time(step, device, repeats, warmup=3) / steps * 1e6,
        }
        rows.append(r)
        print(r, flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, nargs="+", default=[256])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 256])
    p.add_argument("--horizon", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="also measure activation memory against horizon")
    p.add_argument("--memory-impl", default=None, help="unroll for the memory table (default: the device's auto)")
    p.add_argument("--impls", nargs="+", default=ALL_IMPLS, choices=ALL_IMPLS)
    p.add_argument(
        "--fp32-too",
        action="store_true",
        help="then repeat fused and triton with TF32 off everywhere (torch's default lets cuDNN use TF32)",
    )
    p.add_argument("--tune-triton", action="store_true", help="first pick the triton unroll's tiles by measurement")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    info = {
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": a.threads,
        "date": datetime.date.today().isoformat(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
    }
    print(info, flush=True)
    out = {"info": info, "learner": []}
    if a.tune_triton and triton_scan.available(device, 128):
        out["triton_tuning"] = tune_triton(device, a.hidden, a.rows, a.repeats)
        _save(out, a.json)
    if a.memory:  # first: a failed CUDA-graph capture below can leave the device's RNG unusable
        out["memory_impl"] = impl = a.memory_impl or unroll.resolve_auto("lstm", device, 128)
        out["memory"] = bench_memory(device, 128, [16, 64, 256, 1024], 16384, [20, 200, 0], impl)
    for rows in a.rows:
        out["learner"] += bench_learner(device, a.hidden, a.horizon, rows, a.repeats, impls=a.impls)
        _save(out, a.json)
    if a.fp32_too:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        out["learner_fp32"] = []
        for rows in a.rows:
            out["learner_fp32"] += bench_learner(
                device, a.hidden, a.horizon, rows, a.repeats, impls=["fused", "triton"]
            )
            _save(out, a.json)


def _save(out: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
