"""``reconstructions/decoded_test.npz``: every test row's decoded stimulus, its one writer.

``plot_reconstructions`` writes it beside the figures, so that anyone can score the reconstructions
without the model (``benchmarks/quality.py`` does: ``frame_grid_identification`` of its frames
against the manifest's true frames at ``trs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DECODED_NAME = "decoded_test.npz"


def write_decoded(path: Path, stim_trs: np.ndarray, decoded: dict) -> list[str]:
    """``decoded_test.npz``: every test row's decoded stimulus, to score without the model.

    ``trs`` (N,) int64: the movie (stimulus) TR each row reconstructs; ``frames`` (N, F, H, W, 3) uint8;
    ``codes`` (N, n_q, Fa) int16 (the most probable code of each frame); ``text`` (N, k, d) float32 (and
    ``frame_features`` (N, F, d) float32), for the modalities the model decodes. Returns its keys.
    """
    arrays = {"trs": np.asarray(stim_trs, np.int64)}
    if "frames" in decoded:
        arrays["frames"] = np.clip(np.round(np.asarray(decoded["frames"]) * 255.0), 0, 255).astype(np.uint8)
    if "code_logits" in decoded:
        arrays["codes"] = np.asarray(decoded["code_logits"]).argmax(-1).astype(np.int16)
    for key in ("text", "frame_features"):
        if key in decoded:
            arrays[key] = np.asarray(decoded[key], np.float32)
    np.savez_compressed(path, **arrays)
    return sorted(arrays)


__all__ = ["DECODED_NAME", "write_decoded"]
