"""The optimizer and its learning-rate schedule, as the training config names them."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (per optimizer step)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def make_optimizer(name: str, parameters, lr: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer must be 'adamw' or 'adamw8bit', not {name!r}")
