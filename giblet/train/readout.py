"""The fMRI layer refitted in closed form: per-voxel (banded) ridge over the model's learned features.

Adam fits the fMRI layer (``n_features -> V``, tens of thousands of voxels) from a few hundred to a
few thousand samples, one noisy gradient at a time, with one learning rate for every voxel. Once the
encoders are trained, the best linear readout of their features is a ridge regression per voxel,
with the penalty chosen per voxel by time-blocked cross-validation: exact, and a few seconds of
linear algebra. :func:`fit_ridge_readout` computes it on the training and validation windows and
writes it into the model's ``to_fmri`` layer, so ``model.pt`` keeps its format and every reader
of it gets the refitted layer.

Two things make the features worth reading:

- **Batch-norm statistics of the final weights** (:func:`recalibrate_batch_norm`). Training keeps a
  running average with momentum 0.1, so after a few dozen steps (the demo trains for ~50) the
  running statistics still carry their initial variance of 1: a modality whose per-TR features
  vary little (the demo's text embeddings: variance ~5e-4) comes out of the eval-mode network ~20x
  too small, and one penalty for all features then shrinks it away (the demo's language voxels:
  r 0.06 instead of 0.12). The statistics are recomputed over the training windows with the
  final weights ("precise BN", Wu & Johnson 2021).
- **One penalty per modality and voxel** (``banded``, :func:`banded_ridge_weights`): a language
  voxel ignores the frames' features and a visual voxel the text's, as the banded ridge baseline
  does (on the 4-subject demo: fraction of the ceiling 0.375 -> 0.425 over one penalty).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from giblet.splits import blocked_cv

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-1, 5, 13)
# Band scalings himalaya's random search tries per penalty (each costs one decomposition per fold).
BANDED_ITERATIONS = 20


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


def banded_ridge_weights(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, targets: np.ndarray, lag_trs: int,
                         alphas=ALPHAS, n_folds: int = 5, n_iter: int = BANDED_ITERATIONS,
                         random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel banded ridge from ``X (N, q)`` to ``Y (N, V)``: one penalty per feature group and voxel.

    ``groups (q,)`` int: the band of each column. himalaya's ``BandedRidgeCV`` (random search over
    the band scalings, ``n_iter`` candidates, each with every alpha; time-blocked CV as
    :func:`ridge_weights`) on the centred features. Returns ``weight (V, q)``, ``bias (V,)`` float32
    such that ``X @ weight.T + bias`` is its prediction, and himalaya's log band scalings
    ``deltas (n_groups, V)`` (a band the CV finds useless for a voxel gets a very negative delta).
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV

    set_backend("numpy", on_error="raise")
    X = np.asarray(X, np.float64)
    mean = X.mean(axis=0)
    # warn: himalaya suggests its kernel solver when samples < features (the demo); the primal one
    # gives the linear layer's weights directly.
    params = {"n_iter": n_iter, "alphas": np.asarray(alphas, np.float32), "progress_bar": False,
              "n_targets_batch": 2048, "n_targets_batch_refit": 2048, "warn": False}
    ridge = BandedRidgeCV(groups=np.asarray(groups, np.int64), solver="random_search", solver_params=params,
                          fit_intercept=True, cv=blocked_cv(targets, n_folds, lag_trs), random_state=random_state)
    ridge.fit((X - mean).astype(np.float32), np.ascontiguousarray(Y, np.float32))
    coef = np.asarray(ridge.coef_, np.float64).T                                   # (V, q)
    bias = np.asarray(ridge.intercept_, np.float64) - coef @ mean
    return coef.astype(np.float32), bias.astype(np.float32), np.asarray(ridge.deltas_, np.float32)


@torch.no_grad()
def recalibrate_batch_norm(model, dataset, collate, device: str, batch_size: int = 64) -> int:
    """Recompute every batch-norm layer's running statistics over ``dataset``'s windows with the current
    weights (an exact average over the batches, not a momentum average); returns the batches seen.

    Batches are consecutive windows, as training's forward passes see them; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    n_batches = 0
    for start in range(0, len(dataset), batch_size):
        model.features(collate(dataset, list(range(start, min(start + batch_size, len(dataset)))), device))
        n_batches += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()
    return n_batches


@torch.no_grad()
def fit_ridge_readout(model, datasets: dict, collate, device: str, lag_trs: int, batch_size: int = 64,
                      banded: bool = True) -> dict:
    """Refit ``model.to_fmri`` by per-voxel ridge on the windows of ``datasets`` ({block: WindowDataset},
    the training block first), after :func:`recalibrate_batch_norm` on the training block.

    ``banded``: one penalty per modality (``model.feature_groups()``) and voxel; a model whose features
    do not split by modality falls back to one penalty. Returns a summary: blocks and samples used,
    the median alpha (one penalty) or the median log scaling per modality (banded), and the batches
    the batch-norm statistics were recomputed on.
    """
    blocks = list(datasets)
    n_batches = recalibrate_batch_norm(model, datasets[blocks[0]], collate, device, batch_size)
    parts = [window_features(model, ds, collate, device, batch_size) for ds in datasets.values()]
    targets = np.concatenate([np.asarray(ds.targets) for ds in datasets.values()])
    X, Y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    groups = model.feature_groups() if banded else None
    summary = {"blocks": blocks, "n_samples": int(len(X)), "n_features": int(X.shape[1]),
               "batch_norm": {"recalibrated_on": blocks[0], "batches": n_batches}}
    if groups is not None:
        weight, bias, deltas = banded_ridge_weights(X, Y, groups, targets, lag_trs)
        summary |= {"readout": "banded",
                    "log_scaling_median": {name: float(np.median(d)) for name, d in zip(model.encoders, deltas)}}
    else:
        weight, bias, alphas = ridge_weights(X, Y, targets, lag_trs)
        summary |= {"readout": "ridge", "alpha_median": float(np.median(alphas)),
                    "at_alpha_max": float(np.mean(alphas == np.max(ALPHAS)))}
    layer = model.to_fmri
    layer.weight.copy_(torch.from_numpy(weight).to(layer.weight))
    layer.bias.copy_(torch.from_numpy(bias).to(layer.bias))
    log.info("fMRI layer refitted by per-voxel %s ridge: %s", summary["readout"], summary)
    return summary


__all__ = ["banded_ridge_weights", "fit_ridge_readout", "recalibrate_batch_norm", "ridge_weights", "window_features"]
