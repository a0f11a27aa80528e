"""The standard baseline: ridge regression from lagged stimulus features to every voxel.

The baseline sees exactly what the model sees, and is scored with the model's own metric:

- the same manifest arrays, the same split (``manifest["split"]``) and, for each target fMRI TR
  ``t``, the same causal window of stimulus TRs ``split.window(t)`` (see giblet.splits);
- per-voxel Pearson r on the test block from ``giblet.model.pearson_per_voxel``.

Pipeline (``fit_ridge``)::

    manifest --stimulus_features--> X (T, p)            one row per stimulus TR, fitted on fit TRs only
             --lagged-------------> X_lag (N, lag * p)  the window rows of each target, oldest first
             --ridge_cv_predict---> himalaya RidgeCV / KernelRidgeCV, one alpha per voxel,
                                    time-blocked CV on the fit block, prediction of the test block

Nothing is fitted on test data: the PCA bases, the standardization and the ridge weights use only
the stimulus TRs inside the windows of the fit targets (``window_trs``) and the fMRI at the fit
targets. The split's buffers guarantee those TRs are disjoint from every test window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from giblet.data.assemble import load_manifest
from giblet.splits import Split

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = np.logspace(0, 6, 13)
DEFAULT_COMPONENTS = {"frames": 32, "audio": 32, "text": 32}
MODALITIES = ("frames", "audio", "text")
# Modality -> the manifest array roles it reads.
ROLES = {"frames": ("frames",), "audio": ("audio_codes",), "text": ("text", "text_mask")}


# ---------------------------------------------------------------------------------------------------
# Stimulus features, one row per stimulus TR


def window_trs(split: Split, blocks=("train",)) -> np.ndarray:
    """Sorted unique stimulus TRs that appear in the window of any target of ``blocks``."""
    trs = [np.arange(*split.window(t)) for name in blocks for t in split.targets(name)]
    return np.unique(np.concatenate(trs)) if trs else np.zeros(0, np.int64)


def _as_manifest(manifest) -> dict:
    return manifest if isinstance(manifest, dict) else load_manifest(manifest)


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

    ``manifest``: a manifest dict or path (array paths resolve from the current directory).
    ``fit_trs``: stimulus TR indices the PCA bases and the standardization are fitted on — pass
    ``window_trs(split, fit_blocks)`` so no test stimulus is seen. ``T`` is the common length of the
    stimulus arrays used. ``modalities``: subset of ``("frames", "audio", "text")``; default every
    modality the manifest has (a missing one is skipped; asking for a missing one raises
    ValueError). ``n_components``: int for all, or a dict per modality (default 32 each).

    Columns, in this order, per enabled modality:

    - ``frames`` (T, F, H, W, 3) uint8 -> ``frame_features`` on a ``frame_grid`` (default 6 x 8)
      -> (T, 6*8*3 + 6*8) -> PCA to ``n_frames`` components;
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
    manifest = _as_manifest(manifest)
    arrays, spec = manifest["arrays"], manifest.get("modalities", {})
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

    load = {role: np.load(arrays[role]["path"], mmap_mode="r") for m in modalities for role in ROLES[m]
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


# ---------------------------------------------------------------------------------------------------
# Ridge


def blocked_cv(targets, n_folds: int = 5, gap: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Time-respecting CV over fit samples (rows in the order of ``targets``, target fMRI TRs).

    The samples sorted by target are cut into ``n_folds`` contiguous folds (no shuffling). For each
    fold, the training rows are those whose target lies more than ``gap`` TRs before the fold's
    first target or after its last: with ``gap >= lag - 1`` no training window shares a stimulus
    TR with a validation window, and the purge also absorbs the fMRI's short autocorrelation.
    Returns ``[(train_rows, val_rows), ...]`` for himalaya/sklearn ``cv=``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(targets, kind="stable")
    folds = []
    for rows in np.array_split(order, n_folds):
        if len(rows) == 0:
            continue
        lo, hi = targets[rows].min(), targets[rows].max()
        train = np.flatnonzero((targets < lo - gap) | (targets > hi + gap))
        if len(train) == 0:
            raise ValueError(f"fold [{lo}, {hi}] leaves no training samples with gap {gap}")
        folds.append((train, np.sort(rows)))
    return folds


def ridge_cv_predict(X_fit: np.ndarray, Y_fit: np.ndarray, X_pred: np.ndarray, alphas=DEFAULT_ALPHAS, cv=5,
                     solver: str = "auto", voxel_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit himalaya ridge with one alpha per target column by CV, predict ``X_pred``.

    ``X_fit (n, q)``, ``Y_fit (n, V)``, ``X_pred (m, q)`` -> ``(pred (m, V) float32, best_alphas (V,),
    info)``. Numpy backend, float32, intercept fitted (``fit_intercept=True``). ``solver``:
    ``"primal"`` (``himalaya.ridge.RidgeCV``, SVD solver), ``"kernel"`` (``KernelRidgeCV`` with a
    linear kernel: same estimator, cheaper when q > n), or ``"auto"`` (kernel when q > n). ``cv``:
    an int (KFold without shuffling) or a list of ``(train_rows, val_rows)`` (see ``blocked_cv``).
    The voxels are fitted ``voxel_chunk`` at a time; only predictions and alphas are kept, so memory
    stays bounded for 70k voxels. The CV score is himalaya's default (negative squared error).
    """
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    set_backend("numpy", on_error="raise")
    X_fit, X_pred = np.ascontiguousarray(X_fit, np.float32), np.ascontiguousarray(X_pred, np.float32)
    Y_fit = np.asarray(Y_fit, np.float32)
    alphas = np.asarray(alphas, np.float32)
    if solver == "auto":
        solver = "kernel" if X_fit.shape[1] > X_fit.shape[0] else "primal"
    if solver not in ("primal", "kernel"):
        raise ValueError(f"solver must be 'auto', 'primal' or 'kernel', not {solver!r}")
    if not isinstance(cv, int):
        cv = [(np.asarray(a), np.asarray(b)) for a, b in cv]
    n_vox = Y_fit.shape[1]
    pred = np.empty((len(X_pred), n_vox), np.float32)
    best = np.empty(n_vox, np.float32)
    for start in range(0, n_vox, voxel_chunk):
        stop = min(start + voxel_chunk, n_vox)
        if solver == "kernel":
            model = KernelRidgeCV(alphas=alphas, kernel="linear", fit_intercept=True, cv=cv)
        else:
            model = RidgeCV(alphas=alphas, fit_intercept=True, cv=cv, solver="svd")
        model.fit(X_fit, np.ascontiguousarray(Y_fit[:, start:stop]))
        pred[:, start:stop] = np.asarray(model.predict(X_pred), np.float32)
        best[start:stop] = np.asarray(model.best_alphas_, np.float32)
    return pred, best, {"solver": solver, "n_fit": len(X_fit), "n_features": X_fit.shape[1],
                        "alphas": alphas.tolist()}


