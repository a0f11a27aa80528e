"""Check the subjects' 4-D BOLD files before anything is computed from them.

Subjects must share the spatial shape, the affine and the TR, hold finite data, and have the same
number of usable TRs. Every failure is an :class:`~giblet.errors.InputError` naming the file and the
value that differs.

Trailing padding counts as missing data: the real Sherlock subject 5 ends with 50 volumes of a
constant. A trailing volume is padding when it equals the volume before it (a repeated volume) or
is flat (one value everywhere), both compared within the brain: the voxels that are finite and
non-zero in the subject's first volume.

Data are read in chunks of whole volumes, in time order, so memory stays at one chunk and a
``.nii.gz`` is decompressed once, forwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.openers import ImageOpener

from giblet.errors import InputError

log = logging.getLogger(__name__)

TR_TOLERANCE_S = 1e-3
AFFINE_TOLERANCE_MM = 1e-4
TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
SHORT_SUBJECTS = ("error", "truncate", "drop")
READ_BYTES = 8 * 2**20


def load_bold(path: str | Path) -> nib.Nifti1Image:
    """Open a 4-D NIfTI lazily (header only). Missing, unreadable and non-4-D files are InputErrors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        image = nib.load(path)
    except Exception as err:  # nibabel raises several types for a corrupt or foreign file
        raise InputError(path, f"cannot read as NIfTI ({type(err).__name__}: {err})") from err
    if len(image.shape) != 4:
        raise InputError(path, f"expected a 4-D image (x, y, z, time), got shape {tuple(image.shape)}")
    return image


def header_tr(image: nib.Nifti1Image) -> float:
    """The TR in seconds from ``pixdim[4]``, honouring the header's time unit (ms files exist)."""
    unit = image.header.get_xyzt_units()[1]
    return float(image.header.get_zooms()[3]) * TIME_UNIT_SECONDS.get(unit, 1.0)


def _raw_layout(image: nib.spatialimages.SpatialImage) -> tuple[str, int, np.dtype, float, float] | None:
    """(data file, byte offset, on-disk dtype, slope, intercept) of a file-backed Fortran-order image
    (NIfTI, Analyze), read from its array proxy; None for anything else."""
    proxy = image.dataobj
    if not (isinstance(proxy, ArrayProxy) and isinstance(proxy.file_like, str) and proxy.order == "F"):
        return None
    slope, inter = float(proxy.slope), float(proxy.inter)  # nibabel already maps "no scaling" to 1, 0
    return proxy.file_like, int(proxy.offset), np.dtype(proxy.dtype), slope, inter


