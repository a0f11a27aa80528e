"""The one way giblet unpickles a torch file it wrote (``model.pt``, ``autoencoder.pt``, the training
checkpoints): ``torch.load(weights_only=True)``, so no pickled code runs, with the few numpy types the
checkpoints' RNG states need allowed. Kept apart from the model and the trainer, which both read files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _numpy_safe_globals() -> list:
    """The numpy types ``np.random.get_state()`` pickles (checkpoints' RNG states), for weights_only."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_weights_only(path: str | Path):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with numpy arrays allowed.

    Tensors, containers, numbers, strings and numpy arrays only: a file that needs anything else
    (arbitrary pickled objects, i.e. code) raises ``pickle.UnpicklingError`` instead of running it.
    """
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_giblet_file(path: str | Path, file_format: str, missing: str, unreadable: str, other: str) -> dict:
    """The dict giblet saved at ``path`` with ``{"format": file_format, ...}``, read weights-only.

    Raises :class:`~giblet.errors.InputError` naming the file: ``no such <missing>`` when it is absent,
    ``cannot be read as <unreadable> (...)`` when it is truncated, corrupt or not a torch file, and
    ``is not <other> (expected format ...)`` when it holds something else.
    """
    from giblet.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no such {missing}")
    try:
        saved = load_weights_only(path)
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, or not a torch file at all
        raise InputError(path, f"cannot be read as {unreadable} ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict) or saved.get("format") != file_format:
        raise InputError(path, f"is not {other} (expected format {file_format!r})")
    return saved


__all__ = ["load_weights_only", "read_giblet_file"]
