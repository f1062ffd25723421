"""Optimizers: Adam for everything, or Muon for the hidden weight matrices with Adam for the rest."""

from __future__ import annotations

import torch
from torch import nn

from carrystate.config import TrainerConfig


class Combined(torch.optim.Optimizer):
    """Several optimizers stepped as one (state_dict and param_groups are theirs, concatenated)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.defaults = {}
        self.state = {}

    @property
    def param_groups(self):  # read through: load_state_dict replaces the inner optimizers' group dicts
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)


def hidden_matrices(policy: nn.Module) -> list[str]:
    """Names of the 2-D weights inside the network (each encoder after its input layer, each recurrent core);
    the input layers, heads, biases and other parameters stay with Adam, as Muon's authors advise."""
    names = []
    for encoder, core in (("encoder.", "core."), ("critic_encoder.", "critic_core.")):
        mine = [n for n, p in policy.named_parameters() if p.dim() == 2 and n.startswith((encoder, core))]
        first_encoder_layer = next((n for n in mine if n.startswith(encoder)), None)
        names += [n for n in mine if n != first_encoder_layer]
    return names


def adam(params, lr: float, eps: float, fused: bool = False) -> torch.optim.Adam:
    """Adam; with `fused`, torch's one-kernel step where it has one for the device (CPU, CUDA)."""
    params = list(params)
    fused = fused and bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused or None)


def make_optimizer(policy: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=cfg.fused_adam)
    muon_names = set(hidden_matrices(policy))
    muon = [p for n, p in policy.named_parameters() if n in muon_names]
    rest = [p for n, p in policy.named_parameters() if n not in muon_names]
    optimizers = [adam(rest, lr=cfg.muon_adam_lr, eps=cfg.adam_eps, fused=cfg.fused_adam)]
    if muon:
        optimizers.insert(0, torch.optim.Muon(muon, lr=cfg.learning_rate, weight_decay=0.0))
    for o in optimizers:
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    return Combined(optimizers)


def set_lr_fraction(optimizer: torch.optim.Optimizer, fraction: float) -> None:
    """Scale every group's learning rate to `fraction` of its initial value (linear annealing)."""
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
        g["lr"] = g["initial_lr"] * fraction
