"""The noise ceiling that encoding scores are measured against, and what the demo's truth adds to it.

The model's evaluation and the ridge baseline both read it from here, so the baseline needs nothing
of the model's code (editing the model does not rerun the baseline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from giblet.data.manifest import Manifest
from giblet.errors import InputError
from giblet.evaluate import metrics as M

CEILING_EXACT = "exact (demo truth)"
CEILING_ISC = "ISC estimate"


def _load_vector(path: Path, key: str, n_voxels: int) -> np.ndarray:
    if not path.exists():
        raise InputError(path, "listed in the manifest but missing: rerun its stage")
    try:
        with np.load(path) as data:
            values = np.asarray(data[key], dtype=np.float64)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(path, f"has no readable '{key}' array ({type(error).__name__}: {error})") from error
    if values.shape != (n_voxels,):
        raise InputError(path, f"'{key}' has shape {values.shape}, expected ({n_voxels},) (the manifest's voxels)")
    return values


def load_ceiling(manifest: Manifest) -> tuple[np.ndarray | None, str, str | None]:
    """The noise ceiling to use: (ceiling (V,) or None, its source, its path).

    The demo's exact ceiling of the group mean (``truth.npz`` ``ceiling_group``) when the manifest
    lists a truth file, else the ISC estimate (``ceiling.npz`` ``group``), else none.
    """
    arrays, n_voxels = manifest.arrays, int(manifest.n_voxels)
    if "truth" in arrays:
        path = arrays["truth"].path
        return _load_vector(path, "ceiling_group", n_voxels), CEILING_EXACT, str(path)
    if "ceiling" in arrays:
        path = arrays["ceiling"].path
        return _load_vector(path, "group", n_voxels), CEILING_ISC, str(path)
    return None, "none", None


def by_region(manifest: Manifest, r: np.ndarray, ceiling: np.ndarray | None) -> dict | None:
    """Demo only: mean r (and ceiling) per simulated region (``truth.npz`` ``region``/``region_names``)."""
    if "truth" not in manifest.arrays:
        return None
    with np.load(manifest.arrays["truth"].path) as truth:
        if "region" not in truth.files or "region_names" not in truth.files:
            return None
        region, names = np.asarray(truth["region"]), [str(n) for n in truth["region_names"]]
    if region.shape != r.shape:
        return None
    out = {}
    for code, name in enumerate(names):
        where = region == code
        if where.any():
            out[name] = {"n_voxels": int(where.sum()), "r_mean": float(r[where].mean()),
                         "ceiling_mean": float(ceiling[where].mean()) if ceiling is not None else None}
    return out


def realised_ceiling(manifest: Manifest, targets, fmri_true: np.ndarray, ceiling: np.ndarray | None,
                     reliable: np.ndarray | None) -> dict | None:
    """Demo only: the ceiling this test block actually offers beside the expected one.

    The expected ceiling is the correlation between the noise-free signal and the measured group mean
    that the generator draws the noise for; on a finite block the realised correlation (``truth.npz``
    ``signal`` at the test targets vs ``fmri_true`` (n_test, V)) scatters around it. Means over the
    reliable voxels. None on real data.
    """
    if "truth" not in manifest.arrays or ceiling is None:
        return None
    with np.load(manifest.arrays["truth"].path) as truth:
        if "signal" not in truth.files:
            return None
        signal = np.asarray(truth["signal"][np.asarray(targets)], np.float64)
    realised = M.pearson_columns(signal, fmri_true)
    keep = reliable if reliable is not None else np.ones(len(realised), bool)
    return {"expected_mean": float(ceiling[keep].mean()), "realised_mean": float(np.nanmean(realised[keep])),
            "rule": "Pearson r over the test block of truth.npz's noise-free signal and the measured group mean"}
