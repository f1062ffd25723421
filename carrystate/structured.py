"""Structured observations (Dict, Tuple, Discrete, ...) as one byte record per agent.

A `StructuredSpace` is a uint8 `Box` of shape [bytes]: each observation is packed into one record in which every
entry (a *field*) keeps its own dtype's bytes, at a fixed offset (what a numpy structured dtype does). Every layer
that moves observations (worker shared memory and pipes, the segment buffer, checkpoints) carries the records as the
uint8 arrays they are, so each field is stored in its own dtype at its own size; only the policy looks inside, where
`unpack` turns a batch of records back into one tensor per field (`policy/encoders.py: StructuredEncoder` encodes
each with its own encoder). Packing and unpacking are exact: the bytes are copied, never converted.

Fields are the leaves of the space: nested Dict keys joined by "/", Tuple positions by their index, a bare
non-Box space is the field "obs". Leaves that carry no numbers (text; MiniGrid's `mission`) are dropped and listed
in `dropped`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

NUMERIC = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


@dataclass(frozen=True)
class Field:
    """One leaf of a structured observation: its name, space, and where its bytes lie in the record."""

    name: str
    space: gym.Space
    offset: int
    nbytes: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.space.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.space.shape)


def _leaves(space: gym.Space, prefix: str) -> list[tuple[str, gym.Space | None]]:
    """(name, space) for each leaf; None where the leaf holds no numbers (dropped)."""
    if isinstance(space, gym.spaces.Dict):
        items = space.spaces.items()
    elif isinstance(space, gym.spaces.Tuple):
        items = ((str(i), sub) for i, sub in enumerate(space.spaces))
    else:
        return [(prefix or "obs", space if isinstance(space, NUMERIC) else None)]
    return [leaf for key, sub in items for leaf in _leaves(sub, f"{prefix}/{key}" if prefix else str(key))]


def _get(value, name: str):
    for key in name.split("/"):
        value = value[key] if isinstance(value, Mapping) else value[int(key)]
    return value


class StructuredSpace(gym.spaces.Box):
    """A uint8 Box [bytes] of packed records of `original` (a Dict, Tuple or other non-Box space); `fields` says
    where each numeric leaf lies. Equal to another only when both the record size and the fields agree."""

    def __init__(self, original: gym.Space):
        leaves = _leaves(original, "")
        self.dropped = [name for name, sub in leaves if sub is None]
        fields, offset = [], 0
        for name, sub in leaves:
            if sub is None:
                continue
            nbytes = int(np.prod(sub.shape, dtype=np.int64)) * np.dtype(sub.dtype).itemsize
            fields.append(Field(name, sub, offset, nbytes))
            offset += nbytes
        if not fields:
            from carrystate.config import ConfigError  # (config imports the policy, which imports this module)

            raise ConfigError(
                f"observations of {original} hold no numbers ({', '.join(self.dropped)} dropped) and cannot reach "
                "the policy; add a wrapper (env.gymnasium.wrappers) that makes a Box"
            )
        self.original, self.fields = original, tuple(fields)
        super().__init__(0, 255, (offset,), np.uint8)

    def pack(self, value, batch: int | None = None) -> np.ndarray:
        """One observation of `original` → its record [bytes]; with `batch`, a batch of them (every leaf with a
        leading dimension of `batch`, as gymnasium's vector envs return) → records [batch, bytes]."""
        lead = () if batch is None else (batch,)
        out = np.empty((*lead, self.shape[0]), np.uint8)
        for f in self.fields:
            leaf = np.ascontiguousarray(_get(value, f.name), dtype=f.dtype).reshape(*lead, -1)
            out[..., f.offset : f.offset + f.nbytes] = leaf.view(np.uint8)
        return out

    def pack_any(self, value) -> np.ndarray:
        """One observation → [bytes], or a batch (each entry with a leading dimension) → [batch, bytes]."""
        first = self.fields[0]
        extra = np.ndim(_get(value, first.name)) - len(first.shape)
        return self.pack(value, None if extra == 0 else len(_get(value, first.name)))

    def unpack(self, records: Tensor) -> dict[str, Tensor]:
        """Records [..., bytes] (uint8) → {field name: tensor [..., *field shape] in the field's own dtype}."""
        lead = records.shape[:-1]
        out = {}
        for f in self.fields:
            raw = records[..., f.offset : f.offset + f.nbytes]
            if f.dtype != np.uint8:  # reinterpret the bytes, copied first into a block of standard strides
                dense = torch.empty(raw.shape, dtype=torch.uint8, device=raw.device).copy_(raw)
                raw = dense.view(torch.from_numpy(np.zeros(0, f.dtype)).dtype)
            out[f.name] = raw.reshape((*lead, *f.shape))
        return out

    def finite_fields(self, records: np.ndarray) -> dict[str, np.ndarray]:
        """Records [rows, bytes] → {float entry's name: [rows] bool, every value of the entry finite}."""
        return {
            f.name: np.isfinite(np.ascontiguousarray(records[:, f.offset : f.offset + f.nbytes]).view(f.dtype)).all(1)
            for f in self.fields
            if f.dtype.kind == "f"
        }

    def finite_rows(self, records: np.ndarray) -> np.ndarray:
        """Records [rows, bytes] → [rows] bool: every float entry of the row's record is finite."""
        ok = np.ones(len(records), bool)
        for finite in self.finite_fields(records).values():
            ok &= finite
        return ok

    def nonfinite_fields(self, record: np.ndarray) -> list[str]:
        """One record [bytes] → the names of its float entries that hold a NaN or infinity (what an error names)."""
        return [name for name, finite in self.finite_fields(record[None]).items() if not finite[0]]

    def __eq__(self, other) -> bool:
        return isinstance(other, StructuredSpace) and other.shape == self.shape and other.fields == self.fields

    def __hash__(self) -> int:
        return hash((self.shape, tuple((f.name, f.offset, f.nbytes) for f in self.fields)))

    def __repr__(self) -> str:
        kept = ", ".join(f"{f.name}: {f.space}" for f in self.fields)
        return f"StructuredSpace({kept}{'; dropped ' + ', '.join(self.dropped) if self.dropped else ''})"


class PackedObservation(gym.ObservationWrapper):
    """A gymnasium env whose observations are not a Box, with each observation packed into a `StructuredSpace`
    record."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = StructuredSpace(env.observation_space)

    def observation(self, observation):
        return self.observation_space.pack(observation)


__all__ = ["Field", "PackedObservation", "StructuredSpace"]
