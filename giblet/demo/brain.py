"""Simulated fMRI for the demo: region-specific voxel responses with a known noise ceiling.

Every in-mask voxel (nilearn's MNI152 brain mask at the chosen resolution) belongs to one region:

- **visual** (occipital), **auditory** (bilateral superior temporal), **language** (left inferior
  frontal and left temporal): the voxel follows the latents of its modality;
- **null**: the ``null_fraction`` of voxels farthest from every region hub; pure noise.

A region's voxel is ``sqrt(1 - f) * linear + sqrt(f) * nonlinear`` (``f = nonlinear_fraction``):
the linear part is a random mix of the region's HRF-convolved latents; the nonlinear part is a
random mix of HRF-convolved products and thresholds of those latents, *residualized* on the linear
features, so exactly a fraction ``f`` of the signal variance cannot be reached by any linear
function of the latents. Each part is standardized over time, so the noise-free signal has unit
variance.

Each subject adds AR(1) noise (coefficient ``phi``) of variance ``1 / c**2 - 1``, where ``c`` is
the voxel's single-subject ceiling drawn from a spatially smooth field with a U(ceiling_min,
ceiling_max) marginal. Then ``c`` is the expected correlation of a subject's voxel with the
noise-free signal, and the mean of N subjects has the ceiling ``sqrt(N c^2 / (1 + (N - 1) c^2))``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

from giblet.demo.latents import ACTIONS, CHARACTERS, PLACES, Latents
from giblet.timing import convolve_hrf, sample_at_volumes

REGION_NAMES = ("null", "visual", "auditory", "language")
# Hub centres in MNI millimetres; a voxel joins the region of its nearest hub.
REGION_HUBS_MM = {
    "visual": [(0, -88, 2), (-24, -84, 18), (24, -84, 18), (-42, -72, -8), (42, -72, -8)],
    "auditory": [(-54, -22, 8), (54, -22, 8), (-60, -8, -2), (60, -8, -2)],
    "language": [(-48, 22, 12), (-52, -50, 14), (-56, -32, -4)],
}
# Smoothness of the ceiling and baseline-intensity fields.
FIELD_SMOOTHING_MM = 8.0
# BOLD fluctuations around the baseline intensity, as a fraction of it (sd).
PERCENT_SIGNAL = 0.02


def voxel_coordinates_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) voxel indices in C order (nilearn's masking order) and their (V, 3) MNI mm positions."""
    ijk = np.argwhere(mask)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return ijk, xyz


def assign_regions(xyz_mm: np.ndarray, null_fraction: float) -> np.ndarray:
    """Region label per voxel (V,) int8, indices into ``REGION_NAMES``."""
    names = REGION_NAMES[1:]
    distance = np.stack([
        np.min(np.linalg.norm(xyz_mm[:, None, :] - np.array(REGION_HUBS_MM[name])[None], axis=2), axis=1)
        for name in names
    ], axis=1)
    labels = (np.argmin(distance, axis=1) + 1).astype(np.int8)
    nearest = distance.min(axis=1)
    n_null = int(round(null_fraction * len(labels)))
    if n_null:
        labels[np.argsort(nearest, kind="stable")[len(labels) - n_null:]] = 0
    return labels


def smooth_field(rng: np.random.Generator, mask: np.ndarray, resolution_mm: float) -> np.ndarray:
    """A spatially smooth Gaussian random field, sampled at the in-mask voxels -> (V,)."""
    field = gaussian_filter(rng.standard_normal(mask.shape), FIELD_SMOOTHING_MM / resolution_mm)
    return field[mask]


def uniform_by_rank(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values to U(low, high) by their rank: keeps the spatial pattern, fixes the marginal."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return low + (high - low) * (ranks + 0.5) / len(values)


def _standardize(x: np.ndarray) -> np.ndarray:
    """Columns to zero mean, unit variance (ddof=0); constant columns are dropped."""
    sd = x.std(axis=0)
    keep = sd > 1e-8 * max(1.0, float(np.abs(x).max()))
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]


