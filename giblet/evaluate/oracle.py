"""The oracle (demo only): ridge regression on the demo's true regressors, the achievable limit.

The demo's brains are random mixes of known regressors (``truth.npz`` ``design_<region>_linear`` and
``design_<region>_nonlinear``: the HRF-convolved latents and their nonlinear features, one row per
fMRI TR) plus noise. A ridge fitted on those regressors, on the same fit blocks as the baseline
and scored on the same test block, is what a model that recovered the latents perfectly could
reach with this much data; the noise ceiling is what it would reach with infinite data. Reporting
the model as a fraction of both says how much of the *achievable* it got.
"""

from __future__ import annotations

import numpy as np

from giblet.data.manifest import Manifest
from giblet.evaluate.ridge_solvers import DEFAULT_ALPHAS, ridge_cv_predict
from giblet.splits import blocked_cv

DESIGN_PREFIX = "design_"


def true_regressors(truth_path) -> np.ndarray | None:
    """Every ``design_*`` array of ``truth.npz`` side by side, ``(n_trs, k)`` float32 (None if it has none)."""
    with np.load(truth_path) as truth:
        names = sorted(n for n in truth.files if n.startswith(DESIGN_PREFIX))
        if not names:
            return None
        return np.concatenate([np.asarray(truth[n], np.float32) for n in names], axis=1)


def oracle_predict(manifest: Manifest, fmri: np.ndarray, fit_blocks=("train", "val"), test_block: str = "test",
                   alphas=DEFAULT_ALPHAS, n_folds: int = 5) -> tuple[np.ndarray, np.ndarray] | None:
    """Test-block predictions of ridge on the true regressors: ``(pred (N, V), true (N, V))`` float32.

    ``fmri``: the manifest's group fMRI ``(T, V)`` (a memory map is fine). The regressors at each
    target TR are the features (they are already convolved with the HRF); one alpha per voxel by
    time-blocked CV over the fit blocks (purged by ``lag_trs``, as the baseline's). None when the
    manifest has no truth file or the truth has no regressors (real data).
    """
    if "truth" not in manifest.arrays:
        return None
    X = true_regressors(manifest.arrays["truth"].path)
    if X is None:
        return None
    split = manifest.split
    fit = np.concatenate([np.asarray(split.targets(b)) for b in fit_blocks if b in split.ranges])
    test = np.asarray(split.targets(test_block))
    if max(fit.max(), test.max()) >= len(X):
        raise ValueError(f"{manifest.arrays['truth'].path}: {len(X)} TRs of regressors, the split needs "
                         f"{max(fit.max(), test.max()) + 1}")
    mean, sd = X[fit].mean(axis=0), X[fit].std(axis=0)
    X = (X - mean) / np.where(sd > 0, sd, 1.0)
    pred, _, _ = ridge_cv_predict(X[fit], np.asarray(fmri[fit], np.float32), X[test], alphas,
                                  blocked_cv(fit, n_folds, split.lag_trs), solver="primal")
    return pred, np.asarray(fmri[test], np.float32)
