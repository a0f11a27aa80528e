"""The shared voxel mask, and the ``fmri_mask`` stage (check the inputs, then build the mask).

A voxel is *valid* in a subject when it is finite and not constant over TRs ``[0, n_trs)``. The
``fmri.mask`` methods:

- ``intersection``: valid in every subject;
- ``majority``: valid in at least ``majority_fraction`` of the subjects. A kept voxel may then be
  invalid in some subject: :func:`giblet.fmri.normalize.normalize_subject` writes z = 0 there (and
  counts it), and the noise ceiling leaves that subject out for that voxel;
- ``mni``: nilearn's bundled MNI152 brain mask, resampled (nearest) to the data grid, intersected
  with valid-in-every-subject;
- a path to a mask NIfTI (non-zero = in): resampled (nearest) when its grid differs, intersected
  with valid-in-every-subject.

The report says how many voxels each criterion removed, in order ("outside_mask", then
"non_finite", then "constant"; for ``majority`` a voxel counts as non-finite when too few subjects
have it finite), and, per subject, how many voxels hold NaN/Inf or are constant.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.errors import InputError
from giblet.files import atomic_output_dir, write_json
from giblet.fmri.inputs import check_bold_inputs, iter_chunks, load_bold
from giblet.fmri.nifti import read_mask_nifti

log = logging.getLogger(__name__)

METHODS = ("intersection", "majority", "mni")


def subject_validity(path: Path, n_trs: int, chunk_trs: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel flags of one subject over TRs ``[0, n_trs)``: (finite everywhere, not constant).

    Both are bool arrays of the spatial shape (x, y, z). Read in time chunks, in order.
    """
    image = load_bold(path)
    finite = nonconstant = first = None
    for _, data in iter_chunks(image, path, n_trs, chunk_trs):
        volumes = data.T.reshape(data.shape[3], -1)  # (c, voxels), voxels in the file's (F) order
        if first is None:
            first = volumes[0].copy()
            finite = np.ones(first.size, dtype=bool)
            nonconstant = np.zeros(first.size, dtype=bool)
        finite &= np.isfinite(volumes).all(axis=0)
        nonconstant |= (volumes != first).any(axis=0)
    shape = image.shape[:3]
    return finite.reshape(shape, order="F"), nonconstant.reshape(shape, order="F")


def _data_grid(info: dict) -> nib.Nifti1Image:
    """An empty 3-D image on the data's grid: the target of resampling."""
    return nib.Nifti1Image(np.zeros(info["shape"], dtype=np.uint8), np.asarray(info["affine"]))


def _resample_nearest(image: nib.Nifti1Image, info: dict) -> np.ndarray:
    """``image > 0`` on the data grid (nearest-neighbour resampling, so labels stay 0/1)."""
    from nilearn.image import resample_to_img

    resampled = resample_to_img(image, _data_grid(info), interpolation="nearest",
                                force_resample=True, copy_header=True)
    return np.asarray(resampled.dataobj) > 0


def mni_mask(info: dict) -> np.ndarray:
    """nilearn's MNI152 brain mask at the resolution nearest the data's, on the data grid (x, y, z) bool."""
    from nilearn.datasets import load_mni152_brain_mask

    zooms = np.sqrt((np.asarray(info["affine"])[:3, :3] ** 2).sum(axis=0))
    resolution = max(1, int(round(float(zooms.min()))))
    return _resample_nearest(load_mni152_brain_mask(resolution=resolution), info)


def given_mask(path: Path, info: dict) -> np.ndarray:
    """A user's mask NIfTI (non-zero = in) on the data grid (x, y, z) bool; resampled if needed."""
    path = Path(path)
    data, image = read_mask_nifti(path, "mask file not found (fmri.mask is neither intersection, majority, "
                                        "mni nor an existing file)")
    affine = np.asarray(info["affine"])
    if list(data.shape) == list(info["shape"]) and np.allclose(image.affine, affine, atol=1e-4):
        return np.nan_to_num(data) > 0
    log.info("resampling mask %s (shape %s) to the data grid %s (nearest neighbour)", path, data.shape,
             tuple(info["shape"]))
    return _resample_nearest(nib.Nifti1Image(np.nan_to_num(data).astype(np.float32), image.affine), info)


