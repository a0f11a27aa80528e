"""Masked arrays to brain-space NIfTI and back, in the mask's voxel order (numpy C order of i, j, k).

This is the order of nilearn's ``apply_mask`` / ``unmask`` and of every (T, V) array giblet writes,
so predicted maps (``r_map.nii.gz``) land on the voxels they came from.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def read_mask_nifti(path: str | Path, not_found: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A user-given mask file: its 3-D data (a trailing singleton 4th axis dropped) and its image.

    Raises InputError naming the file when it is missing (with ``not_found`` as the problem),
    unreadable as NIfTI, or not 3-D.
    """
    from giblet.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, not_found)
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as error:
        raise InputError(path, f"cannot be read as a NIfTI mask ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"a mask must be 3-D, got shape {data.shape}")
    return data, image


def load_mask(mask_path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The mask as a 3-D bool array (non-zero = in), and its image (for affine and header)."""
    image = nib.load(mask_path)
    return np.asarray(image.dataobj) > 0, image


def to_nifti(values: np.ndarray, mask_path: str | Path) -> nib.Nifti1Image:
    """Put masked values into brain space: (V,) -> 3-D, (T, V) -> 4-D; zeros outside the mask.

    The image keeps the values' dtype, the mask's affine (sform and qform codes too) and its spatial
    zooms; a 4-D image gets a time zoom of 1 (set ``header.set_zooms`` for a real TR).
    """
    mask, mask_image = load_mask(mask_path)
    values = np.asarray(values)
    n_voxels = int(mask.sum())
    if values.ndim not in (1, 2) or values.shape[-1] != n_voxels:
        raise ValueError(f"expected (V,) or (T, V) values with V = {n_voxels} (the mask's voxels), "
                         f"got shape {values.shape}")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    extra = values.shape[:-1][::-1]  # () or (T,)
    data = np.zeros(mask.shape + extra, dtype=values.dtype)
    data[mask] = values.T  # (V,) or (V, T): C order of the mask's voxels
    header = mask_image.header.copy()
    header.set_data_dtype(values.dtype)
    header.set_slope_inter(None, None)
    image = nib.Nifti1Image(data, mask_image.affine, header=header)
    image.header.set_zooms(mask_image.header.get_zooms()[:3] + (1.0,) * len(extra))
    return image


def from_nifti(image: str | Path | nib.Nifti1Image, mask_path: str | Path) -> np.ndarray:
    """The inverse of :func:`to_nifti`: 4-D -> (T, V), 3-D -> (V,), in the file's stored dtype (scaled).

    The image must be on the mask's grid (same spatial shape and affine).
    """
    mask, mask_image = load_mask(mask_path)
    if not isinstance(image, nib.spatialimages.SpatialImage):
        image = nib.load(image)
    if tuple(image.shape[:3]) != mask.shape or not np.allclose(image.affine, mask_image.affine, atol=1e-4):
        raise ValueError(f"image grid {tuple(image.shape[:3])} / affine differs from the mask's {mask.shape}; "
                         f"resample it to the mask first")
    data = np.asanyarray(image.dataobj)
    if data.ndim == 3:
        return data[mask]
    if data.ndim == 4:
        return np.ascontiguousarray(data[mask].T)
    raise ValueError(f"expected a 3-D or 4-D image, got shape {data.shape}")
