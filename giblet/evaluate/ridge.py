"""The standard baseline: banded ridge regression from lagged stimulus features to every voxel.

The baseline sees exactly what the model sees, and is scored with the model's own metric:

- the same manifest arrays, the same split (``manifest.split``) and, for each target fMRI TR
  ``t``, the same causal window of stimulus TRs ``split.window(t)`` (see giblet.splits);
- per-voxel Pearson r on the test block from ``giblet.evaluate.metrics.pearson_columns``, as the model's.

Pipeline (``fit_ridge``; the features and the lagging are in giblet.evaluate.ridge_features)::

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
from giblet.splits import blocked_cv

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = np.logspace(0, 6, 13)


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


def banded_ridge_predict(X_fit: np.ndarray, Y_fit: np.ndarray, X_pred: np.ndarray, groups: np.ndarray,
                         alphas=DEFAULT_ALPHAS, cv=5, n_iter: int = 20, voxel_chunk: int = 65536,
                         random_state: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Banded ridge: one penalty per feature group (modality) and per voxel, chosen by CV.

    himalaya's ``BandedRidgeCV`` (random search over the simplex of group scalings, ``n_iter``
    candidates, each with every alpha in ``alphas``). ``X_fit (n, q)``, ``Y_fit (n, V)``, ``X_pred
    (m, q)``, ``groups (q,)`` int group of each column -> ``(pred (m, V) float32, deltas (n_groups, V)
    float32, info)``: ``deltas`` are himalaya's log group scalings (``exp(deltas[g]) / alpha`` is the
    weight of group g; a group the CV finds useless gets a very negative delta). Every voxel gets its
    own scalings, so a visual voxel can ignore the text features and a language voxel the frames.
    Numpy backend, float32, intercept fitted, ``voxel_chunk`` voxels per fit: each fit costs
    ``n_iter * n_folds`` decompositions of ``X_fit`` whatever its voxel count (himalaya batches the
    voxels inside), so the default fits a 4 mm brain at once.
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV

    set_backend("numpy", on_error="raise")
    X_fit, X_pred = np.ascontiguousarray(X_fit, np.float32), np.ascontiguousarray(X_pred, np.float32)
    Y_fit = np.asarray(Y_fit, np.float32)
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (X_fit.shape[1],):
        raise ValueError(f"groups must give one group per feature column ({X_fit.shape[1]}), got {groups.shape}")
    if not isinstance(cv, int):
        cv = [(np.asarray(a), np.asarray(b)) for a, b in cv]
    n_groups, n_vox = int(groups.max()) + 1, Y_fit.shape[1]
    pred = np.empty((len(X_pred), n_vox), np.float32)
    deltas = np.empty((n_groups, n_vox), np.float32)
    params = {"n_iter": n_iter, "alphas": np.asarray(alphas, np.float32), "progress_bar": False,
              "n_targets_batch": 2048, "n_targets_batch_refit": 2048}
    for start in range(0, n_vox, voxel_chunk):
        stop = min(start + voxel_chunk, n_vox)
        model = BandedRidgeCV(groups=groups, solver="random_search", solver_params=params, fit_intercept=True,
                              cv=cv, random_state=random_state)
        model.fit(X_fit, np.ascontiguousarray(Y_fit[:, start:stop]))
        pred[:, start:stop] = np.asarray(model.predict(X_pred), np.float32)
        deltas[:, start:stop] = np.asarray(model.deltas_, np.float32)
    return pred, deltas, {"solver": "banded", "n_fit": len(X_fit), "n_features": X_fit.shape[1],
                          "n_groups": n_groups, "n_iter": n_iter, "alphas": np.asarray(alphas).tolist()}


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
