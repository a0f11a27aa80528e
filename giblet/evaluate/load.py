"""Run a trained model over one split block (what every evaluation stage starts from).

``model.pt`` itself is read by :mod:`giblet.model.model_file`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from giblet.data.batch import collate
from giblet.data.manifest import Manifest
from giblet.data.samples import WindowDataset
from giblet.model import BrainAutoencoder


@dataclass
class Predictions:
    """One split block run through the model, in target order.

    ``targets`` (N,) fMRI TR indices; ``fmri_true``/``fmri_pred`` (N, V) float32 (encoder half,
    stimulus -> brain); ``decoded``: the decoder half from the TRUE brain, per enabled modality:
    ``frames`` (N, F, H, W, 3) float32 in [0, 1], ``code_logits`` (N, n_q, Fa, C) float32, ``text``
    (N, k, d) float32; ``stimulus``: the true stimulus the decoders reconstruct (``frames`` uint8,
    ``codes`` int64, ``text`` float32, ``text_mask`` bool) at the window's ``model.decode_index``
    (stimulus TR ``target + shift_trs + 1 + decode_index``); ``brain``: what the decoders read, the
    true brain at each target (N, V) or, with latent decoding, the window of TRs ending there (N, W, V).
    """

    targets: np.ndarray
    fmri_true: np.ndarray
    fmri_pred: np.ndarray
    decoded: dict
    stimulus: dict
    brain: np.ndarray | None = None


@torch.no_grad()
def predict(model: BrainAutoencoder, manifest: Manifest, split: str, batch_size: int = 32, device: str = "cpu",
            decode: bool = True) -> Predictions:
    """Run ``model`` over every sample of ``split`` (``decode=False`` skips the decoder half)."""
    dataset = WindowDataset(manifest, split, brain_window=model.decode_window if model.latent_decoding else 0)
    pred, true, decoded, stimulus, brain = [], [], {}, {}, []
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset, list(range(start, min(start + batch_size, len(dataset)))), device)
        pred.append(model.encode(batch).float().cpu().numpy())
        true.append(batch["fmri"].cpu().numpy())
        if decode:
            brain.append(model.decoder_input(batch).float().cpu().numpy())
            for key, value in model.decode(model.decoder_input(batch)).items():
                decoded.setdefault(key, []).append(value.float().cpu().numpy())
            for key, value in model.decoded_stimulus(batch).items():
                stimulus.setdefault(key, []).append(value.cpu().numpy())
    return Predictions(np.asarray(dataset.targets), np.concatenate(true), np.concatenate(pred),
                       {k: np.concatenate(v) for k, v in decoded.items()},
                       {k: np.concatenate(v) for k, v in stimulus.items()},
                       np.concatenate(brain) if brain else None)
