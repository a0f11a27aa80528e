"""``autoencoder.pt``, a pretrained stimulus autoencoder: its one writer, its one reader.

The pretraining stages (``pretrain_frames``, ``pretrain_audio``: :mod:`giblet.pretrain`) write one per
modality; the brain model's trainer reads them to render decoded latents (the frozen decoders
become part of ``model.pt``). The file is a dict (``torch.save``, read weights-only):

``format``
    :data:`AUTOENCODER_FORMAT`; a reader refuses any other value.
``kind``
    ``"frames"`` (:class:`~giblet.autoencoders.frames.FrameAutoencoder`) or ``"audio"``
    (:class:`~giblet.autoencoders.codes.CodeAutoencoder`).
``config``
    The kind's config dataclass as a dict.
``state_dict``
    The weights (CPU tensors).
``quality``, ``weights``, ``params``, ``config_hash``, ``giblet_version``
    What the stage measured (reconstruction error against the mean), which weights these are (best
    or final), how it was trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from giblet.errors import InputError
from giblet.weights_only import read_giblet_file
from giblet.autoencoders.kinds import build_autoencoder

AUTOENCODER_FORMAT = "giblet.stimulus_autoencoder/1"


def write_autoencoder(path: str | Path, kind: str, model: nn.Module, state_dict: dict, **provenance) -> Path:
    """Write ``path`` (to a temporary name, then renamed: never half-written); returns it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": AUTOENCODER_FORMAT, "kind": kind, "config": model.config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **provenance}, tmp)
    os.replace(tmp, path)
    return path


def load_autoencoder(path: str | Path, kind: str | None = None) -> tuple[nn.Module, dict]:
    """``autoencoder.pt`` -> (the autoencoder, frozen, in eval mode on the CPU; the file without its weights).

    Raises InputError naming the file when it is missing, unreadable, of another format or of
    another ``kind`` than asked for.
    """
    path = Path(path)
    saved = read_giblet_file(path, AUTOENCODER_FORMAT, "autoencoder file: run its pretraining stage first",
                             "an autoencoder", "a giblet stimulus autoencoder")
    if kind is not None and saved.get("kind") != kind:
        raise InputError(path, f"holds a {saved.get('kind')!r} autoencoder, not {kind!r}")
    model = build_autoencoder(saved["kind"], saved["config"])
    model.load_state_dict(saved["state_dict"])
    model.eval().requires_grad_(False)
    return model, {k: v for k, v in saved.items() if k != "state_dict"}


__all__ = ["AUTOENCODER_FORMAT", "load_autoencoder", "write_autoencoder"]
