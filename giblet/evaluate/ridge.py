"""The standard baseline: banded ridge regression from lagged stimulus features to every voxel.

The baseline sees exactly what the model sees, and is scored with the model's own metric:

- the same manifest arrays, the same split (``manifest.split``) and, for each target fMRI TR
  ``t``, the same causal window of stimulus TRs ``split.window(t)`` (see giblet.splits);
- per-voxel Pearson r on the test block from ``giblet.evaluate.metrics.pearson_columns``, as the model's.

Pipeline (``fit_ridge``; the features and the lagging are in giblet.evaluate.ridge_features, the
himalaya solvers in giblet.evaluate.ridge_solvers)::

    manifest --stimulus_features--> X (T, p)            one row per stimulus TR, fitted on fit TRs only
             --lagged-------------> X_lag (N, lag * p)  the window rows of each target, oldest first
             --banded_ridge_predict--> himalaya BandedRidgeCV: one penalty per modality and voxel
                                    (or --ridge_cv_predict--> RidgeCV / KernelRidgeCV, one per voxel),
                                    time-blocked CV on the fit block, prediction of the test block

The banded form is the field's standard encoding baseline: a voxel that follows the frames can
weight them fully and shrink the text and audio features to nothing, which one shared penalty
cannot do. ``write_ridge_baseline`` also scores the ridge decoder (giblet.evaluate.decoding_identification).

Nothing is fitted on test data: the PCA bases, the standardization and the ridge weights use only
the stimulus TRs inside the windows of the fit targets (``window_trs``) and the fMRI at the fit
targets. The split's buffers guarantee those TRs are disjoint from every test window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from giblet.data.manifest import as_manifest
from giblet.evaluate.ridge_features import lagged, stimulus_features, window_trs
from giblet.evaluate.ridge_solvers import DEFAULT_ALPHAS, banded_ridge_predict, ridge_cv_predict
from giblet.splits import blocked_cv

log = logging.getLogger(__name__)

def feature_groups(columns: dict, n_per_tr: int, lag_trs: int) -> np.ndarray:
    """The group (modality index) of every column of :func:`lagged` features: ``(lag_trs * n_per_tr,)``.

    ``columns``: {modality: [start, stop)} within one stimulus TR's ``n_per_tr`` columns (the
    ``info["columns"]`` of ``stimulus_features``); every lag repeats that layout.
    """
    per_tr = np.full(n_per_tr, -1, dtype=np.int64)
    for group, (start, stop) in enumerate(columns.values()):
        per_tr[start:stop] = group
    if (per_tr < 0).any():
        raise ValueError(f"columns {columns} do not cover the {n_per_tr} features")
    return np.tile(per_tr, lag_trs)


@dataclass
class RidgeResult:
    """Test-block predictions of the ridge baseline, in target order.

    ``targets_test`` (N,) fMRI TR indices; ``pred_test``/``true_test`` (N, V) float32;
    ``best_alphas`` (V,) the per-voxel alpha chosen by CV (banded: ``1 / sum_g exp(delta_g)``); ``info``: features, CV, solver, timings.
    """

    targets_test: np.ndarray
    pred_test: np.ndarray
    true_test: np.ndarray
    best_alphas: np.ndarray
    info: dict = field(default_factory=dict)

    def r(self) -> np.ndarray:
        """Per-voxel test Pearson r (V,), with the model evaluation's metric (``metrics.pearson_columns``)."""
        from giblet.evaluate.metrics import pearson_columns

        return pearson_columns(self.pred_test, self.true_test)


def fit_ridge(manifest, alphas=DEFAULT_ALPHAS, fit_blocks=("train", "val"), test_block: str = "test",
              n_components: int | dict = None, modalities=None, n_folds: int = 5, gap: int | None = None,
              solver: str = "banded", voxel_chunk: int = 16384, frame_grid=(6, 8),
              max_code_bins: int = 1024) -> RidgeResult:
    """The ridge baseline on the manifest's split: fit on ``fit_blocks``, predict ``test_block``.

    Steps: ``fit_trs = window_trs(split, fit_blocks)``; ``X = stimulus_features(manifest, fit_trs)``;
    rows ``lagged(X, split, targets)`` for the fit and test targets; fMRI rows at those targets;
    ``solver="banded"`` (the default): :func:`banded_ridge_predict`, one penalty per modality and
    voxel; otherwise ``ridge_cv_predict`` with that solver, one alpha per voxel. Either way the
    hyperparameters are chosen by ``blocked_cv(fit targets, n_folds, gap)`` (``gap`` default
    ``lag_trs``) among ``alphas``. ``voxel_chunk`` applies to the single-penalty solvers.

    Why train + val by default: the model's weights are fitted on train and val picks its stopping
    point, i.e. the model uses the labels of both blocks and never the test block. The ridge uses
    the same labelled data, the CV over it playing val's role (choosing alpha), and refits on all of
    it. This gives the baseline at most slightly more fitting data than the model's weights had, so
    it is the conservative (stronger-baseline) choice; ``fit_blocks=("train",)`` is the strict one.
    Missing blocks in the split are skipped; a missing ``test_block`` raises KeyError.
    """
    t0 = time.perf_counter()
    manifest = as_manifest(manifest)
    split = manifest.split
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
    fmri = np.load(manifest.arrays["fmri"].path, mmap_mode="r")
    Y_fit = np.asarray(fmri[fit_targets], np.float32)
    Y_test = np.asarray(fmri[test_targets], np.float32)
    gap = split.lag_trs if gap is None else gap
    cv = blocked_cv(fit_targets, n_folds, gap)
    if solver == "banded":
        groups = feature_groups(feature_info["columns"], X.shape[1], split.lag_trs)
        pred, deltas, ridge_info = banded_ridge_predict(X_fit, Y_fit, X_test, groups, alphas, cv)
        best = (1.0 / np.exp(deltas.astype(np.float64)).sum(axis=0)).astype(np.float32)
        ridge_info["modalities"] = list(feature_info["columns"])
        ridge_info["log_scaling_median"] = {m: float(np.median(d)) for m, d in zip(feature_info["columns"], deltas)}
    else:
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
    from giblet.evaluate.decoding_identification import ridge_decoder
    from giblet.evaluate.ceiling import by_region, load_ceiling
    from giblet.files import write_json

    manifest = as_manifest(manifest_path)
    result = fit_ridge(manifest)
    ceiling, source, _ = load_ceiling(manifest)
    reliable = M.reliable_voxels(ceiling, reliable_threshold) if ceiling is not None else None
    scores = M.fmri_metrics(result.pred_test, result.true_test, ceiling, reliable, n_null=n_null, seed=seed,
                            min_shift=int(manifest.lag_trs))
    alphas = result.best_alphas
    fmri = np.load(manifest.arrays["fmri"].path, mmap_mode="r")
    out = {"format": "giblet.ridge/1", "manifest": str(manifest_path), "split": result.info["test_block"],
           "n_test": len(result.targets_test), "ceiling": source, "fmri": scores,
           "by_region": by_region(manifest, result.r(), ceiling),
           "alphas": {"median": float(np.median(alphas)), "at_grid_max": float(np.mean(alphas == alphas.max())),
                      "grid": [float(a) for a in DEFAULT_ALPHAS]},
           "info": result.info,
           "decoding_identification": ridge_decoder(manifest, fmri),
           "decoder": "the brain's first 256 principal components (fitted on the fit TRs) -> ridge to each modality's "
                      "descriptor (giblet.evaluate.decoding_identification)"}
    write_json(out_json, out)
    return out