def iter_chunks(image: nib.spatialimages.SpatialImage, path: Path, n_trs: int,
                chunk_trs: int, first: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, data)`` for TRs ``[first, first + n_trs)`` in order, ``start`` counted from
    ``first``; ``data`` is (x, y, z, c), scaled. ``first`` skips a run's dummy volumes.

    NIfTI volumes are read straight from the file (decompressing a ``.nii.gz`` forwards, once) into
    one reused buffer: no per-chunk allocation, so a consumer must copy what it keeps. ``data.T`` is
    then a C-contiguous (c, z, y, x) view, and ``data.T.reshape(c, -1)`` is free. The dtype is the
    file's, or float32 when the header scales the values. Other formats go through nibabel's proxy.
    A short or unreadable file is an InputError naming the file and the TR range.
    """
    layout = _raw_layout(image)
    if layout is None:
        for start in range(0, n_trs, chunk_trs):
            stop = min(start + chunk_trs, n_trs)
            try:
                yield start, np.asarray(image.dataobj[..., first + start:first + stop])
            except Exception as err:
                raise InputError(path, f"cannot read TRs {first + start}-{first + stop - 1} "
                                       f"({type(err).__name__}: {err})") from err
        return
    filename, offset, dtype, slope, inter = layout
    buffer = np.empty((min(chunk_trs, n_trs),) + tuple(image.shape[:3])[::-1], dtype=dtype)
    scaled = np.empty(buffer.shape, dtype=np.float32) if (slope, inter) != (1.0, 0.0) else None
    with ImageOpener(filename, "rb") as f:
        f.seek(offset + first * buffer[0].nbytes)  # forwards only: a .nii.gz decompresses the dummies once
        for start in range(0, n_trs, chunk_trs):
            raw = buffer[:min(chunk_trs, n_trs - start)]
            _read_exactly(f, raw, path, first + start)
            if scaled is not None:
                raw = np.multiply(raw, slope, out=scaled[:len(raw)], casting="unsafe")
                raw += inter
            yield start, raw.T


def _read_exactly(f, out: np.ndarray, path: Path, start: int) -> None:
    """Fill ``out`` (C-contiguous) from the file object, or raise an InputError naming the TRs.

    Reads at most READ_BYTES at a time: gzip's ``readinto`` goes through a temporary ``bytes`` of
    the requested size, which would otherwise double the chunk's memory.
    """
    view = memoryview(out.reshape(-1).view(np.uint8))
    filled = 0
    try:
        while filled < len(view):
            n = f.readinto(view[filled:filled + READ_BYTES])
            if not n:
                break
            filled += n
    except Exception as err:  # zlib/gzip/OS errors of a corrupt or truncated file
        raise InputError(path, f"cannot read TRs {start}-{start + len(out) - 1} "
                               f"({type(err).__name__}: {err})") from err
    if filled < len(view):
        raise InputError(path, f"file ends inside TRs {start}-{start + len(out) - 1}: truncated?")


def _scan_subject(image: nib.Nifti1Image, path: Path, chunk_trs: int = 32) -> dict:
    """Read every volume once: is any value finite, and how many trailing volumes are padding."""
    n_trs = image.shape[3]
    any_finite = False
    brain = previous = None
    is_padding = np.zeros(n_trs, dtype=bool)  # repeated or flat, within the brain
    for start, data in iter_chunks(image, path, n_trs, chunk_trs):
        volumes = data.T.reshape(data.shape[3], -1)  # (c, voxels): a free view of the F-ordered data
        any_finite = any_finite or bool(np.isfinite(volumes).any())
        if brain is None:
            first = volumes[0]
            brain = np.flatnonzero(np.isfinite(first) & (first != 0))
            if brain.size == 0:  # no brain in the first volume: compare every voxel
                brain = np.arange(first.size)
        inside = volumes[:, brain]
        for k, volume in enumerate(inside):
            flat = bool(np.all(volume == volume[0])) or bool(np.isnan(volume).all())
            repeated = previous is not None and np.array_equal(volume, previous, equal_nan=True)
            is_padding[start + k] = flat or repeated
            previous = volume
    trailing = n_trs - _last_false(is_padding) - 1
    return {"any_finite": any_finite, "trailing_constant_trs": int(trailing)}


def _last_false(flags: np.ndarray) -> int:
    """Index of the last False in a 1-D bool array, or -1."""
    false = np.flatnonzero(~flags)
    return int(false[-1]) if false.size else -1


def check_geometry(path: Path, image: nib.Nifti1Image, reference: dict | None, tr: float) -> None:
    """Raise if the shape or affine differs from the first subject's, or the header TR from ``tr``."""
    if reference is not None:
        shape, ref_shape = tuple(image.shape[:3]), tuple(reference["shape"])
        if shape != ref_shape:
            raise InputError(path, f"spatial shape {shape} differs from {ref_shape} of {reference['path']}")
        difference = float(np.max(np.abs(image.affine - reference["affine"])))
        if difference > AFFINE_TOLERANCE_MM:
            raise InputError(path, f"affine differs from that of {reference['path']} by up to {difference:.6g} "
                                   f"(max abs difference); subjects must be in the same space")
    found = header_tr(image)
    if abs(found - tr) > TR_TOLERANCE_S:
        raise InputError(path, f"header TR (pixdim[4]) is {found:g} s but the config's tr is {tr:g} s")