@dataclass
class RidgeResult:
    """Test-block predictions of the ridge baseline, in target order.

    ``targets_test`` (N,) fMRI TR indices; ``pred_test``/``true_test`` (N, V) float32;
    ``best_alphas`` (V,) the per-voxel alpha chosen by CV; ``info``: features, CV, solver, timings.
    """

    targets_test: np.ndarray
    pred_test: np.ndarray
    true_test: np.ndarray
    best_alphas: np.ndarray
    info: dict = field(default_factory=dict)

    def r(self) -> np.ndarray:
        """Per-voxel test Pearson r (V,), with the model's metric ``giblet.model.pearson_per_voxel``."""
        import torch

        from giblet.model.losses import pearson_per_voxel

        return pearson_per_voxel(torch.from_numpy(self.pred_test), torch.from_numpy(self.true_test)).numpy()


def fit_ridge(manifest, alphas=DEFAULT_ALPHAS, fit_blocks=("train", "val"), test_block: str = "test",
              n_components: int | dict = None, modalities=None, n_folds: int = 5, gap: int | None = None,
              solver: str = "auto", voxel_chunk: int = 16384, frame_grid=(6, 8),
              max_code_bins: int = 1024) -> RidgeResult:
    """The ridge baseline on the manifest's split: fit on ``fit_blocks``, predict ``test_block``.

    Steps: ``fit_trs = window_trs(split, fit_blocks)``; ``X = stimulus_features(manifest, fit_trs)``;
    rows ``lagged(X, split, targets)`` for the fit and test targets; fMRI rows at those targets;
    ``ridge_cv_predict`` with ``blocked_cv(fit targets, n_folds, gap)`` (``gap`` default
    ``lag_trs``) choosing one alpha per voxel among ``alphas``.

    Why train + val by default: the model's weights are fitted on train and val picks its stopping
    point, i.e. the model uses the labels of both blocks and never the test block. The ridge uses
    the same labelled data, the CV over it playing val's role (choosing alpha), and refits on all of
    it. This gives the baseline at most slightly more fitting data than the model's weights had, so
    it is the conservative (stronger-baseline) choice; ``fit_blocks=("train",)`` is the strict one.
    Missing blocks in the split are skipped; a missing ``test_block`` raises KeyError.
    """
    t0 = time.perf_counter()
    manifest = _as_manifest(manifest)
    split = Split.from_dict(manifest["split"])
    if test_block not in split.ranges:
        raise KeyError(f"split '{test_block}' is not in the manifest (has {sorted(split.ranges)})")
    fit_blocks = tuple(b for b in fit_blocks if b in split.ranges and b != test_block)
    if not fit_blocks:
        raise KeyError(f"none of the fit blocks is in the manifest (has {sorted(split.ranges)})")
    fit_targets = np.concatenate([np.asarray(split.targets(b)) for b in fit_blocks])
    test_targets = np.asarray(split.targets(test_block))
    fit_trs = window_trs(split, fit_blocks)
    overlap = np.intersect1d(fit_trs, window_trs(split, (test_block,)))
    if len(overlap):
        raise ValueError(f"fit and {test_block} windows share stimulus TRs {overlap[:5].tolist()}...: "
                         "the split's buffer is too small")

    X, feature_info = stimulus_features(manifest, fit_trs, n_components, modalities, frame_grid, max_code_bins)
    t_features = time.perf_counter()
    X_fit, X_test = lagged(X, split, fit_targets), lagged(X, split, test_targets)
    fmri = np.load(manifest["arrays"]["fmri"]["path"], mmap_mode="r")
    Y_fit = np.asarray(fmri[fit_targets], np.float32)
    Y_test = np.asarray(fmri[test_targets], np.float32)
    gap = split.lag_trs if gap is None else gap
    cv = blocked_cv(fit_targets, n_folds, gap)
    pred, best, ridge_info = ridge_cv_predict(X_fit, Y_fit, X_test, alphas, cv, solver, voxel_chunk)
    t_end = time.perf_counter()
    info = {"features": feature_info, "ridge": ridge_info, "fit_blocks": list(fit_blocks),
            "test_block": test_block, "n_folds": len(cv), "gap": gap,
            "seconds": {"features": t_features - t0, "ridge": t_end - t_features, "total": t_end - t0}}
    result = RidgeResult(test_targets, pred, Y_test, best, info)
    r = result.r()
    info["r_test"] = {"mean": float(r.mean()), "median": float(np.median(r)),
                      "p90": float(np.percentile(r, 90))}
    log.info("ridge baseline: %d fit / %d %s samples, %d features, test r mean %.4f (%.1f s)", len(X_fit),
             len(X_test), test_block, X_fit.shape[1], info["r_test"]["mean"], info["seconds"]["total"])
    return result


