"""Training samples: the stimulus in a causal window of TRs -> the fMRI at the window's end.

Sample ``j`` of a split is target fMRI TR ``t = targets[j]`` with the stimulus TRs
``[t + shift - lag + 1, t + shift]`` (see giblet.splits). Arrays are read from the manifest's
memory-mapped ``.npy`` files, or held on a device (e.g. the GPU) when they fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from giblet.data.manifest import Manifest, as_manifest

# Manifest roles -> sample keys, and the dtype each sample tensor gets.
ROLES = {"frames": ("frames", torch.uint8), "frame_features": ("frame_features", torch.float32),
         "audio_codes": ("codes", torch.int64),
         "text": ("text", torch.float32), "text_mask": ("text_mask", torch.bool),
         "frame_latents": ("frame_latents", torch.float32), "audio_latents": ("audio_latents", torch.float32)}


class WindowDataset(torch.utils.data.Dataset):
    """Windowed (stimulus -> fMRI) samples of one split block.

    Each item is a dict: ``target`` (int, fMRI TR), ``fmri`` (V,) float32, ``stimulus_trs`` (lag,)
    int64 (the movie TR of each window slot: the model encodes a TR shared by windows once), and per enabled modality
    ``frames`` (lag, F, H, W, 3) uint8, ``frame_features`` (lag, F, d) float32 (stored float16),
    ``codes`` (lag, n_q, frames_per_tr) int64, ``text``
    (lag, k, d) float32 and ``text_mask`` (lag, k) bool.

    With ``brain_window`` W > 0 an item also holds ``fmri_window`` (W, V): the brain TRs ``target - W + 1
    .. target``, what the latent decoder reads.

    ``manifest``: a :class:`~giblet.data.manifest.Manifest` or the path of one.
    ``device``: None reads each sample from the memory maps (DataLoader workers can share them);
    a torch device loads every array onto it once, for data that fit in its memory.
    """

    def __init__(self, manifest: str | Path | Manifest, split: str, device: str | torch.device | None = None,
                 brain_window: int = 0):
        self.manifest = as_manifest(manifest)
        self.brain_window = int(brain_window)
        self.split = self.manifest.split
        if split not in self.split.ranges:
            raise KeyError(f"split '{split}' is not in the manifest (has {sorted(self.split.ranges)})")
        self.targets = self.split.targets(split)
        self.device = torch.device(device) if device is not None else None
        arrays = self.manifest.arrays
        self.sources = {role: np.load(arrays[role].path, mmap_mode="r") for role in ROLES if role in arrays}
        self.sources["fmri"] = np.load(arrays["fmri"].path, mmap_mode="r")
        if self.device is not None:
            self.sources = {role: torch.from_numpy(np.array(a)).to(self.device)
                            for role, a in self.sources.items()}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, j: int) -> dict:
        target = self.targets[j]
        start, stop = self.split.window(target)
        item = {"target": target, "fmri": self._tensor(self.sources["fmri"][target], torch.float32),
                "stimulus_trs": torch.arange(start, stop)}
        if self.brain_window:
            item["fmri_window"] = self._tensor(self.sources["fmri"][target - self.brain_window + 1:target + 1],
                                               torch.float32)
        for role, (key, dtype) in ROLES.items():
            if role in self.sources:
                item[key] = self._tensor(self.sources[role][start:stop], dtype)
        return item

    def _tensor(self, value, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(dtype)
        return torch.from_numpy(np.array(value)).to(dtype)
