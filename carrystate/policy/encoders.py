"""Observation encoders: an observation → a feature vector for the recurrent core.

`MLPEncoder` reads flat vectors (and any Box, flattened), `TokenEncoder` MettaGrid-style token lists, and
`StructuredEncoder` a `StructuredSpace` record (a Dict, Tuple or Discrete observation, packed by
`structured.py`): one encoder per field (an MLP for vectors, `ImageEncoder` for image-shaped boxes,
`DiscreteEncoder` for Discrete and MultiDiscrete), concatenated. `make_encoder` picks by the space and the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from carrystate.policy.heads import orthogonal_linear
from carrystate.policy.kernels import cpu
from carrystate.structured import StructuredSpace

if TYPE_CHECKING:  # config builds its unroll choices from policy.unroll, so policy does not import config
    from carrystate.config import PolicyConfig


class MLPEncoder(nn.Module):
    """Flat vector observations → features [..., out_size]."""

    def __init__(self, obs_shape: tuple[int, ...], sizes: list[int]):
        super().__init__()
        layers, width = [], int(np.prod(obs_shape))
        self.obs_ndim = len(obs_shape)
        for size in sizes:
            layers += [orthogonal_linear(width, size, np.sqrt(2)), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers)
        self.out_size = width

    @classmethod
    def from_config(cls, obs_shape: tuple[int, ...], cfg: PolicyConfig) -> MLPEncoder:
        return cls(obs_shape, cfg.encoder_sizes)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.flatten(-self.obs_ndim).float())

    def frozen_call(self, bf16: bool):
        """`forward` without gradients in a `frozen` block as plain calls (`precision.Linear.frozen_call`, ReLU);
        None where a layer has none."""
        calls = []
        for layer in self.net:
            call = torch.relu if isinstance(layer, nn.ReLU) else getattr(layer, "frozen_call", lambda _: None)(bf16)
            if call is None:
                return None
            calls.append(call)
        ndim = self.obs_ndim

        def call(obs: Tensor) -> Tensor:
            x = obs.flatten(-ndim).float()
            for f in calls:
                x = f(x)
            return x

        return call


class TokenEncoder(nn.Module):
    """Token-list observations [..., tokens, 3] → features [..., out_size].

    Each token is three bytes (location, feature id, value), as MettaGrid emits them; a token whose location
    byte is 255 is empty. A token's (location, feature) pair picks two rows of one table: a presence row, added
    as it is, and a value row, scaled by value / 255. A row's features are ReLU of the sum over its present
    tokens, then an MLP: a linear layer on the dense [location, feature] grid of presence and value, computed
    without building the grid. The sum does not depend on the order of the tokens or on how many empty tokens
    pad the list, and it keeps which feature is where. On the CPU, uint8 tokens are summed in C++ straight from
    the token list, forward and backward (policy/kernels/tokens_cpu.cpp); elsewhere one `nn.EmbeddingBag` call
    over the present tokens computes the same sum.
    """

    EMPTY = 255
    LOCATIONS = 256  # the location byte

    def __init__(self, obs_shape: tuple[int, ...], embed_size: int, sizes: list[int], features: int = 64):
        super().__init__()
        if len(obs_shape) != 2 or obs_shape[1] != 3:
            raise ValueError(
                f"policy.encoder=token needs observations of shape [tokens, 3], got {tuple(obs_shape)}; "
                "use policy.encoder=mlp for flat observations"
            )
        self.features = features
        self.table = nn.EmbeddingBag(2 * self.LOCATIONS * features, embed_size, mode="sum")
        nn.init.normal_(self.table.weight, std=0.1)  # ~30 present tokens sum to features of order 1
        self.mlp = MLPEncoder((embed_size,), sizes)
        self.out_size = self.mlp.out_size

    @classmethod
    def from_config(cls, obs_shape: tuple[int, ...], cfg: PolicyConfig) -> TokenEncoder:
        return cls(obs_shape, cfg.token_embed_size, cfg.encoder_sizes, cfg.token_features)

    def forward(self, obs: Tensor) -> Tensor:
        return self._encode(obs, self.mlp)

    def _encode(self, obs: Tensor, mlp) -> Tensor:
        """The sum (C++ on the CPU for uint8 tokens, else `_bag`), its feature check, then `mlp`."""
        summed = cpu.token_bag(obs, self.table.weight, self.features)
        if summed is None:
            summed = self._bag(obs)
        pooled, max_feature = summed
        if max_feature >= self.features:
            raise ValueError(
                f"a token has feature id {max_feature}, but policy.token_features={self.features}: "
                "raise policy.token_features above the largest feature id the env emits"
            )
        return mlp(torch.relu(pooled)).reshape(*obs.shape[:-2], -1)

    def frozen_call(self, bf16: bool):
        """`forward` without gradients in a `frozen` block, with the MLP's frozen call; None where it has none."""
        mlp = self.mlp.frozen_call(bf16)
        return None if mlp is None else lambda obs: self._encode(obs, mlp)

    def _bag(self, obs: Tensor) -> tuple[Tensor, int]:
        """The sum with one `nn.EmbeddingBag` call (any device and dtype), and the largest feature id among the
        present tokens (on CUDA -1, unchecked: reading it would wait for the device). Only the present tokens
        enter the bag (MettaGrid fills ~30 of 200 slots); their order in `flat` is row-major, so each row's
        entries are contiguous and `offsets` marks where each row's bag starts."""
        slots = obs.shape[-2]
        flat = obs.reshape(-1, 3)  # [rows * slots, 3]
        rows = flat.shape[0] // slots
        present = flat[:, 0] != self.EMPTY
        loc, feat, value = flat[present].long().unbind(1)
        max_feature = int(feat.max()) if not feat.is_cuda and feat.numel() else -1
        feat = feat.clamp(max=self.features - 1)  # (an id beyond the table is raised on by forward)
        cell = loc * self.features + feat
        index = torch.stack([cell, cell + self.LOCATIONS * self.features], 1).reshape(-1)
        weight = torch.stack([torch.ones_like(value, dtype=torch.float32), value.float() / 255.0], 1).reshape(-1)
        count = present.view(rows, slots).sum(1)
        offsets = 2 * (torch.cumsum(count, 0) - count)
        pooled = self.table(index, offsets, per_sample_weights=weight.to(self.table.weight.dtype))
        return pooled, max_feature


