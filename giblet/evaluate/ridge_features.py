"""Stimulus features of the ridge baseline: one row per stimulus TR, then lagged per target fMRI TR.

Per stimulus TR, each modality is reduced to a few numbers that need no learned model:

- frames: the TR's mean frame on a coarse colour grid plus a within-TR motion-energy map
  (:func:`frame_features`);
- frame features: the mean of the TR's frozen CLIP image embeddings (:func:`text_features` without a
  mask: every frame slot is filled);
- audio: per-codebook histograms of the TR's EnCodec codes (:func:`code_features`);
- text: the masked mean of the TR's annotation embeddings, plus a no-text indicator
  (:func:`text_features`).

Each modality is PCA-reduced and every column z-scored (:func:`stimulus_features`), with every fitted
statistic computed on training stimulus TRs only (:func:`window_trs` of the fit blocks), so no test
stimulus is seen. :func:`lagged` then gives each target the rows of its causal window
``split.window(t)``, exactly the window the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from giblet.data.manifest import as_manifest
from giblet.splits import Split

DEFAULT_COMPONENTS = {"frames": 32, "frame_features": 32, "audio": 32, "text": 32}
MODALITIES = ("frames", "frame_features", "audio", "text")
# Modality -> the manifest array roles it reads.
ROLES = {"frames": ("frames",), "frame_features": ("frame_features",), "audio": ("audio_codes",),
         "text": ("text", "text_mask")}


def window_trs(split: Split, blocks=("train",)) -> np.ndarray:
    """Sorted unique stimulus TRs that appear in the window of any target of ``blocks``."""
    trs = [np.arange(*split.window(t)) for name in blocks for t in split.targets(name)]
    return np.unique(np.concatenate(trs)) if trs else np.zeros(0, np.int64)


def _grid_edges(n: int, bins: int) -> np.ndarray:
    bins = max(1, min(bins, n))
    return np.unique(np.linspace(0, n, bins + 1).round().astype(np.int64))[:-1]


def _pool(a: np.ndarray, axis: int, starts: np.ndarray) -> np.ndarray:
    """Area-average ``a`` along ``axis`` over the bins that start at ``starts``."""
    sums = np.add.reduceat(a, starts, axis=axis)
    counts = np.diff(np.append(starts, a.shape[axis]))
    shape = [1] * a.ndim
    shape[axis] = len(counts)
    return sums / counts.reshape(shape)


def frame_features(frames: np.ndarray, grid=(6, 8), chunk: int = 64) -> np.ndarray:
    """``(T, F, H, W, 3) uint8 -> (T, gh*gw*3 + gh*gw [if F > 1]) float32``, raw (before PCA).

    Per TR: the mean over its F frames, in [0, 1], area-averaged onto a ``gh x gw`` grid per RGB
    channel (``gh*gw*3`` values: coarse colour layout); plus, when F > 1, a motion-energy map: the
    mean absolute difference of consecutive grey frames *within* the TR on the same grid (``gh*gw``
    values). Only the TR's own frames are used, so a TR's row depends on nothing outside it.
    Reads ``chunk`` TRs at a time (works on a memory map).
    """
    n_trs, n_frames, height, width, _ = frames.shape
    rows_h, cols_w = _grid_edges(height, grid[0]), _grid_edges(width, grid[1])
    out = []
    for start in range(0, n_trs, chunk):
        block = np.asarray(frames[start:start + chunk], dtype=np.float32) / 255.0       # (c, F, H, W, 3)
        mean = _pool(_pool(block.mean(axis=1), 1, rows_h), 2, cols_w)                 # (c, gh, gw, 3)
        parts = [mean.reshape(len(block), -1)]
        if n_frames > 1:
            grey = block.mean(axis=-1)                                                # (c, F, H, W)
            motion = np.abs(np.diff(grey, axis=1)).mean(axis=1)                       # (c, H, W)
            parts.append(_pool(_pool(motion, 1, rows_h), 2, cols_w).reshape(len(block), -1))
        out.append(np.concatenate(parts, axis=1))
    return np.concatenate(out).astype(np.float32)


def code_features(codes: np.ndarray, codebook_size: int, max_bins: int = 1024, chunk: int = 256) -> np.ndarray:
    """``(T, n_q, Fa) int -> (T, n_q * B) float32``, raw (before PCA), ``B = min(codebook_size, max_bins)``.

    Per TR and codebook q: the histogram of the Fa codes over the B bins, normalized to frequencies
    (sums to 1 per codebook), then square-rooted (Hellinger embedding: with ~100 codes spread over
    1024 bins the counts are sparse, and the root keeps a few frequent codes from dominating the
    PCA). When the codebook is larger than ``max_bins`` codes are folded ``code % B`` (a fixed hash)
    to bound the width. Raises ValueError on codes outside ``[0, codebook_size)``.
    """
    n_trs, n_q, n_codes = codes.shape
    bins = int(min(codebook_size, max_bins))
    width = n_q * bins
    out = np.empty((n_trs, width), np.float32)
    offsets = (np.arange(n_q) * bins)[None, :, None]
    for start in range(0, n_trs, chunk):
        block = np.asarray(codes[start:start + chunk]).astype(np.int64)
        if block.size and (block.min() < 0 or block.max() >= codebook_size):
            raise ValueError(f"audio codes outside [0, {codebook_size}) in TRs {start}..{start + len(block)}")
        flat = (block % bins + offsets + (np.arange(len(block)) * width)[:, None, None]).ravel()
        counts = np.bincount(flat, minlength=len(block) * width).reshape(len(block), width)
        out[start:start + len(block)] = np.sqrt(counts / n_codes)
    return out


def text_features(text: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(T, k, d), (T, k) bool -> (mean (T, d) float32, no_text (T, 1) float32)``, raw (before PCA).

    The mean of the embeddings in the slots the mask marks valid (all slots without a mask); a TR
    with no valid slot gets zeros and ``no_text = 1`` (the indicator is kept out of the PCA).
    """
    text = np.asarray(text, dtype=np.float32)
    mask = np.ones(text.shape[:2], bool) if mask is None else np.asarray(mask, dtype=bool)
    count = mask.sum(axis=1, keepdims=True)
    mean = (text * mask[..., None]).sum(axis=1) / np.maximum(count, 1)
    return mean.astype(np.float32), (count == 0).astype(np.float32)


