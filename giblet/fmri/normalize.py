"""The ``normalize_fmri`` stage: z-score one subject's masked BOLD, streaming it through a memmap.

Two passes over a memory-mapped ``.npy`` of shape (n_trs, V) float32, so peak memory stays near one
subject's masked array (the file-backed pages) plus one chunk:

1. read ``chunk_trs`` volumes at a time (in time order: a ``.nii.gz`` decompresses forwards once),
   mask them into rows of the memmap, and accumulate float64 sums over the fit TRs;
2. z-score the memmap in place, chunk by chunk: ``z = (x - mean) / std`` with ``ddof=1``, as
   nilearn's ``standardize="zscore_sample"``.

The statistics come from TRs ``[fit_trs[0], fit_trs[1])`` only (the training TRs when a split is
declared, or all TRs), and are stored. A voxel constant over the fit TRs, or with a NaN/Inf
anywhere in the first n_trs TRs (possible with a ``majority`` mask), gets z = 0 at every TR; both are
counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.errors import InputError
from giblet.fmri.clean import Cleaning
from giblet.files import atomic_output_dir, sha256_in_background, write_sidecar
from giblet.fmri.inputs import AFFINE_TOLERANCE_MM, iter_chunks, load_bold
from giblet.logs import progress as progress_bar

log = logging.getLogger(__name__)

DDOF = 1


def mask_indices(mask_path: Path, bold: nib.Nifti1Image) -> np.ndarray:
    """Positions of the mask's voxels in a volume flattened in file (Fortran) order, listed in C order.

    ``volume.T.reshape(-1)[indices]`` equals ``volume[mask]`` (nilearn's voxel order) without
    copying the volume into C order first. The mask must be on the BOLD's grid.
    """
    image = nib.load(mask_path)
    mask = np.asarray(image.dataobj) > 0
    shape = tuple(bold.shape[:3])
    if mask.shape != shape:
        raise InputError(mask_path, f"mask shape {mask.shape} differs from the BOLD's spatial shape {shape}")
    difference = float(np.max(np.abs(image.affine - bold.affine)))
    if difference > AFFINE_TOLERANCE_MM:
        raise InputError(mask_path, f"mask affine differs from the BOLD's by up to {difference:.6g}")
    return np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")


class FitSums:
    """Per-voxel running sums over the fit TRs, for the mean and the sample variance.

    The rows are shifted by the mean of the first rows seen (float32), so the differences are small
    and exact-ish in float32 and ``(sum d^2 - (sum d)^2 / n) / (n - 1)`` loses no precision to a large
    baseline (BOLD sits near 1000 with a few percent of signal). Sums accumulate in float64.
    """

    def __init__(self, n_voxels: int):
        self.n = 0
        self.shift = None
        self.sum = np.zeros(n_voxels)
        self.sum_sq = np.zeros(n_voxels)

    def add(self, rows: np.ndarray, work: np.ndarray) -> None:
        """Accumulate rows (c, V) float32; ``work`` is scratch space of at least that shape, float32."""
        if not len(rows):
            return
        if self.shift is None:
            self.shift = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        d = np.subtract(rows, self.shift, out=work[:len(rows)])
        self.sum += np.add.reduce(d, axis=0, dtype=np.float64)
        np.square(d, out=d)  # float32 squares: each exact to 1e-7 relative, summed in float64
        self.sum_sq += np.add.reduce(d, axis=0, dtype=np.float64)
        self.n += len(rows)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-voxel mean and sample standard deviation (ddof=1), float64 (V,)."""
        mean_d = self.sum / self.n
        var = (self.sum_sq - self.sum * mean_d) / (self.n - DDOF)
        return self.shift + mean_d, np.sqrt(np.maximum(var, 0.0))


def _fill(read: dict, out: np.ndarray, indices: np.ndarray, sums: FitSums | None, fit_trs: tuple[int, int],
          chunk_trs: int, progress: bool) -> np.ndarray:
    """Pass 1 for one run: its masked volumes into rows ``read["fmri"]`` of ``out`` (n_trs, V), and, when
    ``sums`` is given, its rows in ``fit_trs`` into the sums. Returns a (V,) non-finite flag.

    Non-finite values are stored as 0 and their voxels flagged (they end up z = 0).
    """
    path = Path(read["bold"])
    image = load_bold(path)
    offset, n = read["fmri"][0], read["n"]
    if image.shape[3] < read["first"] + n:
        raise InputError(path, f"has {image.shape[3]} TRs, fewer than the {read['first'] + n} to normalize")
    non_finite = np.zeros(out.shape[1], dtype=bool)
    work = np.empty((min(chunk_trs, n), out.shape[1]), dtype=np.float32) if sums is not None else None
    chunks = iter_chunks(image, path, n, chunk_trs, first=read["first"])
    for start, data in progress_bar(chunks, f"normalize: read {path.name}", "chunk", progress,
                                    total=-(-n // chunk_trs)):
        start += offset
        rows = out[start:start + data.shape[3]]
        volumes = data.T.reshape(data.shape[3], -1)  # (c, voxels in file order): a view
        if volumes.dtype == rows.dtype:
            np.take(volumes, indices, axis=1, out=rows, mode="clip")  # no temporary; indices are valid
        else:
            rows[...] = volumes[:, indices]  # cast to float32
        if not np.isfinite(np.add.reduce(rows, axis=0, dtype=np.float64)).all():  # cheap test first
            bad = ~np.isfinite(rows)
            non_finite |= bad.any(axis=0)
            rows[bad] = 0.0
        if sums is not None:
            _add_fit_rows(sums, rows, start, fit_trs, work)
    return non_finite


def _add_fit_rows(sums: FitSums, rows: np.ndarray, start: int, fit_trs: tuple[int, int], work: np.ndarray) -> None:
    """Add the rows of ``rows`` (timeline TRs from ``start``) that fall in ``fit_trs`` to the sums."""
    lo, hi = max(fit_trs[0], start), min(fit_trs[1], start + len(rows))
    if hi > lo:
        sums.add(rows[lo - start:hi - start], work)


def _fit_sums(out: np.ndarray, fit_trs: tuple[int, int], chunk_trs: int) -> FitSums:
    """The fit sums of rows ``fit_trs`` of ``out``, after cleaning changed them."""
    sums = FitSums(out.shape[1])
    work = np.empty((chunk_trs, out.shape[1]), dtype=np.float32)
    for start in range(fit_trs[0], fit_trs[1], chunk_trs):
        stop = min(start + chunk_trs, fit_trs[1])
        sums.add(out[start:stop], work)
    return sums


def _zscore_in_place(out: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, chunk_trs: int, progress: bool) -> None:
    """Pass 2: ``out = (out - mean) * inv_std`` in place, chunk by chunk, float32 at float64-like accuracy.

    The float64 mean is split into float32 ``hi + lo``: ``x - hi`` is exact (or rounded relative to
    the small result), so the result is good to a few float32 ulps of z instead of ulps of the
    baseline (~1000), at float32 speed.
    """
    n_trs, _ = out.shape
    hi = mean.astype(np.float32)
    lo = (mean - hi).astype(np.float32)
    inv_std = inv_std.astype(np.float32)
    for start in progress_bar(range(0, n_trs, chunk_trs), "normalize: z-score", "chunk", progress):
        rows = out[start:start + chunk_trs]
        rows -= hi
        rows -= lo
        rows *= inv_std


def single_run(bold_path: Path, n_trs: int) -> list[dict]:
    """The reads of a subject with one file: its first ``n_trs`` volumes, no confounds."""
    return [{"bold": str(bold_path), "confounds": None, "brain_mask": None, "first": 0, "n": n_trs,
             "fmri": [0, n_trs], "n_volumes_in_file": None}]


def normalize_subject(bold: Path | list[dict], mask_path: Path, n_trs: int, fit_trs: tuple[int, int],
                      out_npy: Path, out_stats: Path, chunk_trs: int = 64, progress: bool = True,
                      cleaning: Cleaning | None = None) -> Path:
    """Clean, join and z-score one subject's runs within the mask; write the z array and its statistics.

    ``bold`` is one 4-D file (its first ``n_trs`` TRs are used) or the subject's runs
    (:func:`giblet.fmri.runs.subject_reads`), joined into ``n_trs`` timeline TRs. With several runs
    or a ``cleaning``, each run is cleaned on its own first (:mod:`giblet.fmri.clean`). Writes
    ``out_npy`` float32 (n_trs, V) with its JSON sidecar, and ``out_stats`` (npz: ``mean``, ``std``
    float32 (V,) of the cleaned data (0 for voxels with NaN/Inf), ``fit_trs``, ``ddof``, ``n_trs``,
    ``n_constant_in_fit``, ``n_non_finite``); all atomically, in ``out_npy``'s directory
    (``out_stats`` must share it). ``fit_trs = (start, stop)`` is the TR range the statistics are
    fitted on. Returns ``out_npy``.
    """
    reads = single_run(Path(bold), n_trs) if isinstance(bold, (str, Path)) else bold
    mask_path, out_npy, out_stats = map(Path, (mask_path, out_npy, out_stats))
    if out_npy.parent.resolve() != out_stats.parent.resolve():
        raise ValueError(f"{out_npy} and {out_stats} must be in the same directory")
    fit_trs = (int(fit_trs[0]), int(fit_trs[1]))
    if not 0 <= fit_trs[0] < fit_trs[1] <= n_trs or fit_trs[1] - fit_trs[0] <= DDOF:
        raise ValueError(f"fit_trs {fit_trs} must be a range of at least 2 TRs within [0, {n_trs})")
    cleans = len(reads) > 1 or (cleaning is not None and cleaning.removes_anything_but_the_mean())
    hashes = {f"bold_{k}" if len(reads) > 1 else "bold": sha256_in_background(Path(read["bold"]))
              for k, read in enumerate(reads, start=1)}
    indices = mask_indices(mask_path, load_bold(reads[0]["bold"]))

    with atomic_output_dir(out_npy.parent) as tmp:
        out = np.lib.format.open_memmap(tmp / out_npy.name, mode="w+", dtype=np.float32,
                                        shape=(n_trs, len(indices)))
        sums = None if cleans else FitSums(len(indices))
        non_finite = np.zeros(len(indices), dtype=bool)
        for read in reads:
            non_finite |= _fill(read, out, indices, sums, fit_trs, chunk_trs, progress)
        cleaned = _clean_runs(out, reads, cleaning, progress) if cleans else []
        if cleans:
            sums = _fit_sums(out, fit_trs, chunk_trs)
        mean, std = sums.mean_std()
        constant = (std == 0) & ~non_finite
        zero = constant | non_finite
        mean[non_finite], std[non_finite] = 0.0, 0.0
        inv_std = np.divide(1.0, std, out=np.zeros_like(std), where=~zero)
        _zscore_in_place(out, np.where(zero, 0.0, mean), inv_std, chunk_trs, progress)
        out.flush()
        stats = {"fit_trs": list(fit_trs), "ddof": DDOF, "n_trs": n_trs,
                 "n_constant_in_fit": int(constant.sum()), "n_non_finite": int(non_finite.sum())}
        np.savez(tmp / out_stats.name, mean=mean.astype(np.float32), std=std.astype(np.float32), **stats)
        parameters = {"fit_trs": list(fit_trs), "ddof": DDOF, "n_trs": n_trs}
        if cleans:
            parameters["cleaning"] = {**(asdict(cleaning) if cleaning else {}), "runs": cleaned,
                                      "high_motion": "interpolated (cubic spline over the run's kept volumes)"}
        sources = {role: Path(read["bold"]) for role, read in zip(hashes, reads)}
        sources.update({f"confounds_{k}": Path(read["confounds"]) for k, read in enumerate(reads, start=1)
                        if read.get("confounds") and cleaning and cleaning.columns()})
        write_sidecar(tmp / out_npy.name, out, parameters=parameters, sources={**sources, "mask": mask_path},
                      extra={"stats": stats}, source_hashes={role: h.result() for role, h in hashes.items()})
        del out
    if stats["n_constant_in_fit"] or stats["n_non_finite"]:
        log.warning("%s: z = 0 for %d voxels constant over TRs %s and %d with NaN/Inf", reads[0]["bold"],
                    stats["n_constant_in_fit"], fit_trs, stats["n_non_finite"])
    return out_npy


def _clean_runs(out: np.ndarray, reads: list[dict], cleaning: Cleaning | None, progress: bool) -> list[dict]:
    """Clean each run's rows of ``out`` in place; returns, per run, what was done (for the sidecar). What
    nilearn left out of a run's fit is a warning naming the file, in the rule's log."""
    from giblet.fmri.clean import clean_run, run_confounds

    done = []
    for read in progress_bar(reads, "normalize: clean", "run", progress):
        a, b = read["fmri"]
        confounds, high_motion = run_confounds(read, cleaning) if cleaning else (None, np.zeros(b - a, bool))
        notes = clean_run(out[a:b], confounds, high_motion, cleaning or Cleaning(tr=1.0),
                          cleaning.confounds if cleaning else ())
        done.append({"bold": read["bold"], "timeline_trs": [a, b], "dummy_volumes_dropped": read["first"],
                     "confound_columns": list(cleaning.confounds) if confounds is not None else [],
                     "high_motion_volumes": [int(v) for v in np.flatnonzero(high_motion)], **notes})
        if high_motion.any():
            log.info("%s: %d high-motion volumes interpolated", read["bold"], int(high_motion.sum()))
        if (notes["high_pass"] or "").startswith("dropped"):
            log.warning("%s: high-pass filter (fmri.high_pass_hz %g) not applied to this run: %s", read["bold"],
                        cleaning.high_pass_hz, notes["high_pass"].removeprefix("dropped: "))
        for column, why in notes["dropped_confounds"].items():
            log.warning("%s: confound %r left out of the fit by nilearn: %s", read["bold"], column, why)
        for notice in notes["nilearn_warnings"]:
            log.warning("%s: nilearn.signal.clean: %s", read["bold"], notice)
    return done


def normalize_fitted_on(bold: list[str], mask_path: Path, info_json: Path, fit: str | list[int],
                        out_npy: Path, out_stats: Path, cleaning: dict | None = None, progress: bool = True) -> Path:
    """The rule's entry point for one subject, whose run files are ``bold``. ``fit`` is ``"all"`` (every
    TR of the timeline ``fmri_mask`` settled on) or ``[start, stop)``, the split's training block
    (``fmri.normalize_on: train``). ``cleaning`` is the rule's param (:meth:`Cleaning.from_params`);
    the runs (dummies, timeline) come from ``fmri.json``.

    A subject that ``fmri_mask`` dropped (``fmri.short_subjects: drop``) gets empty outputs that say
    so (see :func:`write_dropped`): every configured subject has its files, so the whole plan is
    known before anything runs and ``snakemake -n`` shows it.
    """
    import json

    from giblet.fmri.runs import subject_reads

    bold = [bold] if isinstance(bold, (str, Path)) else list(bold)
    info = json.loads(Path(info_json).read_text())
    n_trs = info["n_trs"]
    subject = next((s for s, facts in info["per_subject"].items() if Path(facts["path"]) == Path(bold[0])), None)
    if subject is None:
        raise InputError(info_json, f"lists no subject whose first run is {bold[0]}; rerun fmri_mask")
    if subject in info["dropped"]:
        return write_dropped(bold[0], out_npy, out_stats, subject, info["mask"]["n_voxels"], info_json)
    fit_trs = (0, n_trs) if fit == "all" else tuple(fit)
    if len(fit_trs) != 2 or not 0 <= fit_trs[0] < fit_trs[1] <= n_trs:
        raise ValueError(f"{bold[0]}: cannot fit statistics on TRs {fit!r} of {n_trs}")
    log.info("subject %s: statistics fit on TRs [%d, %d)", subject, *fit_trs)
    return normalize_subject(subject_reads(info, subject), Path(mask_path), n_trs, fit_trs, Path(out_npy),
                             Path(out_stats), progress=progress,
                             cleaning=Cleaning.from_params(cleaning) if cleaning else None)


def write_dropped(bold_path: Path, out_npy: Path, out_stats: Path, subject: str, n_voxels: int,
                  info_json: Path) -> Path:
    """The outputs of a subject ``fmri_mask`` dropped: a (0, V) z array whose sidecar and stats say
    ``dropped`` and why. ``average_fmri`` leaves the subject out, as ``fmri.json`` lists."""
    out_npy, out_stats = Path(out_npy), Path(out_stats)
    reason = f"dropped by fmri_mask (fmri.short_subjects: drop); see {info_json}"
    with atomic_output_dir(out_npy.parent) as tmp:
        empty = np.zeros((0, n_voxels), dtype=np.float32)
        np.save(tmp / out_npy.name, empty)
        np.savez(tmp / out_stats.name, n_trs=0, dropped=reason)
        write_sidecar(tmp / out_npy.name, empty, parameters={"dropped": True}, sources={"bold": bold_path},
                      extra={"dropped": reason})
    log.warning("%s: subject %s %s; its outputs are empty", bold_path, subject, reason)
    return out_npy
