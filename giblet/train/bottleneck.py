"""The brain's principal components on the training block, fixed in the model where it reads or predicts the brain.

- The decoders' first layer (:func:`fix_bottleneck_to_pca`); the latent decoder's basis is fitted
  with its map, on the brain it is fitted to (:func:`fix_decoder_basis`, called by
  :func:`giblet.train.latent_decoder.fit_latent_decoder`).
- With ``fmri_rank``, the basis through which the encoders predict the brain in training
  (:func:`fix_fmri_basis`; see ``BrainAutoencoder``).

The decoders read the whole brain (tens of thousands of voxels) and learn from a few hundred to a
few thousand TRs; a free ``V -> hidden`` layer fitted by Adam on so few samples mostly fits noise.
Decoding models in the field reduce the brain first (PCA) and fit only what follows; here the
bottleneck's linear layer *is* that reduction: its rows are the training block's first ``hidden``
principal components, scaled so each output has unit variance on the training block, and it is not
trained. Only the heads after it learn.
"""

from __future__ import annotations

import numpy as np
import torch


def principal_components(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows (n, V)`` -> ``mean (V,)``, the first ``k`` components ``(k', V)`` (unit norm, sign-fixed:
    the largest loading positive; ``k' = min(k, n - 1, V)``) and each component's sd over the rows ``(k',)``."""
    rows = np.asarray(rows, np.float64)
    mean = rows.mean(axis=0)
    _, s, vt = np.linalg.svd(rows - mean, full_matrices=False)
    k = min(k, len(rows) - 1, rows.shape[1])
    vt, s = vt[:k], s[:k]
    vt *= np.where(vt[np.arange(k), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return mean, vt, s / np.sqrt(len(rows))


def fix_principal_components(model, fmri_rows: np.ndarray) -> dict:
    """One PCA of the training block's brain ``fmri_rows`` (n, V) for every fixed place (module docstring).
    Returns a summary: the components kept and the fraction of variance they explain."""
    width = 0 if model.latent_decoding else model.bottleneck.linear.out_features
    pca = principal_components(fmri_rows, max(width, model.fmri_rank))
    if model.fmri_rank:
        fix_fmri_basis(model, pca)
    if model.latent_decoding:
        return _summary(fmri_rows, pca, model.fmri_rank)
    return fix_bottleneck_to_pca(model, fmri_rows, pca)


def _summary(fmri_rows: np.ndarray, pca: tuple[np.ndarray, np.ndarray, np.ndarray], k: int) -> dict:
    """``{"n_components", "explained"}`` of the first ``k`` components of ``pca`` over ``fmri_rows``."""
    mean, components, sd = pca
    total = float(np.square(np.asarray(fmri_rows, np.float64) - mean).sum()) / len(fmri_rows)
    k = min(k, len(components))
    return {"n_components": k, "explained": float(np.square(sd[:k]).sum() / total) if total else 0.0}


@torch.no_grad()
def fix_decoder_basis(decoder, fmri_rows: np.ndarray, pca: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """Set the latent decoder's ``basis`` to the first ``n_components`` unit-norm components of ``pca``
    (zero beyond ``n - 1``) and ``brain_mean`` to its mean. Returns a summary."""
    mean, components, _ = pca
    components = components[:decoder.n_components]
    basis = np.zeros(tuple(decoder.basis.shape))
    basis[:len(components)] = components
    decoder.basis.copy_(torch.from_numpy(basis))
    decoder.brain_mean.copy_(torch.from_numpy(mean))
    return _summary(fmri_rows, pca, decoder.n_components)


@torch.no_grad()
def fix_fmri_basis(model, pca: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Set ``model.fmri_basis`` to the first ``fmri_rank`` components of ``pca`` (``principal_components``'
    output), each scaled by its sd so ``to_components`` predicts unit-variance scores."""
    mean, components, sd = pca
    k = min(model.fmri_rank, len(components))
    basis = np.zeros((model.fmri_rank, len(mean)))
    basis[:k] = components[:k] * sd[:k, None]
    model.fmri_basis.copy_(torch.from_numpy(basis))
    model.fmri_mean.copy_(torch.from_numpy(mean))


@torch.no_grad()
def fix_bottleneck_to_pca(model, fmri_rows: np.ndarray, pca: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """Set ``model.bottleneck.linear`` to the whitened principal components of ``fmri_rows`` (n, V) and
    freeze it; components beyond ``n - 1`` (fewer rows than ``hidden``) are zero. ``pca``:
    ``principal_components(fmri_rows, k)`` with ``k >= hidden``. Returns a summary."""
    linear = model.bottleneck.linear
    mean, components, sd = pca
    components, sd = components[:linear.out_features], sd[:linear.out_features]
    weight = np.zeros((linear.out_features, linear.in_features))
    weight[:len(components)] = components / np.maximum(sd, 1e-8)[:, None]
    linear.weight.copy_(torch.from_numpy(weight))
    linear.bias.copy_(torch.from_numpy(-weight @ mean))
    linear.requires_grad_(False)
    total = float(np.square(np.asarray(fmri_rows, np.float64) - mean).sum()) / len(fmri_rows)
    return {"n_components": len(components), "explained": float(np.square(sd).sum() / total) if total else 0.0}
