"""The unrolls that run the core's fused `nn.LSTM`/`nn.GRU` over pieces of a segment cut at its resets:
`chunked`, `packed`, `bucketed` and `loop`.

No fused call runs across a reset: each piece starts from the carried state or, after a reset, from zeros.
`chunked` cuts the whole segment at every timestep where some row resets (one fused call per piece), `loop`
steps one timestep at a time, `packed` runs each row's episode fragments as one packed sequence, and
`bucketed` runs the fragments as a few dense fused calls grouped by length. With no reset after t=0 each is
a single fused call. Under bf16 (carrystate/precision.py) `packed` refuses, and `bucketed` takes its end state
from `chunked`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from carrystate import precision
from carrystate.state import State, mask_state

if TYPE_CHECKING:
    from carrystate.policy.cores.recurrent import RecurrentCore


def chunked(
    core: RecurrentCore, x: Tensor, state: State, resets: Tensor, end_state: bool = True
) -> tuple[Tensor, State]:
    T = x.shape[1]
    cut_at = (torch.nonzero(resets[:, 1:].any(0)).flatten() + 1).tolist()  # one host sync per call
    bounds = [0, *cut_at, T]
    outputs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = mask_state(state, resets[:, a])
        y, state = core.fused(x[:, a:b], state)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)), state


def loop(core: RecurrentCore, x: Tensor, state: State, resets: Tensor, end_state: bool = True) -> tuple[Tensor, State]:
    outputs = []
    for t in range(x.shape[1]):
        y, state = core.fused(x[:, t : t + 1], mask_state(state, resets[:, t]))
        outputs.append(y)
    return torch.cat(outputs, 1), state


def packed(
    core: RecurrentCore, x: Tensor, state: State, resets: Tensor, end_state: bool = True
) -> tuple[Tensor, State]:
    return _packed(core, x, state, resets)


def _packed(
    core: RecurrentCore, x: Tensor, state: State, resets: Tensor, only_last: Tensor | None = None
) -> tuple[Tensor, State]:
    B, T, _ = x.shape
    if only_last is None and not bool(resets[:, 1:].any()):  # no reset after t=0: a single fused call
        return core.fused(x, mask_state(state, resets[:, 0]))
    flat_start, row, t0, length = _fragments(resets)  # [F] each, fragments in row-major order
    if only_last is not None:  # just each row's final fragment, for its end state
        flat_start, row, t0, length = flat_start[only_last], row[only_last], t0[only_last], length[only_last]
    lengths_cpu = length.cpu()  # one host sync per call (pack needs lengths on the CPU)
    L = int(lengths_cpu.max())
    offs = torch.arange(L, device=x.device)
    valid = offs[None, :] < length[:, None]  # [F, L]
    src = (flat_start[:, None] + offs[None, :]).clamp(max=B * T - 1)  # [F, L] flat (row, t) positions
    frag_x = x.reshape(B * T, -1)[src]  # [F, L, in]
    first = t0 == 0
    init = tuple(
        torch.where(first.view(1, -1, 1), s[:, row], torch.zeros((), device=s.device))
        for s in mask_state(state, resets[:, 0])
    )  # [layers, F, hidden]
    sequences = nn.utils.rnn.pack_padded_sequence(frag_x, lengths_cpu, batch_first=True, enforce_sorted=False)
    out, frag_state = core.fused(sequences, init)
    y_frag, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)  # [F, L, hidden]
    if only_last is not None:
        return y_frag, frag_state
    y = x.new_zeros(B * T, y_frag.shape[-1])
    y[src[valid]] = y_frag[valid]
    last = torch.cat([(row[1:] != row[:-1]), row.new_ones(1, dtype=torch.bool)])  # each row's last fragment
    end = tuple(s[:, last] for s in frag_state)
    return y.view(B, T, -1), end


def _fragments(resets: Tensor):
    """Split rows at their resets: fragment start (flat index), row, start step, length; all [F]."""
    B, T = resets.shape
    starts = resets.clone()
    starts[:, 0] = True
    flat_start = torch.nonzero(starts.flatten()).flatten()
    row, t0 = flat_start // T, flat_start % T
    nxt = torch.cat([flat_start[1:], flat_start.new_tensor([B * T])])
    length = torch.minimum(nxt, (row + 1) * T) - flat_start
    return flat_start, row, t0, length


def bucketed(
    core: RecurrentCore, x: Tensor, state: State, resets: Tensor, end_state: bool = True
) -> tuple[Tensor, State]:
    B, T, _ = x.shape
    state = mask_state(state, resets[:, 0])
    if not bool(resets[:, 1:].any()):  # one host sync; no reset after t=0: a single fused call
        return core.fused(x, state)
    flat_start, row, t0, length = _fragments(resets)
    bucket = torch.ceil(torch.log2(length.float())).long()  # fragments of length in (2^(k-1), 2^k]
    order = torch.argsort(bucket)
    counts = torch.bincount(bucket, minlength=int(T).bit_length() + 1).tolist()  # one host sync
    y = x.new_zeros(B * T, core.hidden_size, dtype=state[0].dtype)  # fp32 also under bf16 (x is bf16 there)
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
        out, _ = core.fused(frag_x, init)  # a dense fused call; padded steps are computed and dropped
        y.index_put_((src[valid],), out[valid])
    if not end_state:
        return y.view(B, T, -1), ()
    if precision.active(x):  # no packed sequences in bf16: the end state from the chunked unroll
        return y.view(B, T, -1), chunked(core, x, state, resets)[1]
    last = torch.cat([(row[1:] != row[:-1]), row.new_ones(1, dtype=torch.bool)])
    _, end = _packed(core, x, state, resets, only_last=last)
    return y.view(B, T, -1), end
