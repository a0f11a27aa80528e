"""Load a trained ``model.pt`` and run it over one split block (what every evaluation stage starts from)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from giblet.data.samples import WindowDataset
from giblet.errors import InputError
from giblet.model import BrainAutoencoder

MODEL_FORMAT = "giblet.model/1"


def load_model(path: str | Path, device: str = "cpu") -> tuple[BrainAutoencoder, dict]:
    """``model.pt`` -> (model in eval mode, the saved dict without ``state_dict``).

    Raises InputError naming the file when it is missing, unreadable or not a giblet model.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such model file: run the train stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or corrupt file, or not a torch file at all
        raise InputError(path, f"cannot be read as a model file ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputError(path, f"is not a giblet model (expected format {MODEL_FORMAT!r})")
    model = BrainAutoencoder.from_config(saved["model_config"])
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    return model, {k: v for k, v in saved.items() if k != "state_dict"}


@dataclass
class Predictions:
    """One split block run through the model, in target order.

    ``targets`` (N,) fMRI TR indices; ``fmri_true``/``fmri_pred`` (N, V) float32 (encoder half,
    stimulus -> brain); ``decoded``: the decoder half from the TRUE brain, per enabled modality:
    ``frames`` (N, F, H, W, 3) float32 in [0, 1], ``code_logits`` (N, n_q, Fa, C) float32, ``text``
    (N, k, d) float32; ``stimulus``: the true stimulus the decoders reconstruct (``frames`` uint8,
    ``codes`` int64, ``text`` float32, ``text_mask`` bool) at the window's ``model.decode_index``
    (stimulus TR ``target + shift_trs + 1 + decode_index``).
    """

    targets: np.ndarray
    fmri_true: np.ndarray
    fmri_pred: np.ndarray
    decoded: dict
    stimulus: dict


@torch.no_grad()
def predict(model: BrainAutoencoder, manifest: dict, split: str, batch_size: int = 32, device: str = "cpu",
            decode: bool = True) -> Predictions:
    """Run ``model`` over every sample of ``split`` (``decode=False`` skips the decoder half)."""
    from giblet.train.loop import collate

    dataset = WindowDataset(manifest, split)
    pred, true, decoded, stimulus = [], [], {}, {}
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset, list(range(start, min(start + batch_size, len(dataset)))), device)
        pred.append(model.encode(batch).float().cpu().numpy())
        true.append(batch["fmri"].cpu().numpy())
        if decode:
            for key, value in model.decode(batch["fmri"]).items():
                decoded.setdefault(key, []).append(value.float().cpu().numpy())
            for key, value in model.decoded_stimulus(batch).items():
                stimulus.setdefault(key, []).append(value.cpu().numpy())
    return Predictions(np.asarray(dataset.targets), np.concatenate(true), np.concatenate(pred),
                       {k: np.concatenate(v) for k, v in decoded.items()},
                       {k: np.concatenate(v) for k, v in stimulus.items()})
