"""Throughput of per-run cleaning (``normalize_fmri`` with fMRIPrep confounds) on a Sherlock-sized subject.

The subject: 1,976 TRs (quick: 300) on nilearn's 3 mm MNI brain mask grid (~70k brain voxels), as two
runs of half the movie each plus 3 dummy volumes, each with a confounds table holding the default
``fmri.confounds`` (17 columns) and ``framewise_displacement`` (a few volumes above 0.5 mm). The stage
cleans each run (confounds, linear detrend, cosine high-pass at 0.008 Hz, high-motion volumes
interpolated), joins the runs and z-scores them.

References timed in the same run:

- ``nilearn.signal.clean`` on each run's masked array already in memory, same options: the bare
  library cost, what the stage cannot beat;
- ``nilearn.maskers.NiftiMasker(...).fit_transform(run, confounds=...)``: the field's usual way (reads
  the whole file, masks, cleans), the same work as the stage;
- the stage without cleaning (one file, z-score only): what cleaning adds.

The stage's output is checked against the in-memory reference (max abs error in z).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.fmri_memory import TR, _mni_grid, write_subject
from giblet.fmri.clean import Cleaning
from giblet.fmri.normalize import normalize_subject

DUMMIES = 3
COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "trans_x_derivative1", "trans_y_derivative1",
           "trans_z_derivative1", "rot_x_derivative1", "rot_y_derivative1", "rot_z_derivative1", "a_comp_cor_00",
           "a_comp_cor_01", "a_comp_cor_02", "a_comp_cor_03", "a_comp_cor_04"]
CLEANING = Cleaning(tr=TR, confounds=tuple(COLUMNS), high_pass_hz=0.008, detrend=True, fd_threshold_mm=0.5)


def write_confounds(path: Path, n_volumes: int, rng: np.random.Generator) -> np.ndarray:
    """A confounds table with the columns above and framewise_displacement; returns the FD column."""
    import pandas as pd

    table = pd.DataFrame(rng.standard_normal((n_volumes, len(COLUMNS))) * 0.01, columns=COLUMNS)
    displacement = np.abs(rng.normal(0.1, 0.05, n_volumes))
    displacement[rng.choice(np.arange(DUMMIES + 1, n_volumes), 6, replace=False)] = 0.9
    table["framewise_displacement"] = displacement
    table.iloc[0, [COLUMNS.index(c) for c in COLUMNS if c.endswith("derivative1")]] = np.nan
    table.loc[0, "framewise_displacement"] = np.nan
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return np.nan_to_num(displacement)


def nilearn_in_memory(masked: np.ndarray, path: Path, n: int) -> np.ndarray:
    """Reference: nilearn.signal.clean on one run's masked kept volumes (in memory), then its mean removed."""
    import pandas as pd
    from nilearn.signal import clean, create_cosine_drift

    table = pd.read_csv(path, sep="\t", na_values="n/a").fillna(0)
    keep = np.flatnonzero(table["framewise_displacement"].to_numpy()[DUMMIES:] <= 0.5)
    drift = create_cosine_drift(0.008, np.arange(n) * TR)[:, :-1]  # the high-pass, as the stage passes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = clean(masked.astype(np.float64), detrend=True,
                    confounds=np.hstack([table[COLUMNS].to_numpy()[DUMMIES:], drift]),
                    standardize=False, filter=False, t_r=TR, sample_mask=keep)
    return out - out.mean(axis=0)