def _pairwise_products(u: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(u.shape[1], k=1)
    return u[:, i] * u[:, j]


def _one_hot(codes: np.ndarray, size: int) -> np.ndarray:
    """(n,) ints, -1 for none -> (n, size) float indicators."""
    out = np.zeros((len(codes), size))
    rows = codes >= 0
    out[np.flatnonzero(rows), codes[rows]] = 1.0
    return out


def neural_features(latents: Latents) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per region, (linear, nonlinear) feature time series on the fine grid (before the HRF)."""
    features = {}
    for name, values in (("visual", latents.visual), ("auditory", latents.auditory)):
        u = (values.astype(np.float64) - 0.5) * np.sqrt(12.0)  # U(0,1) -> zero mean, unit variance
        features[name] = (u, np.concatenate([_pairwise_products(u), np.maximum(u - 0.5, 0.0)], axis=1))
    codes = latents.scene_codes()  # -1 in annotation gaps: no words, no language drive
    character, place, action = (_one_hot(codes[:, k], n) for k, n in
                                enumerate((len(CHARACTERS), len(PLACES), len(ACTIONS))))
    conjunctions = np.concatenate([
        (character[:, :, None] * action[:, None, :]).reshape(len(codes), -1),
        (character[:, :, None] * place[:, None, :]).reshape(len(codes), -1),
    ], axis=1)
    features["language"] = (np.concatenate([character, place, action], axis=1), conjunctions)
    return features


def region_designs(latents: Latents, tr: float, n_trs: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per region, standardized (linear, nonlinear-residual) regressors at the fMRI volumes.

    ``linear`` is (n_trs, k_lin): the HRF-convolved latents; ``nonlinear`` is (n_trs, k_nl): the
    HRF-convolved nonlinear features minus their least-squares fit by [1, linear], so every column
    is exactly orthogonal to the linear regressors.
    """
    designs = {}
    for name, (linear, nonlinear) in neural_features(latents).items():
        lin = _standardize(sample_at_volumes(convolve_hrf(linear, latents.dt), latents.dt, tr, n_trs))
        nl = sample_at_volumes(convolve_hrf(nonlinear, latents.dt), latents.dt, tr, n_trs)
        basis = np.column_stack([np.ones(n_trs), lin])
        nl = nl - basis @ np.linalg.lstsq(basis, nl, rcond=None)[0]
        designs[name] = (lin, _standardize(nl))
    return designs


def noise_free_signal(designs: dict, labels: np.ndarray, nonlinear_fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """(n_trs, V) float32 signal, exactly zero mean and unit variance per non-null voxel; 0 if null."""
    n_trs = next(iter(designs.values()))[0].shape[0]
    signal = np.zeros((n_trs, len(labels)), dtype=np.float32)
    for index, name in enumerate(REGION_NAMES[1:], start=1):
        voxels = np.flatnonzero(labels == index)
        if not len(voxels):
            continue
        lin, nl = designs[name]
        part_lin = _normalize_columns(lin @ rng.standard_normal((lin.shape[1], len(voxels))))
        part_nl = _normalize_columns(nl @ rng.standard_normal((nl.shape[1], len(voxels))))
        mixed = np.sqrt(1 - nonlinear_fraction) * part_lin + np.sqrt(nonlinear_fraction) * part_nl
        signal[:, voxels] = _normalize_columns(mixed)
    return signal


def _normalize_columns(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return x / x.std(axis=0)


def group_ceiling(single: np.ndarray, n_subjects: int) -> np.ndarray:
    """Ceiling of the N-subject mean from the single-subject ceiling (Spearman-Brown on rho = c^2)."""
    rho = np.asarray(single, dtype=np.float64) ** 2
    return np.sqrt(n_subjects * rho / (1 + (n_subjects - 1) * rho))


def ar1_noise(rng: np.random.Generator, shape: tuple[int, int], phi: float) -> np.ndarray:
    """Stationary AR(1) noise along axis 0 with unit marginal variance: x_t = phi x_{t-1} + e_t."""
    innovations = rng.standard_normal(shape).astype(np.float32)
    innovations[0] /= np.sqrt(1 - phi**2)  # start in the stationary distribution
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], innovations, axis=0).astype(np.float32)


def subject_bold(signal: np.ndarray, ceiling: np.ndarray, baseline: np.ndarray, phi: float,
                 rng: np.random.Generator) -> np.ndarray:
    """One subject's masked BOLD (n_trs, V) float32: baseline * (1 + 2% * standardized(signal + noise)).

    Noise variance ``1/c^2 - 1`` gives ``corr(signal, signal + noise) = c`` in expectation. Null
    voxels (ceiling 0) are noise only.
    """
    noise = ar1_noise(rng, signal.shape, phi)
    is_signal = ceiling > 0
    noise_sd = np.ones_like(ceiling)
    noise_sd[is_signal] = np.sqrt(1.0 / ceiling[is_signal] ** 2 - 1.0)
    total = (signal + noise * noise_sd) / np.sqrt(np.where(is_signal, 1.0 + noise_sd**2, 1.0))
    gain = rng.uniform(0.9, 1.1)  # scanner/subject intensity differences; z-scoring removes them
    return (baseline * gain * (1.0 + PERCENT_SIGNAL * total)).astype(np.float32)
