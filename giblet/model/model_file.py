"""``model.pt``, the trained model file: its one writer, its one reader, and its format constant.

The train stage writes it (:func:`write_model_file`, called by ``giblet.train.loop.Trainer``); every
evaluation stage reads it (:func:`read_model_file`, :func:`load_model`). The module lives in
``giblet.model`` because the file is a :class:`~giblet.model.BrainAutoencoder` plus its provenance,
and because both sides already depend on ``giblet.model`` while the evaluation stages must not
import the training package (``giblet.train``).

Files are unpickled by :func:`giblet.weights_only.load_weights_only`, as every torch file giblet wrote.

The file is a dict (``torch.save``):

``format``
    :data:`MODEL_FORMAT`; a reader refuses any other value.
``model_config``
    ``BrainAutoencoder.config()``: :meth:`~giblet.model.BrainAutoencoder.from_config` rebuilds the network.
``state_dict``
    The weights (CPU tensors), as ``model.state_dict()``.
``weights``
    Which weights these are: ``{"weights": "best" | "final", "step", "epoch"}``, plus ``readout`` when
    the fMRI layer was refitted in closed form after training.
``manifest``, ``manifest_sha256``
    The dataset manifest trained on (its path and the sha256 of its bytes).
``mask``, ``affine``, ``fmri_info``
    The manifest's ``arrays.mask`` entry, the 4 x 4 voxel -> mm affine and the ``arrays.fmri_info``
    entry (or None): enough to map predictions back to the brain.
``train_params``, ``config_hash``, ``steps``, ``epochs``, ``best_val_loss``, ``giblet_version``
    How it was trained: the ``train`` config section, the checkpoints' configuration hash, optimizer
    steps and epochs run, the best validation selection score (inf without validation).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from giblet.errors import InputError
from giblet.model.autoencoder import BrainAutoencoder
from giblet.weights_only import read_giblet_file

MODEL_FORMAT = "giblet.model/1"
# Keys every model.pt must hold as dicts (the rest is provenance; readers use .get()).
REQUIRED = ("model_config", "state_dict")


def write_model_file(path: str | Path, model_config: dict, state_dict: dict, **provenance) -> Path:
    """Write ``model.pt`` at ``path`` (to a temporary name, then renamed: never half-written).

    ``provenance``: the other keys of the format (see the module docstring). Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": MODEL_FORMAT, "model_config": model_config, "state_dict": state_dict, **provenance}, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(path: str | Path) -> dict:
    """``model.pt`` as saved (a dict with ``model_config`` and ``state_dict``), read weights-only.

    Raises
    ------
    InputError
        Naming the file: missing, unreadable (truncated, corrupt, not a torch file), not of
        :data:`MODEL_FORMAT`, or without ``model_config``/``state_dict``.
    """
    path = Path(path)
    saved = read_giblet_file(path, MODEL_FORMAT, "model file: run the train stage first", "a model file",
                             "a giblet model")
    missing = [k for k in REQUIRED if not isinstance(saved.get(k), dict)]
    if missing:
        raise InputError(path, f"giblet model without {', '.join(missing)}")
    return saved


def load_model(path: str | Path, device: str = "cpu") -> tuple[BrainAutoencoder, dict]:
    """``model.pt`` -> (model on ``device`` in eval mode, the saved dict without ``state_dict``).

    Raises InputError naming the file (see :func:`read_model_file`).
    """
    saved = read_model_file(path)
    model = BrainAutoencoder.from_config(saved["model_config"])
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    return model, {k: v for k, v in saved.items() if k != "state_dict"}


__all__ = ["MODEL_FORMAT", "load_model", "read_model_file", "write_model_file"]