def nifti_masker(bold: Path, mask: Path, path: Path) -> float:
    """Reference: NiftiMasker reading, masking and cleaning one run (dummies dropped first); seconds."""
    import pandas as pd
    from nilearn.image import index_img
    from nilearn.maskers import NiftiMasker

    t0 = time.perf_counter()
    table = pd.read_csv(path, sep="\t", na_values="n/a").fillna(0)
    image = nib.load(bold)
    kept = index_img(image, slice(DUMMIES, image.shape[3]))
    keep = np.flatnonzero(table["framewise_displacement"].to_numpy()[DUMMIES:] <= 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NiftiMasker(mask_img=str(mask), detrend=True, standardize=False, high_pass=0.008, t_r=TR).fit_transform(
            kept, confounds=table[COLUMNS].to_numpy()[DUMMIES:], sample_mask=keep)
    return time.perf_counter() - t0


def fmri_cleaning(quick: bool) -> dict:
    """Seconds and voxel-TRs per second of the stage, and its ratios to the references (flat dict)."""
    n_trs = 300 if quick else 1976
    per_run = n_trs // 2
    mask, affine = _mni_grid()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mask_path = tmp / "mask.nii.gz"
        nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(mask_path)
        reads, masked_runs = [], []
        for k in range(2):
            bold, confounds = tmp / f"run-{k + 1}_bold.nii", tmp / f"run-{k + 1}_confounds.tsv"
            masked_runs.append(write_subject([bold], mask, affine, per_run + DUMMIES)[DUMMIES:])
            write_confounds(confounds, per_run + DUMMIES, rng)
            reads.append({"bold": str(bold), "confounds": str(confounds), "brain_mask": None, "first": DUMMIES,
                          "n": per_run, "fmri": [k * per_run, (k + 1) * per_run],
                          "n_volumes_in_file": per_run + DUMMIES})
        n = 2 * per_run
        out = tmp / "out"
        out.mkdir()

        t0 = time.perf_counter()
        normalize_subject(reads, mask_path, n, (0, n), out / "z.npy", out / "stats.npz", progress=False,
                          cleaning=CLEANING)
        stage_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = out / "plain"
        plain.mkdir()
        normalize_subject(Path(reads[0]["bold"]), mask_path, per_run, (0, per_run), plain / "z.npy",
                          plain / "stats.npz", progress=False)
        plain_s = (time.perf_counter() - t0) * 2  # two runs' worth of volumes

        t0 = time.perf_counter()
        reference = np.concatenate([nilearn_in_memory(masked_runs[k], Path(reads[k]["confounds"]), per_run)
                                    for k in range(2)])
        in_memory_s = time.perf_counter() - t0
        masker_s = sum(nifti_masker(Path(r["bold"]), mask_path, Path(r["confounds"])) for r in reads)

        # Compare at the kept volumes: the stage interpolates the others.
        keep = np.concatenate([k * per_run + np.flatnonzero(np.nan_to_num(
            np.genfromtxt(r["confounds"], delimiter="\t", names=True)["framewise_displacement"])[DUMMIES:] <= 0.5)
            for k, r in enumerate(reads)])
        # The stage's z, back in the cleaned data's units with its stored statistics, at the kept volumes
        # (nilearn returns only those; the stage interpolates the others).
        z = np.load(out / "z.npy", mmap_mode="r")
        stats = np.load(out / "stats.npz")
        sample = slice(None, None, 97)
        cleaned = np.asarray(z[keep][:, sample], dtype=np.float64) * stats["std"][sample] + stats["mean"][sample]
        error = float(np.abs(cleaned - reference[:, sample]).max() / reference[:, sample].std())
    n_voxels = int(mask.sum())
    return {
        "n_trs": n, "n_runs": 2, "n_voxels": n_voxels, "confound_columns": len(COLUMNS),
        "stage_seconds": round(stage_s, 2),
        "stage_voxel_trs_per_second_millions": round(n * n_voxels / stage_s / 1e6, 1),
        "movie_seconds_per_stage_second": round(n * TR / stage_s, 1),
        "reference_nilearn_clean_in_memory_seconds": round(in_memory_s, 2),
        "reference_nifti_masker_seconds": round(masker_s, 2),
        "reference_zscore_only_stage_seconds": round(plain_s, 2),
        "ratio_stage_vs_nilearn_clean_in_memory": round(stage_s / in_memory_s, 2),
        "ratio_stage_vs_nifti_masker": round(stage_s / masker_s, 2),
        "ratio_stage_vs_zscore_only_stage": round(stage_s / plain_s, 2),
        "max_abs_error_vs_nilearn_relative_to_std": error,
    }


if __name__ == "__main__":
    print(json.dumps(fmri_cleaning("--quick" in sys.argv), indent=2))
