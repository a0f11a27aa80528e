"""Batches: samples of a :class:`~giblet.data.samples.WindowDataset` stacked for the model.

The batch contract (what ``BrainAutoencoder.forward``, ``encode``, ``decoded_stimulus`` and
``giblet.model.losses`` read) is the sample dict of ``WindowDataset`` with a leading batch axis and
without ``target``: ``fmri`` (B, V) float32, ``stimulus_trs`` (B, lag) int64 and, per enabled
modality, ``frames`` (B, lag, F, H, W, 3) uint8, ``frame_features`` (B, lag, F, d) float32 (CLIP image
embeddings), ``codes`` (B, lag, n_q, Fa) int64, ``text``
(B, lag, k, d) float32, ``text_mask`` (B, lag, k) bool. It lives here, beside the samples, because
training and every evaluation stage build batches the same way and evaluation must not depend on
the training package.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from giblet.data.samples import WindowDataset


def collate(dataset: WindowDataset, indices: list[int], device: str | torch.device) -> dict:
    """The samples ``indices`` of ``dataset`` as one batch on ``device`` (see the module docstring)."""
    batch = default_collate([dataset[i] for i in indices])
    batch.pop("target")
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


__all__ = ["collate"]
