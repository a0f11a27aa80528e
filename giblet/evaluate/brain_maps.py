"""Per-voxel scores as brain maps: a NIfTI image on the mask's grid, and a glass-brain picture.

Voxel order is the mask's (numpy C order of i, j, k), the order of every (T, V) array giblet
writes and of nilearn's ``apply_mask``/``unmask`` (see :mod:`giblet.fmri.nifti`).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.fmri.nifti import to_nifti


def r_map_image(r: np.ndarray, mask_path: str | Path) -> nib.Nifti1Image:
    """Put a per-voxel score into brain space.

    Parameters
    ----------
    r : array of shape (n_voxels,)
        One value per in-mask voxel, in the mask's voxel order (e.g. per-voxel Pearson r).
    mask_path : str or Path
        The brain mask the voxels came from (non-zero = in).

    Returns
    -------
    image : Nifti1Image
        3-D float32 image with the mask's shape, affine and zooms; 0 outside the mask.
    """
    return to_nifti(np.asarray(r, dtype=np.float32), mask_path)


def plot_r_map(image: nib.Nifti1Image | str | Path, out_png: str | Path, title: str, threshold: float = 0.1,
               vmax: float | None = None) -> Path:
    """Draw a per-voxel r map as a glass brain (both signs, with a colorbar) into ``out_png``.

    Parameters
    ----------
    image : Nifti1Image or path
        A 3-D map, e.g. from :func:`r_map_image`.
    out_png : str or Path
        Written via a temporary file and a rename.
    title : str
        The figure title; the threshold is appended to it (``| |r| >= 0.10 shown``).
    threshold : float
        Voxels with ``|value| < threshold`` are not drawn.
    vmax : float or None
        Upper end of the color scale (default: the largest ``|value|``, at least ``threshold``).

    Returns
    -------
    Path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    out_png = Path(out_png)
    if not isinstance(image, nib.spatialimages.SpatialImage):
        image = nib.load(image)
    data = np.asarray(image.dataobj, dtype=np.float64)
    if vmax is None:
        vmax = max(float(np.abs(data).max()) if data.size else 0.0, threshold, 1e-6)
    full_title = f"{title} | |r| >= {threshold:.2f} shown"
    display = plotting.plot_glass_brain(image, threshold=threshold, colorbar=True, plot_abs=False, vmin=-vmax,
                                        vmax=vmax, cmap="RdBu_r", display_mode="lyrz", title=full_title)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    try:
        display.savefig(str(tmp), dpi=100)
        os.replace(tmp, out_png)
    finally:
        display.close()
        plt.close("all")
        if tmp.exists():
            tmp.unlink()
    return out_png
