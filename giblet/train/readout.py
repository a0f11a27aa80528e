"""The fMRI layer refitted in closed form: per-voxel ridge over the model's learned features.

Adam fits the fMRI layer (``n_features -> V``, tens of thousands of voxels) from a few hundred to a
few thousand samples, one noisy gradient at a time, with one learning rate for every voxel. Once the
encoders are trained, the best linear readout of their features is a ridge regression per voxel,
with the penalty chosen per voxel by time-blocked cross-validation: exact, and a few seconds of
linear algebra. :func:`fit_ridge_readout` computes it on the training and validation windows and
writes it into the model's ``to_fmri`` layer, so ``model.pt`` keeps its format and every reader
of it gets the refitted layer.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from giblet.splits import blocked_cv

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-1, 5, 13)


@torch.no_grad()
def window_features(model, dataset, collate, device: str, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``model.features`` and the measured fMRI of every window of ``dataset``: ``(N, n_features)``, ``(N, V)``."""
    was_training = model.training
    model.eval()
    features, fmri = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate(dataset, list(range(start, min(start + batch_size, len(dataset)))), device)
        features.append(model.features(batch).float().cpu().numpy())
        fmri.append(batch["fmri"].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(features), np.concatenate(fmri)


def ridge_weights(X: np.ndarray, Y: np.ndarray, targets: np.ndarray, lag_trs: int, alphas=ALPHAS,
                  n_folds: int = 5, voxel_chunk: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel ridge from features ``X (N, q)`` to ``Y (N, V)``, as a linear layer on the raw features.

    Features are centred on these rows but not rescaled: they come out of normalization layers on
    comparable scales, and rescaling a nearly constant feature to unit variance would turn its
    weight into a huge number (the prediction is the same, the layer is not). One alpha per voxel
    among ``alphas`` by ``blocked_cv(targets, n_folds, gap=lag_trs)``; himalaya's ``RidgeCV`` (numpy
    backend, SVD solver, intercept fitted). Returns ``weight (V, q)``, ``bias (V,)`` float32 such
    that ``X @ weight.T + bias`` is the ridge prediction, and the chosen ``alphas (V,)``.
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    set_backend("numpy", on_error="raise")
    X = np.asarray(X, np.float64)
    mean = X.mean(axis=0)
    Z = (X - mean).astype(np.float32)
    cv = blocked_cv(targets, n_folds, lag_trs)
    n_voxels = Y.shape[1]
    weight = np.empty((n_voxels, X.shape[1]), np.float32)
    bias = np.empty(n_voxels, np.float32)
    best = np.empty(n_voxels, np.float32)
    for start in range(0, n_voxels, voxel_chunk):
        stop = min(start + voxel_chunk, n_voxels)
        ridge = RidgeCV(alphas=np.asarray(alphas, np.float32), fit_intercept=True, cv=cv, solver="svd")
        ridge.fit(Z, np.ascontiguousarray(Y[:, start:stop], np.float32))
        coef = np.asarray(ridge.coef_, np.float64).T                           # (v, q)
        weight[start:stop] = coef
        bias[start:stop] = np.asarray(ridge.intercept_, np.float64) - coef @ mean
        best[start:stop] = np.asarray(ridge.best_alphas_)
    return weight, bias, best


def fit_ridge_readout(model, datasets: dict, collate, device: str, lag_trs: int, batch_size: int = 64) -> dict:
    """Refit ``model.to_fmri`` by per-voxel ridge on the windows of ``datasets`` ({block: WindowDataset}).

    Returns a summary: blocks and samples used, the median alpha, and the fraction of voxels at the
    top of the alpha grid (voxels the features cannot predict: their weights shrink to ~0).
    """
    parts = [window_features(model, ds, collate, device, batch_size) for ds in datasets.values()]
    targets = np.concatenate([np.asarray(ds.targets) for ds in datasets.values()])
    X, Y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    weight, bias, alphas = ridge_weights(X, Y, targets, lag_trs)
    layer = model.to_fmri
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight).to(layer.weight))
        layer.bias.copy_(torch.from_numpy(bias).to(layer.bias))
    summary = {"readout": "ridge", "blocks": list(datasets), "n_samples": int(len(X)), "n_features": int(X.shape[1]),
               "alpha_median": float(np.median(alphas)), "at_alpha_max": float(np.mean(alphas == np.max(ALPHAS)))}
    log.info("fMRI layer refitted by per-voxel ridge: %s", summary)
    return summary


__all__ = ["fit_ridge_readout", "ridge_weights", "window_features"]