def write_ridge_baseline(manifest_path, out_json, reliable_threshold: float = 0.3, n_null: int = 100,
                         seed: int = 0) -> dict:
    """Fit the baseline and score it with exactly the model's test metrics (giblet.evaluate.metrics);
    writes ``out_json`` (the ``fmri`` section has the same keys as metrics.json's)."""
    from giblet.evaluate import metrics as M
    from giblet.evaluate.evaluate import load_ceiling
    from giblet.files import write_json

    manifest = _as_manifest(manifest_path)
    result = fit_ridge(manifest)
    ceiling, source, _ = load_ceiling(manifest)
    reliable = M.reliable_voxels(ceiling, reliable_threshold) if ceiling is not None else None
    scores = M.fmri_metrics(result.pred_test, result.true_test, ceiling, reliable, n_null=n_null, seed=seed,
                            min_shift=int(manifest["lag_trs"]))
    alphas = result.best_alphas
    out = {"format": "giblet.ridge/1", "manifest": str(manifest_path), "split": result.info["test_block"],
           "n_test": len(result.targets_test), "ceiling": source, "fmri": scores,
           "alphas": {"median": float(np.median(alphas)), "at_grid_max": float(np.mean(alphas == alphas.max())),
                      "grid": [float(a) for a in DEFAULT_ALPHAS]},
           "info": result.info}
    write_json(out_json, out)
    return out