DISCRETE = (gym.spaces.Discrete, gym.spaces.MultiDiscrete)


def is_image(space: gym.Space) -> bool:
    """A Box of three dimensions: an image, channels last ([H, W, C], gymnasium's convention) or first."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


class ImageEncoder(nn.Module):
    """An image Box [H, W, C] (or [C, H, W] when the first dimension is the smallest) → features [..., out_size]:
    a small CNN of 3×3 convolutions (on images up to 16 pixels a side: stride 1 without padding, so 7×7 becomes
    5×5, then 3×3; larger images: stride 2 with padding, halving each side), flattened, one ReLU layer.

    What enters the CNN per pixel: with `encoding="embed"` and integer values, each channel's value picks a learned
    vector of `embed_size` (one table per channel): right for grids of object, colour and state ids (MiniGrid),
    where a value is a category, not an intensity. Otherwise (`"scale"`, or float images) value / high per channel
    (as is where high is not finite)."""

    MAX_EMBED_VALUES = 1024  # an integer image with more distinct values per channel is scaled, not embedded

    def __init__(self, space: gym.spaces.Box, embed_size: int, channels: list[int], out_size: int, encoding: str):
        super().__init__()
        h, w, c = space.shape
        self.channels_first = h < c
        if self.channels_first:
            c, h, w = space.shape
        low = np.asarray(space.low, np.float64).reshape(space.shape)
        high = np.asarray(space.high, np.float64).reshape(space.shape)
        if self.channels_first:
            low, high = low.transpose(1, 2, 0), high.transpose(1, 2, 0)  # [H, W, C], as the forward sees it
        integer = np.issubdtype(space.dtype, np.integer)
        values = int(high.max()) + 1 if integer and np.isfinite(high).all() else 0
        self.embed = encoding == "embed" and integer and low.min() >= 0 and 0 < values <= self.MAX_EMBED_VALUES
        if self.embed:
            self.values = values
            self.table = nn.Embedding(c * values, embed_size)
            self.register_buffer("channel_offset", torch.arange(c) * values, persistent=False)
            width = c * embed_size
        else:
            top = high.reshape(-1, c).max(0)
            scale = np.where(np.isfinite(top) & (top > 0), top, 1.0)
            self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False)
            width = c
        small = max(h, w) <= 16  # small images: stride 1, no padding (each layer trims a pixel at each side)
        layers = []
        for size in channels:
            stride, pad = (1, 0) if small and min(h, w) >= 3 else (1, 1) if small else (2, 1)
            conv = nn.Conv2d(width, size, 3, stride, padding=pad)
            nn.init.orthogonal_(conv.weight, np.sqrt(2))
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            width = size
            h, w = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
        self.cnn = nn.Sequential(*layers)
        self.head = MLPEncoder((width * h * w,), [out_size])
        self.out_size = out_size

    def forward(self, image: Tensor) -> Tensor:
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:])
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)  # [N, H, W, C]
        if self.embed:
            x = self.table(x.long() + self.channel_offset).flatten(-2)  # [N, H, W, C * embed]
        else:
            x = x.float() / self.scale
        x = self.cnn(x.permute(0, 3, 1, 2))
        return self.head(x.flatten(1)).reshape(*lead, -1)


class DiscreteEncoder(nn.Module):
    """A Discrete value → a learned vector of `embed_size`; MultiDiscrete [k] → k learned vectors (one table, a block
    of rows per position), concatenated."""

    def __init__(self, space: gym.spaces.Discrete | gym.spaces.MultiDiscrete, embed_size: int):
        super().__init__()
        if isinstance(space, gym.spaces.Discrete):
            nvec, start = np.array([space.n]), np.array([space.start])
        else:
            nvec, start = np.asarray(space.nvec).reshape(-1), np.asarray(space.start).reshape(-1)
        self.ndim = len(space.shape)  # 0 for Discrete
        offset = np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(int(nvec.sum()), embed_size)
        self.out_size = len(nvec) * embed_size

    def forward(self, value: Tensor) -> Tensor:
        x = value.long()
        x = x.unsqueeze(-1) if self.ndim == 0 else x.flatten(-self.ndim)  # [..., positions]
        return self.table(x + self.offset).flatten(-2)


def vector_fields(space: StructuredSpace) -> list:
    """The fields of `space` that `StructuredEncoder` reads with an MLP (and that obs_norm normalises)."""
    return [f for f in space.fields if not is_image(f.space) and not isinstance(f.space, DISCRETE)]


def module_key(name: str) -> str:
    """A field name as a key of nn.ModuleDict (which refuses dots)."""
    return name.replace(".", "_")


class StructuredEncoder(nn.Module):
    """A `StructuredSpace`'s fields (unpacked: {module_key(name): tensor}) → one encoder per field, features
    concatenated in the fields' order."""

    def __init__(self, space: StructuredSpace, cfg: PolicyConfig):
        super().__init__()
        self.names = [module_key(f.name) for f in space.fields]
        encoders = {}
        for f in space.fields:
            if is_image(f.space):
                size = cfg.encoder_sizes[-1] if cfg.encoder_sizes else 64
                enc = ImageEncoder(f.space, cfg.embed_size, cfg.cnn_channels, size, cfg.image_encoding)
            elif isinstance(f.space, DISCRETE):
                enc = DiscreteEncoder(f.space, cfg.embed_size)
            else:
                enc = MLPEncoder(f.shape, cfg.encoder_sizes)
            encoders[module_key(f.name)] = enc
        self.encoders = nn.ModuleDict(encoders)
        self.out_size = sum(e.out_size for e in self.encoders.values())

    def forward(self, fields: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.encoders[name](fields[name]) for name in self.names], -1)


ENCODERS = {"mlp": MLPEncoder, "token": TokenEncoder}


def make_encoder(obs_space: gym.Space, cfg: PolicyConfig) -> nn.Module:
    """The encoder for observations of `obs_space`: per field for a `StructuredSpace`, else `cfg.encoder`."""
    if isinstance(obs_space, StructuredSpace):
        if cfg.encoder == "token":
            raise ValueError(
                f"policy.encoder=token reads token lists [tokens, 3], but the observations are {obs_space}; "
                "use policy.encoder=mlp (structured observations get one encoder per field)"
            )
        return StructuredEncoder(obs_space, cfg)
    return ENCODERS[cfg.encoder].from_config(tuple(obs_space.shape), cfg)


__all__ = [
    "ENCODERS",
    "DiscreteEncoder",
    "ImageEncoder",
    "MLPEncoder",
    "StructuredEncoder",
    "TokenEncoder",
    "make_encoder",
    "vector_fields",
]