@dataclass
class _PCA:
    mean: np.ndarray
    components: np.ndarray          # (n, d)
    explained: np.ndarray           # (n,) fraction of the fit rows' variance

    @classmethod
    def fit(cls, Z: np.ndarray, n: int) -> "_PCA":
        Z = np.asarray(Z, np.float64)
        mean = Z.mean(axis=0)
        _, s, vt = np.linalg.svd(Z - mean, full_matrices=False)
        n = int(max(1, min(n, vt.shape[0], max(len(Z) - 1, 1))))
        vt = vt[:n]
        largest = vt[np.arange(n), np.argmax(np.abs(vt), axis=1)]
        vt = vt * np.where(largest < 0, -1.0, 1.0)[:, None]  # sign-fixed: largest loading positive
        total = (s ** 2).sum()
        return cls(mean, vt, (s[:n] ** 2) / total if total > 0 else np.zeros(n))

    def transform(self, Z: np.ndarray) -> np.ndarray:
        return ((np.asarray(Z, np.float64) - self.mean) @ self.components.T).astype(np.float32)


def stimulus_features(manifest, fit_trs, n_components: int | dict = None, modalities=None, frame_grid=(6, 8),
                      max_code_bins: int = 1024) -> tuple[np.ndarray, dict]:
    """Per-stimulus-TR features ``X (T, p) float32`` and ``info``; every fitted statistic uses ``fit_trs`` only.

    ``manifest``: a :class:`~giblet.data.manifest.Manifest` or its path (array paths resolve from the current directory).
    ``fit_trs``: stimulus TR indices the PCA bases and the standardization are fitted on — pass
    ``window_trs(split, fit_blocks)`` so no test stimulus is seen. ``T`` is the common length of the
    stimulus arrays used. ``modalities``: subset of ``MODALITIES``; default every
    modality the manifest has (a missing one is skipped; asking for a missing one raises
    ValueError). ``n_components``: int for all, or a dict per modality (default 32 each).

    Columns, in this order, per enabled modality:

    - ``frames`` (T, F, H, W, 3) uint8 -> ``frame_features`` on a ``frame_grid`` (default 6 x 8)
      -> (T, 6*8*3 + 6*8) -> PCA to ``n_frames`` components;
    - ``frame_features`` (T, F, d) CLIP image embeddings -> their mean over the F frames (T, d) -> PCA
      to ``n_frame_features``;
    - ``audio`` codes (T, n_q, Fa) -> ``code_features`` (per-codebook sqrt-frequency histograms,
      ``min(codebook_size, max_code_bins)`` bins each) -> (T, n_q * bins) -> PCA to ``n_audio``;
    - ``text`` (T, k, d) + mask (T, k) -> ``text_features`` masked mean (T, d) -> PCA to ``n_text``,
      then the ``no_text`` indicator (T, 1) appended unreduced.

    PCA: centred on the fit rows, SVD of the fit rows, components sign-fixed (largest loading
    positive), ``n = min(requested, dim, len(fit_trs) - 1)``. Finally every column is z-scored with
    the mean and standard deviation over the fit rows (a constant column gets std 1).

    ``info``: ``columns`` {modality: [start, stop)}, ``raw_dims``, ``n_components``,
    ``explained_variance`` (fraction of fit-row variance kept, per modality), ``n_trs``, ``n_fit_trs``.
    """
    manifest = as_manifest(manifest)
    arrays, spec = manifest.arrays, manifest.modalities
    present = [m for m in MODALITIES if all(role in arrays for role in ROLES[m][:1])]
    if modalities is None:
        modalities = present
    missing = [m for m in modalities if m not in present]
    if missing or not modalities:
        raise ValueError(f"modalities {missing or modalities} are not in the manifest (has {present})")
    if n_components is None or isinstance(n_components, dict):
        n_components = {**DEFAULT_COMPONENTS, **(n_components or {})}
    else:
        n_components = {m: int(n_components) for m in MODALITIES}

    load = {role: np.load(arrays[role].path, mmap_mode="r") for m in modalities for role in ROLES[m]
            if role in arrays}
    n_trs = min(a.shape[0] for a in load.values())
    fit_trs = np.unique(np.asarray(fit_trs, dtype=np.int64))
    if len(fit_trs) < 2 or fit_trs[0] < 0 or fit_trs[-1] >= n_trs:
        raise ValueError(f"fit_trs must hold at least 2 stimulus TRs inside [0, {n_trs})")

    blocks, info = [], {"columns": {}, "raw_dims": {}, "n_components": {}, "explained_variance": {},
                        "n_trs": n_trs, "n_fit_trs": len(fit_trs)}
    for m in modalities:
        extra = None
        if m == "frames":
            raw = frame_features(load["frames"][:n_trs], frame_grid)
        elif m == "frame_features":
            raw = text_features(load["frame_features"][:n_trs])[0]
        elif m == "audio":
            size = int(spec.get("audio", {}).get("codebook_size", 1024))
            raw = code_features(load["audio_codes"][:n_trs], size, max_code_bins)
        else:
            mask = load["text_mask"][:n_trs] if "text_mask" in load else None
            raw, extra = text_features(load["text"][:n_trs], mask)
        pca = _PCA.fit(raw[fit_trs], n_components[m])
        part = pca.transform(raw)
        if extra is not None:
            part = np.concatenate([part, extra], axis=1)
        start = sum(b.shape[1] for b in blocks)
        blocks.append(part)
        info["columns"][m] = [start, start + part.shape[1]]
        info["raw_dims"][m] = raw.shape[1]
        info["n_components"][m] = len(pca.components)
        info["explained_variance"][m] = float(pca.explained.sum())
    X = np.concatenate(blocks, axis=1).astype(np.float64)
    mean, std = X[fit_trs].mean(axis=0), X[fit_trs].std(axis=0)
    std[std < 1e-8] = 1.0
    return ((X - mean) / std).astype(np.float32), info


def lagged(X: np.ndarray, split: Split, targets) -> np.ndarray:
    """``X (T, p)`` -> ``(N, lag * p)``: for each target ``t`` the rows ``X[start:stop]`` of its
    window ``(start, stop) = split.window(t)``, concatenated oldest first (columns
    ``[j*p, (j+1)*p)`` hold stimulus TR ``start + j``; the last block is the window's end TR).
    Raises ValueError when a window leaves ``[0, T)``."""
    targets = np.asarray(list(targets), dtype=np.int64)
    starts = np.array([split.window(int(t))[0] for t in targets], dtype=np.int64)
    index = starts[:, None] + np.arange(split.lag_trs)[None, :]                          # (N, lag)
    if index.size and (index.min() < 0 or index.max() >= len(X)):
        raise ValueError(f"a window leaves the {len(X)} stimulus TRs (targets {targets.min()}..{targets.max()})")
    return np.asarray(X)[index].reshape(len(targets), -1)

