"""Which torch device a stage runs on."""

from __future__ import annotations

import logging
import os

import torch

from giblet.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(device: str, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error
    naming the config ``key``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' asked for, but torch sees no CUDA device")
    return device


def job_device(device: str, granted_gpus: int, key: str = "device") -> str:
    """The device for a Snakemake job that reserved ``granted_gpus`` (0 or 1).

    Such rules declare ``gpus=1`` unless their device is ``cpu``, so that under ``--resources gpus=N``
    they never share a GPU with training by accident; Snakemake grants 0 when told
    ``--resources gpus=0``, and then ``auto`` means the CPU.
    """
    if device == "cuda" and granted_gpus == 0:
        raise ConfigError(f"{key}: 'cuda' asked for, but Snakemake granted this job no GPU (--resources gpus=0)")
    chosen = resolve_device(device, key) if granted_gpus > 0 else "cpu"
    log.info("%s: %s on %s (GPUs granted: %d, CUDA_VISIBLE_DEVICES=%s)", key, device, chosen, granted_gpus,
             os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    return chosen
