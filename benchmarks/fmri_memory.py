"""Peak memory and speed of ``normalize_subject`` on a Sherlock-sized subject.

The subject: 1,976 TRs (quick: 300) on nilearn's 3 mm MNI brain mask grid (61 x 73 x 61, ~70k brain
voxels), float32, zeros outside the brain. ``normalize_subject`` runs in a fresh subprocess; its
peak RSS (VmHWM from /proc) minus that of a subprocess that only does the same imports is reported
relative to the subject's masked float32 array (goal <= 1.5x; the memory-mapped output alone,
file-backed pages counted in RSS, is 1x; one 64-TR chunk of the full grid adds ~70 MB). Speed is relative to numpy z-scoring the same masked array already in
memory, timed in the same run (goal >= 0.5x). The input is read warm from the page cache. For
context: a naive stage (nibabel loads the whole file, mask, numpy z-score, save), and the time to
hash the BOLD file (the sidecar records its SHA-256; that is part of the stage's time).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.files import sha256_file

TR = 1.5
IMPORTS = "import json, sys, time; from pathlib import Path; from giblet.fmri.normalize import normalize_subject"
RUN = """
bold, mask, n_trs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
t0 = time.perf_counter()
normalize_subject(Path(bold), Path(mask), n_trs, (0, n_trs), out / "sub-01_z.npy", out / "sub-01_stats.npz",
                  progress=False)
seconds = time.perf_counter() - t0
"""
# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives exec, so a child forked from this
# (large) process would report the parent's peak.
NAIVE = """
import nibabel as nib, numpy as np
bold, mask, out = sys.argv[1], sys.argv[2], Path(sys.argv[4])
t0 = time.perf_counter()
x = np.asarray(nib.load(bold).dataobj)[np.asarray(nib.load(mask).dataobj) > 0].T  # whole file in memory
np.save(out / "naive_z.npy", (x - x.mean(axis=0)) / x.std(axis=0, ddof=1))
seconds = time.perf_counter() - t0
"""
REPORT = """
hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print(json.dumps({'peak_rss_kib': hwm, 'seconds': %s}))
"""


def _mni_grid() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's 3 mm MNI brain mask: (x, y, z) bool and its affine."""
    from nilearn.datasets import load_mni152_brain_mask

    image = load_mni152_brain_mask(resolution=3)
    return np.asarray(image.dataobj) > 0, image.affine


def _header(shape4: tuple[int, ...], affine: np.ndarray) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape4)
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=4)
    header.set_qform(affine, code=4)
    header.set_xyzt_units("mm", "sec")
    header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + (TR,))
    header.set_data_offset(352)  # 348-byte header + 4-byte "no extensions" flag
    return header


def write_subject(paths: list[Path], mask: np.ndarray, affine: np.ndarray, n_trs: int, chunk: int = 64) -> np.ndarray:
    """Write one synthetic subject to every path (``.nii`` or ``.nii.gz``), streamed in time chunks.

    Returns the masked float32 array (n_trs, V) that the files hold (the in-memory reference).
    """
    rng = np.random.default_rng(0)
    n_voxels = int(mask.sum())
    baseline = (800 + 400 * rng.random(n_voxels)).astype(np.float32)
    masked = np.empty((n_trs, n_voxels), dtype=np.float32)
    header = _header(mask.shape + (n_trs,), affine)
    files = [gzip.open(p, "wb", compresslevel=1) if p.suffix == ".gz" else open(p, "wb") for p in paths]
    try:
        for f in files:
            f.write(header.binaryblock + b"\0" * 4)
        volume = np.zeros((chunk,) + mask.shape, dtype=np.float32)
        for start in range(0, n_trs, chunk):
            rows = masked[start:start + chunk]
            rows[...] = baseline * (1 + 0.02 * rng.standard_normal(rows.shape, dtype=np.float32))
            block = volume[:len(rows)]
            block[:, mask] = rows
            data = np.ascontiguousarray(block.transpose(0, 3, 2, 1)).tobytes()  # each volume in F order
            for f in files:
                f.write(data)
    finally:
        for f in files:
            f.close()
    return masked


def _subprocess(code: str, *args) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _numpy_zscore_seconds(masked: np.ndarray, repeats: int = 2) -> float:
    """Reference: numpy z-scoring the masked array already in memory (best of ``repeats``)."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = (masked - masked.mean(axis=0)) / masked.std(axis=0, ddof=1)
        best = min(best, time.perf_counter() - t0)
        del z
    return best


def normalize_memory(quick: bool) -> dict:
    """Peak RSS over the imports, relative to the masked array, and speed relative to numpy (flat dict)."""
    n_trs = 300 if quick else 1976
    mask, affine = _mni_grid()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mask_path = tmp / "mask.nii.gz"
        nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(mask_path)
        bolds = {"nii": tmp / "sub-01_bold.nii", "nii_gz": tmp / "sub-01_bold.nii.gz"}
        masked = write_subject(list(bolds.values()), mask, affine, n_trs)
        array_mib = masked.nbytes / 2**20
        reference_s = _numpy_zscore_seconds(masked)
        sample = masked[:, ::997].astype(np.float64)  # a check that the files hold what was meant
        expected = (sample - sample.mean(axis=0)) / sample.std(axis=0, ddof=1)
        del masked

        baseline = _subprocess(f"{IMPORTS}\n{REPORT % 0}")
        results = {"n_trs": n_trs, "n_voxels": int(mask.sum()), "masked_array_mib": round(array_mib, 1),
                   "imports_rss_mib": round(baseline["peak_rss_kib"] / 1024, 1),
                   "reference_numpy_zscore_seconds": round(reference_s, 3)}
        for name, bold in bolds.items():
            out = tmp / f"out_{name}"
            out.mkdir()
            run = _subprocess(f"{IMPORTS}\n{RUN}\n{REPORT % 'seconds'}", bold, mask_path, n_trs, out)
            extra_mib = (run["peak_rss_kib"] - baseline["peak_rss_kib"]) / 1024
            results[f"{name}_peak_rss_over_imports_mib"] = round(extra_mib, 1)
            results[f"{name}_peak_rss_vs_masked_array"] = round(extra_mib / array_mib, 3)
            results[f"{name}_seconds"] = round(run["seconds"], 3)
            results[f"{name}_speed_vs_numpy_in_memory"] = round(reference_s / run["seconds"], 3)
            results[f"{name}_file_mib"] = round(bold.stat().st_size / 2**20, 1)
            z = np.load(out / "sub-01_z.npy", mmap_mode="r")
            results[f"{name}_max_abs_error_vs_float64"] = float(np.abs(z[:, ::997] - expected).max())
        naive = _subprocess(f"{IMPORTS}\n{NAIVE}\n{REPORT % 'seconds'}", bolds["nii"], mask_path, n_trs, out)
        results["naive_load_all_peak_rss_vs_masked_array"] = round(
            (naive["peak_rss_kib"] - baseline["peak_rss_kib"]) / 1024 / array_mib, 3)
        results["naive_load_all_seconds"] = round(naive["seconds"], 3)
        t0 = time.perf_counter()
        sha256_file(bolds["nii"])  # the sidecar hashes the BOLD file; part of nii_seconds
        hash_s = time.perf_counter() - t0
        results["nii_sha256_seconds"] = round(hash_s, 3)
        results["nii_speed_vs_numpy_excluding_sha256"] = round(reference_s / (results["nii_seconds"] - hash_s), 3)
    return results


if __name__ == "__main__":
    print(json.dumps(normalize_memory("--quick" in sys.argv), indent=2))