def _common_length(per_subject: dict, bold: dict[str, Path], short_subjects: str) -> tuple[list, int, list, dict]:
    """Apply the ``short_subjects`` policy. Returns (kept ids, n_trs, dropped ids, truncated {id: n_lost})."""
    usable = {sub: info["usable_trs"] for sub, info in per_subject.items()}
    longest = max(usable.values())
    short = [sub for sub, n in usable.items() if n < longest]
    kept, dropped, truncated = list(usable), [], {}
    if short and short_subjects == "error":
        sub = min(short, key=usable.get)
        padding, total = per_subject[sub]["trailing_constant_trs"], per_subject[sub]["n_trs"]
        padded = f" ({padding} trailing constant volumes of {total} count as missing)" if padding else ""
        raise InputError(bold[sub], f"subject {sub} has {usable[sub]} usable TRs{padded}, the others up to "
                                    f"{longest}; set fmri.short_subjects: truncate (cut every subject to the "
                                    f"shortest) or drop (leave the short subjects out)")
    if short and short_subjects == "drop":
        kept = [sub for sub in kept if sub not in short]
        dropped = short
        if len(kept) < 2:
            raise InputError(bold[short[0]], f"dropping the short subjects {short} leaves {len(kept)} subject(s); "
                                             f"at least 2 are needed (try fmri.short_subjects: truncate)")
        log.warning("dropped short subjects %s (usable TRs %s < %d)", short, [usable[s] for s in short], longest)
    n_trs = min(usable[sub] for sub in kept)
    truncated = {sub: usable[sub] - n_trs for sub in kept if usable[sub] > n_trs}
    if truncated:
        log.warning("truncated subjects to %d TRs (TRs lost: %s)", n_trs, truncated)
    return kept, n_trs, dropped, truncated


def check_bold_inputs(bold: dict[str, Path], tr: float, short_subjects: str = "error") -> dict:
    """Check every subject's BOLD file; return the JSON-serialisable facts the later stages use.

    ``bold`` maps subject id ("01") to its 4-D NIfTI path, in order; ``tr`` is in seconds. Returns
    ``{"subjects": kept ids, "n_trs": common T, "shape": [x, y, z], "affine": 4x4 list, "tr": tr,
    "per_subject": {id: {"path", "n_trs", "usable_trs", "trailing_constant_trs"}}, "dropped": [ids],
    "truncated": {id: TRs lost}}``. Headers are checked for all subjects before any data is read, so
    a geometry mistake fails fast.
    """
    if short_subjects not in SHORT_SUBJECTS:
        raise ValueError(f"short_subjects must be one of {SHORT_SUBJECTS}, got {short_subjects!r}")
    if not bold:
        raise ValueError("no BOLD files given")
    bold = {sub: Path(path) for sub, path in bold.items()}
    images, reference = {}, None
    for sub, path in bold.items():
        image = load_bold(path)
        check_geometry(path, image, reference, tr)
        if reference is None:
            reference = {"path": path, "shape": image.shape[:3], "affine": image.affine}
        images[sub] = image

    per_subject = {}
    for sub, image in images.items():
        path = bold[sub]
        scan = _scan_subject(image, path)
        if not scan["any_finite"]:
            raise InputError(path, "holds no finite value (all NaN or Inf)")
        n_trs = int(image.shape[3])
        per_subject[sub] = {"path": str(path), "n_trs": n_trs, "usable_trs": n_trs - scan["trailing_constant_trs"],
                            "trailing_constant_trs": scan["trailing_constant_trs"]}
        if scan["trailing_constant_trs"]:
            log.warning("%s: last %d of %d volumes are constant padding", path, scan["trailing_constant_trs"], n_trs)
        if per_subject[sub]["usable_trs"] < 2:
            raise InputError(path, f"has {per_subject[sub]['usable_trs']} usable TRs (of {n_trs}); need at least 2")

    kept, n_trs, dropped, truncated = _common_length(per_subject, bold, short_subjects)
    for sub, facts in per_subject.items():
        facts["runs"] = [{"bold": facts["path"], "confounds": None, "brain_mask": None,
                          "n_volumes_in_file": facts["n_trs"]}]
    # One run per subject, from the movie's start to its end (``stimulus`` end None: the movie decides).
    runs = [{"run": None, "session": None, "start_s": 0.0, "dummy_volumes": 0, "n_volumes": n_trs,
             "fmri": [0, n_trs], "stimulus": [0, None]}]
    return {
        "subjects": kept, "n_trs": n_trs, "shape": [int(n) for n in reference["shape"]],
        "affine": np.asarray(reference["affine"], dtype=float).tolist(), "tr": float(tr),
        "per_subject": per_subject, "dropped": dropped, "truncated": truncated, "runs": runs,
    }


