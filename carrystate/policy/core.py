"""The recurrent core: `lstm`, `gru`, or `none`, with `step` (T=1, rollout) and `sequence` (T>1, training).

State (`carrystate.state.State`) is passed in and returned, never kept. `step` takes the state as it is:
the `StateStore` has already zeroed it where an episode starts. In `sequence`, `resets[b, t]` true means
row b starts a new episode at step t: its state is replaced by zeros *before* the step's input is read, in
every layer, and no other row is touched.

`sequence` is the one place where training unrolls the core. It applies the in-segment resets exactly by
cutting the segment at every timestep where some row resets and running the fused `nn.LSTM`/`nn.GRU`
over each piece; with no resets it is a single fused call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from carrystate.policy.kernels import cpu, triton_scan
from carrystate.policy.scan import lstm_scan
from carrystate.state import State, mask_state, zero_state


class RecurrentCore(nn.Module):
    """`kind` in {lstm, gru, none}: maps [batch, (T,) in_size] features to [batch, (T,) hidden] outputs."""

    def __init__(self, kind: str, in_size: int, hidden_size: int, num_layers: int = 1, impl: str = "auto"):
        super().__init__()
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        if impl not in ("auto", "chunked", "packed", "bucketed", "loop", "scan", "triton"):
            raise ValueError(f"policy.sequence_impl={impl!r} is not one of auto, chunked, packed, bucketed, loop, "
                             "scan, triton")
        if impl in ("scan", "triton") and kind != "lstm":
            raise ValueError(f"policy.sequence_impl={impl} is written for core=lstm, not core={kind}; "
                             "use auto, bucketed, chunked, packed or loop")
        self.impl = impl
        if kind == "lstm":
            self.rnn = nn.LSTM(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 2
        elif kind == "gru":
            self.rnn = nn.GRU(in_size, hidden_size, num_layers, batch_first=True)
            self.num_state_tensors = 1
        elif kind == "none":
            self.rnn = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU())
            self.num_state_tensors = 0
        else:
            raise ValueError(f"policy.core={kind!r} is not one of lstm, gru, none")
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.orthogonal_(p)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return zero_state(self.num_state_tensors, self.num_layers, batch, self.hidden_size, device)

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.kind == "lstm":
            y, (h, c) = self.rnn(x, state)
            return y, (h, c)
        if self.kind == "gru":
            y, h = self.rnn(x, state[0])
            return y, (h,)
        return self.rnn(x), ()

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step for every row: x [batch, in], state (already zero where an episode starts: the
        `StateStore` reset it) → y [batch, hidden], new state."""
        if self.kind == "lstm" and (out := cpu.lstm_step(self.rnn, x, state)) is not None:
            return out
        y, state = self._run(x.unsqueeze(1), state)
        return y.squeeze(1), state

    def auto_impl(self, device: torch.device) -> str:
        """The unroll `auto` runs on `device`: the fastest exact one measured there (BENCHMARKS.md)."""
        if self.kind == "lstm" and device.type == "cpu":
            return "scan"
        if self.kind == "lstm" and device.type == "cuda" and triton_scan.available(device, self.hidden_size):
            return "triton"
        return "bucketed"

    def sequence(self, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
        """x [batch, T, in], state at t=0, resets [batch, T] bool → y [batch, T, hidden], state after T-1
        (or () when `end_state` is false and the unroll can skip it).

        The one training unroll; every variant applies the resets exactly and they agree to float rounding:
        `chunked` cuts the segment at every timestep where some row resets (one fused call per piece),
        `loop` steps one timestep at a time, `packed` runs the episode fragments as one packed sequence,
        `bucketed` runs the fragments as a few dense fused calls grouped by length, `scan` (LSTM only) is a
        step loop with a hand-written backward where a reset is one multiply, and `triton` (LSTM, CUDA) is
        that loop as one GPU kernel each way. `auto` is scan for an LSTM on the CPU, triton for an LSTM on a
        GPU when triton is installed, and bucketed otherwise: the fastest in BENCHMARKS.md at realistic reset
        densities."""
        if self.kind == "none":
            return self.rnn(x), ()
        impl = self.auto_impl(x.device) if self.impl == "auto" else self.impl
        if impl == "scan":
            return lstm_scan(self.rnn, x, state, resets)
        if impl == "triton":
            why = triton_scan.why_unavailable(x.device, self.hidden_size)
            if why:
                raise ValueError(f"policy.sequence_impl=triton cannot run here: {why}")
            return lstm_scan(self.rnn, x, state, resets, triton_scan.LSTMScanTriton)
        if impl == "bucketed":
            return self._sequence_bucketed(x, state, resets, end_state)
        if impl == "packed":
            return self._sequence_packed(x, state, resets)
        if impl == "loop":
            return self._sequence_loop(x, state, resets)
        return self._sequence_chunked(x, state, resets)

    def _sequence_chunked(self, x: Tensor, state: State, resets: Tensor) -> tuple[Tensor, State]:
        T = x.shape[1]
        cut_at = (torch.nonzero(resets[:, 1:].any(0)).flatten() + 1).tolist()  # one host sync per call
        bounds = [0, *cut_at, T]
        outputs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            state = mask_state(state, resets[:, a])
            y, state = self._run(x[:, a:b], state)
            outputs.append(y)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)), state

    def _sequence_loop(self, x: Tensor, state: State, resets: Tensor) -> tuple[Tensor, State]:
        outputs = []
        for t in range(x.shape[1]):
            y, state = self._run(x[:, t : t + 1], mask_state(state, resets[:, t]))
            outputs.append(y)
        return torch.cat(outputs, 1), state

    def _sequence_packed(self, x: Tensor, state: State, resets: Tensor, only_last: Tensor | None = None
                         ) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        if only_last is None and not bool(resets[:, 1:].any()):  # no reset after t=0: a single fused call
            return self._run(x, mask_state(state, resets[:, 0]))
        flat_start, row, t0, length = self._fragments(resets)  # [F] each, fragments in row-major order
        if only_last is not None:  # just each row's final fragment, for its end state
            flat_start, row, t0, length = flat_start[only_last], row[only_last], t0[only_last], length[only_last]
        lengths_cpu = length.cpu()  # one host sync per call (pack needs lengths on the CPU)
        L = int(lengths_cpu.max())
        offs = torch.arange(L, device=x.device)
        valid = offs[None, :] < length[:, None]  # [F, L]
        src = (flat_start[:, None] + offs[None, :]).clamp(max=B * T - 1)  # [F, L] flat (row, t) positions
        frag_x = x.reshape(B * T, -1)[src]  # [F, L, in]
        first = t0 == 0
        init = tuple(torch.where(first.view(1, -1, 1), s[:, row], torch.zeros((), device=s.device))
                     for s in mask_state(state, resets[:, 0]))  # [layers, F, hidden]
        packed = nn.utils.rnn.pack_padded_sequence(frag_x, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, frag_state = self._run_packed(packed, init)
        y_frag, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)  # [F, L, hidden]
        if only_last is not None:
            return y_frag, frag_state
        y = x.new_zeros(B * T, y_frag.shape[-1])
        y[src[valid]] = y_frag[valid]
        last = torch.cat([(row[1:] != row[:-1]), row.new_ones(1, dtype=torch.bool)])  # each row's last fragment
        end = tuple(s[:, last] for s in frag_state)
        return y.view(B, T, -1), end

    def _fragments(self, resets: Tensor):
        """Split rows at their resets: fragment start (flat index), row, start step, length; all [F]."""
        B, T = resets.shape
        starts = resets.clone()
        starts[:, 0] = True
        flat_start = torch.nonzero(starts.flatten()).flatten()
        row, t0 = flat_start // T, flat_start % T
        nxt = torch.cat([flat_start[1:], flat_start.new_tensor([B * T])])
        length = torch.minimum(nxt, (row + 1) * T) - flat_start
        return flat_start, row, t0, length

    def _sequence_bucketed(self, x: Tensor, state: State, resets: Tensor, end_state: bool) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        state = mask_state(state, resets[:, 0])
        if not bool(resets[:, 1:].any()):  # one host sync; no reset after t=0: a single fused call
            return self._run(x, state)
        flat_start, row, t0, length = self._fragments(resets)
        bucket = torch.ceil(torch.log2(length.float())).long()  # fragments of length in (2^(k-1), 2^k]
        order = torch.argsort(bucket)
        counts = torch.bincount(bucket, minlength=int(T).bit_length() + 1).tolist()  # one host sync
        y = x.new_zeros(B * T, self.hidden_size)
        flat_x = x.reshape(B * T, -1)
        begin = 0
        for k, n in enumerate(counts):
            if n == 0:
                continue
            idx = order[begin : begin + n]
            begin += n
            L = min(1 << k, T)
            offs = torch.arange(L, device=x.device)
            src = flat_start[idx, None] + offs  # [n, L]
            valid = offs[None, :] < length[idx, None]
            frag_x = flat_x[src.clamp(max=B * T - 1)]  # [n, L, in], right-padded with whatever follows
            first = (t0[idx] == 0).view(1, -1, 1)
            init = tuple(torch.where(first, s[:, row[idx]], torch.zeros((), device=s.device)) for s in state)
            out, _ = self._run(frag_x, init)  # a dense fused call; padded steps are computed and dropped
            y.index_put_((src[valid],), out[valid])
        if not end_state:
            return y.view(B, T, -1), ()
        last = torch.cat([(row[1:] != row[:-1]), row.new_ones(1, dtype=torch.bool)])
        _, end = self._sequence_packed(x, state, resets, only_last=last)
        return y.view(B, T, -1), end

    def _run_packed(self, packed, init: State):
        if self.kind == "lstm":
            out, (h, c) = self.rnn(packed, init)
            return out, (h, c)
        out, h = self.rnn(packed, init[0])
        return out, (h,)
