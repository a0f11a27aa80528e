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
from giblet.fmri.inputs import check_bold_inputs, check_run_inputs, iter_chunks, load_bold
from giblet.fmri.nifti import read_mask_nifti

log = logging.getLogger(__name__)

METHODS = ("intersection", "majority", "mni")


def subject_validity(reads: list[dict], chunk_trs: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel flags of one subject: (finite in every volume used, not constant within any run).

    ``reads`` are the subject's runs (:func:`giblet.fmri.runs.subject_reads`): file, dummies skipped,
    volumes used. Both flags are bool arrays of the spatial shape (x, y, z). Read in time chunks, in
    order. A voxel constant within a run is flat there once the run's mean is removed, so it must vary
    in every run.
    """
    finite = nonconstant = None
    for read in reads:
        path = Path(read["bold"])
        image = load_bold(path)
        first = varies = None
        for _, data in iter_chunks(image, path, read["n"], chunk_trs, first=read["first"]):
            volumes = data.T.reshape(data.shape[3], -1)  # (c, voxels), voxels in the file's (F) order
            if first is None:
                first = volumes[0].copy()
                varies = np.zeros(first.size, dtype=bool)
                finite = np.ones(first.size, dtype=bool) if finite is None else finite
            finite &= np.isfinite(volumes).all(axis=0)
            varies |= (volumes != first).any(axis=0)
        nonconstant = varies if nonconstant is None else nonconstant & varies
        shape = image.shape[:3]
    return finite.reshape(shape, order="F"), nonconstant.reshape(shape, order="F")


def brain_masks(info: dict, method: str, majority_fraction: float) -> np.ndarray | None:
    """The runs' own brain masks (fMRIPrep's ``desc-brain_mask``) combined as the method says: in every
    mask (``intersection``, ``mni`` or a path) or in at least ``majority_fraction`` of them (``majority``).
    None when no run has one. (x, y, z) bool on the data grid."""
    paths = [Path(run["brain_mask"]) for facts in info["per_subject"].values() if facts.get("runs")
             for run in facts["runs"] if run.get("brain_mask")]
    if not paths:
        return None
    count = np.zeros(info["shape"], dtype=np.int32)
    for path in paths:
        count += given_mask(path, info, "brain mask not found (inputs.brain_mask)")
    need = len(paths) if method != "majority" else max(1, math.ceil(majority_fraction * len(paths) - 1e-9))
    return count >= need


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


DATA_MASK_REFUSED = (
    "no brain masks: fMRIPrep's preprocessed BOLD is not skull-stripped, so a mask from the data alone "
    "(fmri.mask {method}: every finite, non-constant voxel) keeps voxels outside the brain. Give each run's "
    "brain mask (inputs.brain_mask; inputs.bids finds *_desc-brain_mask.nii.gz beside the BOLD), set "
    "fmri.mask to mni or a mask file, or set fmri.allow_data_mask: true to accept the data-derived mask")


def check_mask_source(runs: dict[str, list[dict]], params: dict) -> None:
    """Raise when fMRIPrep inputs have no brain masks and the mask would come from the data alone, which
    the config did not accept (``fmri.allow_data_mask``); see :data:`DATA_MASK_REFUSED`."""
    method = params.get("mask", "intersection")
    has_masks = any(run.get("brain_mask") for entries in runs.values() for run in entries)
    if params.get("fmriprep_inputs") and not has_masks and method in ("intersection", "majority") \
            and not params.get("allow_data_mask"):
        first = next(iter(runs.values()))[0]["bold"]
        raise InputError(first, DATA_MASK_REFUSED.format(method=method))


MISSING_MASK = "mask file not found (fmri.mask is neither intersection, majority, mni nor an existing file)"


def given_mask(path: Path, info: dict, missing: str = MISSING_MASK) -> np.ndarray:
    """A mask NIfTI (non-zero = in) on the data grid (x, y, z) bool; resampled if needed. ``missing``
    is the error when the file is not there."""
    path = Path(path)
    data, image = read_mask_nifti(path, missing)
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


def build_mask(info: dict, method: str, majority_fraction: float, out_mask: Path) -> dict:
    """Build the shared mask of the kept subjects, write it to ``out_mask`` (uint8 NIfTI), return a report.

    ``info`` is :func:`giblet.fmri.inputs.check_bold_inputs`'s (or ``check_run_inputs``') result:
    the runs to read. When runs have brain masks, a voxel must also be in them (all, or a majority
    for ``majority``). The report is ``{"method", "n_voxels", "removed": {criterion: n},
    "per_subject": {id: {"non_finite_voxels", "constant_voxels"}}, ...}``; see the module docstring
    for the methods and criteria.
    """
    from giblet.fmri.runs import subject_reads

    subjects = info["subjects"]
    finite, valid, per_subject = [], [], {}
    for sub in subjects:
        ok, varies = subject_validity(subject_reads(info, sub))
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
    from_runs = brain_masks(info, method, majority_fraction)
    if from_runs is not None:
        allowed = from_runs if allowed is None else allowed & from_runs
        source = "the runs' brain masks" + (f" and {source}" if source else "")
    mask, removed, need = _select(method, majority_fraction, finite, valid, allowed)
    n_voxels = int(mask.sum())
    if n_voxels == 0:
        blame = Path(method) if method not in METHODS else Path(info["per_subject"][subjects[0]]["path"])
        raise InputError(blame, f"the {method!r} mask keeps no voxel (removed: {removed}); "
                                f"are the data and mask in the same space?")

    image = nib.Nifti1Image(mask.astype(np.uint8), np.asarray(info["affine"]))
    image.header.set_xyzt_units("mm", "sec")
    image.to_filename(out_mask)
    report = {
        "method": "path" if method not in METHODS else method, "n_voxels": n_voxels,
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


def prepare_fmri(runs: dict[str, list[dict]], tr: float, params: dict, out_mask: Path, out_info: Path,
                 movie: Path | None = None) -> dict:
    """The ``fmri_mask`` stage: check the inputs, build the mask, write both files atomically.

    ``runs`` maps each subject to its runs (:func:`giblet.paths.runs`). With ``movie`` (the runs
    were listed in ``inputs.runs``), each run is placed on the movie's clock and checked against its
    segment (:func:`giblet.fmri.inputs.check_run_inputs`); without, each subject has one file and
    ``short_subjects`` applies. ``params`` holds the config's ``fmri`` keys ``mask``,
    ``majority_fraction``, ``short_subjects``, ``allow_data_mask``, ``fmriprep_inputs`` (see
    :func:`check_mask_source`) and ``confound_columns``: the columns every confounds file must have.
    Writes ``out_mask`` (uint8 NIfTI) and ``out_info`` (JSON: the checked facts plus ``"mask":
    report``), which must share a directory. On any error neither file is written and
    existing files are untouched. Returns the info dict as written.
    """
    from giblet.fmri.confounds import check_tables

    out_mask, out_info = Path(out_mask), Path(out_info)
    if out_mask.parent.resolve() != out_info.parent.resolve():
        raise ValueError(f"{out_mask} and {out_info} must be in the same directory")
    check_mask_source(runs, params)
    columns = list(params.get("confound_columns", []))
    if movie is not None:
        from giblet.stimulus.media import probe_movie

        info = check_run_inputs(runs, tr, probe_movie(movie).duration_s, columns)
    else:
        info = check_bold_inputs({s: Path(entries[0]["bold"]) for s, entries in runs.items()}, tr,
                                 params.get("short_subjects", "error"))
        for sub, facts in info["per_subject"].items():
            run = runs[sub][0]
            facts["runs"][0].update({key: str(run[key]) if run.get(key) else None
                                     for key in ("confounds", "brain_mask")})
        check_tables({f"sub-{sub}": (Path(runs[sub][0]["confounds"]), facts["n_trs"])
                      for sub, facts in info["per_subject"].items() if runs[sub][0].get("confounds")}, columns)
    with atomic_output_dir(out_mask.parent) as tmp:
        report = build_mask(info, params.get("mask", "intersection"), params.get("majority_fraction", 0.5),
                            tmp / out_mask.name)
        info = {**info, "mask": report}
        write_json(tmp / out_info.name, info)
    return info