def check_dummies(path: Path, image: nib.Nifti1Image, dummy_volumes: int) -> None:
    """Raise unless the run has more volumes than its dummies."""
    if dummy_volumes >= image.shape[3]:
        raise InputError(path, f"has {image.shape[3]} volumes, not more than its {dummy_volumes} "
                               f"dummy volumes (inputs.runs)")


def plan_runs(runs: dict[str, list[dict]], images: dict[Path, nib.Nifti1Image], tr: float,
              movie_duration_s: float) -> list[dict]:
    """The timeline of ``inputs.runs`` (:func:`giblet.fmri.runs.plan_timeline`), each run's length
    judged from every subject's volumes after the dummies, read from the headers in ``images``."""
    from giblet.fmri.runs import plan_timeline

    first = next(iter(runs.values()))
    table = [{key: run[key] for key in ("run", "session", "start_s", "dummy_volumes")} for run in first]
    per_subject = [[int(images[Path(run["bold"])].shape[3]) - run["dummy_volumes"] for run in entries]
                   for entries in runs.values()]
    kept = [list(counts) for counts in zip(*per_subject)]
    return plan_timeline(table, kept, tr, movie_duration_s, [Path(run["bold"]) for run in first])


def _run_files(run: dict) -> dict:
    return {key: (str(run[key]) if run.get(key) else None) for key in ("bold", "confounds", "brain_mask")}


def check_run_inputs(runs: dict[str, list[dict]], tr: float, movie_duration_s: float,
                     confound_columns: list[str] = ()) -> dict:
    """Check every subject's runs (``inputs.runs``): geometry, TR, finite data, each run's length
    against its movie segment (:mod:`giblet.fmri.runs`), and that each confounds file has a row per
    volume and the ``confound_columns``. Returns the same facts as :func:`check_bold_inputs` (every
    subject kept, ``n_trs`` the joined timeline's length) plus ``"runs"``, the timeline, and per
    subject ``"runs"``: its files and volume counts. Headers are checked before any data is read.
    """
    from giblet.fmri.confounds import check_tables
    from giblet.fmri.runs import check_run_length, run_label

    reference, images = None, {}
    for sub, entries in runs.items():
        for run in entries:
            path = Path(run["bold"])
            image = load_bold(path)
            check_geometry(path, image, reference, tr)
            if reference is None:
                reference = {"path": path, "shape": image.shape[:3], "affine": image.affine}
            images[path] = image
            check_dummies(path, image, run["dummy_volumes"])
    timeline = plan_runs(runs, images, tr, movie_duration_s)

    for sub, entries in runs.items():
        for run, placed in zip(entries, timeline):
            check_run_length(Path(run["bold"]), int(images[Path(run["bold"])].shape[3]), placed, tr)
    check_tables({run_label(sub, run): (Path(run["confounds"]), int(images[Path(run["bold"])].shape[3]))
                  for sub, entries in runs.items() for run in entries if run.get("confounds")},
                 list(confound_columns))

    per_subject = {}
    for sub, entries in runs.items():
        facts = [{**_run_files(run), "n_volumes_in_file": int(images[Path(run["bold"])].shape[3])} for run in entries]
        for run in entries:
            scan = _scan_subject(images[Path(run["bold"])], Path(run["bold"]))
            if not scan["any_finite"]:
                raise InputError(run["bold"], "holds no finite value (all NaN or Inf)")
        n_trs = timeline[-1]["fmri"][1]
        per_subject[sub] = {"path": str(entries[0]["bold"]), "n_trs": n_trs, "usable_trs": n_trs,
                            "trailing_constant_trs": 0, "runs": facts}
    return {"subjects": list(runs), "n_trs": timeline[-1]["fmri"][1], "shape": [int(n) for n in reference["shape"]],
            "affine": np.asarray(reference["affine"], dtype=float).tolist(), "tr": float(tr),
            "per_subject": per_subject, "dropped": [], "truncated": {}, "runs": timeline}

