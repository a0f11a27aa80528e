"""Which torch device a stage runs on."""

from __future__ import annotations

import torch

from giblet.config import ConfigError


def resolve_device(device: str, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error
    naming the config ``key``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' asked for, but torch sees no CUDA device")
    return device