def _select(method: str, majority_fraction: float, finite: np.ndarray, valid: np.ndarray,
            allowed: np.ndarray | None) -> tuple[np.ndarray, dict, int]:
    """Apply the method to per-subject flags (S, x, y, z). Returns (mask, removed counts, min subjects)."""
    n_subjects = len(valid)
    need = n_subjects if method != "majority" else max(1, math.ceil(majority_fraction * n_subjects - 1e-9))
    enough_finite = finite.sum(axis=0) >= need
    enough_valid = valid.sum(axis=0) >= need
    removed = {}
    keep = np.ones(valid.shape[1:], dtype=bool)
    if allowed is not None:
        removed["outside_mask"] = int((keep & ~allowed).sum())
        keep &= allowed
    removed["non_finite"] = int((keep & ~enough_finite).sum())
    keep &= enough_finite
    removed["constant"] = int((keep & ~enough_valid).sum())
    keep &= enough_valid
    return keep, removed, need


def build_mask(bold: dict[str, Path], info: dict, method: str, majority_fraction: float, out_mask: Path) -> dict:
    """Build the shared mask of the kept subjects, write it to ``out_mask`` (uint8 NIfTI), return a report.

    ``info`` is :func:`giblet.fmri.inputs.check_bold_inputs`'s result. The report is
    ``{"method", "n_voxels", "removed": {criterion: n}, "per_subject": {id: {"non_finite_voxels",
    "constant_voxels"}}, ...}``; see the module docstring for the methods and criteria.
    """
    subjects = info["subjects"]
    finite, valid, per_subject = [], [], {}
    for sub in subjects:
        ok, varies = subject_validity(Path(bold[sub]), info["n_trs"])
        finite.append(ok)
        valid.append(ok & varies)
        per_subject[sub] = {"non_finite_voxels": int((~ok).sum()), "constant_voxels": int((ok & ~varies).sum())}
    finite, valid = np.stack(finite), np.stack(valid)

    source = None
    if method == "mni":
        allowed, source = mni_mask(info), "nilearn MNI152 brain mask"
    elif method in METHODS:
        allowed = None
    else:
        allowed, source = given_mask(Path(method), info), str(method)
    mask, removed, need = _select(method, majority_fraction, finite, valid, allowed)
    n_voxels = int(mask.sum())
    if n_voxels == 0:
        blame = Path(method) if source and method != "mni" else Path(bold[subjects[0]])
        raise InputError(blame, f"the {method!r} mask keeps no voxel (removed: {removed}); "
                                f"are the data and mask in the same space?")

    image = nib.Nifti1Image(mask.astype(np.uint8), np.asarray(info["affine"]))
    image.header.set_xyzt_units("mm", "sec")
    image.to_filename(out_mask)
    report = {
        "method": "path" if source and method != "mni" else method, "n_voxels": n_voxels,
        "n_grid_voxels": int(mask.size), "removed": removed, "per_subject": per_subject,
        "n_subjects": len(subjects), "min_subjects_valid": need,
        "n_voxels_invalid_in_some_subjects": int((mask & ~valid.all(axis=0)).sum()),
    }
    if method == "majority":
        report["majority_fraction"] = majority_fraction
    if source:
        report["mask_source"] = source
    log.info("%s mask: %d voxels; removed %s", method, n_voxels, removed)
    return report


def prepare_fmri(bold: dict[str, Path], tr: float, params: dict, out_mask: Path, out_info: Path) -> dict:
    """The ``fmri_mask`` stage: check the inputs, build the mask, write both files atomically.

    ``params`` is the config's ``fmri`` section (``mask``, ``majority_fraction``, ``short_subjects``
    are used here). Writes ``out_mask`` (uint8 NIfTI) and ``out_info`` (JSON: the checked facts plus
    ``"mask": report``), which must share a directory. On any error neither file is written and
    existing files are untouched. Returns the info dict as written.
    """
    out_mask, out_info = Path(out_mask), Path(out_info)
    if out_mask.parent.resolve() != out_info.parent.resolve():
        raise ValueError(f"{out_mask} and {out_info} must be in the same directory")
    info = check_bold_inputs(bold, tr, params.get("short_subjects", "error"))
    with atomic_output_dir(out_mask.parent) as tmp:
        report = build_mask(bold, info, params.get("mask", "intersection"), params.get("majority_fraction", 0.5),
                            tmp / out_mask.name)
        info = {**info, "mask": report}
        write_json(tmp / out_info.name, info)
    return info
