"""The ``average_fmri`` stage: the group mean of the subjects' z arrays and the noise ceiling.

Both stream over blocks of voxels, so memory stays at (subjects x T x block) whatever the brain size.

The noise ceiling comes from inter-subject correlation (ISC), per voxel over all T TRs:
rho = mean pairwise Pearson correlation between subjects; the ceiling of one subject is
``sqrt(max(rho, 0))`` and that of the mean of N subjects ``sqrt(N rho / (1 + (N - 1) rho))``
(Spearman-Brown), 0 where rho <= 0. A subject whose voxel is all zeros (z = 0 where it was invalid,
see :mod:`giblet.fmri.normalize`) is left out of that voxel's pairs, and N counts only the subjects
left: their mean is the group mean up to a scale, which a correlation ignores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from giblet.errors import InputError
from giblet.files import atomic_output_dir, write_sidecar
from giblet.logs import progress as progress_bar

log = logging.getLogger(__name__)

BLOCK_BYTES = 128 * 2**20  # one float64 voxel block across all subjects; the working set is ~3x this


def _open_all(z_paths: list[Path]) -> list[np.ndarray]:
    """Memory-map every subject's z array; they must all be float (T, V) of one shape."""
    arrays = []
    for path in z_paths:
        try:
            array = np.load(path, mmap_mode="r")
        except Exception as err:
            raise InputError(path, f"cannot read as .npy ({type(err).__name__}: {err})") from err
        if array.ndim != 2:
            raise InputError(path, f"expected a 2-D (T, V) array, got shape {array.shape}")
        if arrays and array.shape != arrays[0].shape:
            raise InputError(path, f"shape {array.shape} differs from {arrays[0].shape} of {z_paths[0]}")
        arrays.append(array)
    return arrays


def _source_roles(z_paths: list[Path]) -> dict[str, Path]:
    """Sidecar source roles: the file stems ("sub-01_z"), or indices if two stems clash."""
    stems = [p.stem for p in z_paths]
    keys = stems if len(set(stems)) == len(stems) else [f"z_{k}" for k in range(len(z_paths))]
    return dict(zip(keys, z_paths))


def spearman_brown(rho: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Ceiling of the mean of ``n`` subjects from the mean pairwise correlation ``rho``; 0 where rho <= 0."""
    rho = np.maximum(rho, 0.0)
    return np.sqrt(n * rho / np.maximum(1 + (n - 1) * rho, 1e-12))


def block_isc(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pairwise correlation per voxel of ``block`` (S, T, v) float64, and the subjects counted (v,).

    With each subject's series centred and scaled to unit norm (u_s), the sum over pairs of u_s . u_t
    is ``(|sum_s u_s|^2 - k) / 2`` for k subjects with variance: O(S) instead of O(S^2).
    """
    centred = block - block.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("stv,stv->sv", centred, centred))
    has_variance = norms > 1e-12 * np.sqrt(block.shape[1])
    centred *= np.divide(1.0, norms, out=np.zeros_like(norms), where=has_variance)[:, None, :]
    total = centred.sum(axis=0)
    k = has_variance.sum(axis=0)
    pairs = k * (k - 1) / 2
    summed = (np.einsum("tv,tv->v", total, total) - k) / 2
    rho = np.divide(summed, pairs, out=np.zeros_like(summed), where=pairs > 0)
    return rho, k


def average_subjects(z_paths: list[Path], out_group: Path, out_ceiling: Path, progress: bool = True,
                     isc_trs: tuple[int, int] | None = None) -> dict:
    """Average the subjects' z arrays and compute the ISC noise ceiling; write both atomically.

    ``isc_trs``: the TRs ``[start, stop)`` the ISC (and so the ceiling and the reliable voxels) is
    computed on, the split's training block in the pipeline, so that choosing voxels by
    reliability never looks at the test block; None: every TR.

    Writes ``out_group`` float32 (T, V), the subject mean, with a JSON sidecar, and ``out_ceiling``
    (npz: ``isc`` (mean pairwise correlation), ``single``, ``group`` float32 (V,), ``n_valid``
    int16 (V,) (subjects counted per voxel) and ``n_subjects``). The two must share a directory.
    Returns a summary (medians over voxels).
    """
    z_paths = [Path(p) for p in z_paths]
    out_group, out_ceiling = Path(out_group), Path(out_ceiling)
    if out_group.parent.resolve() != out_ceiling.parent.resolve():
        raise ValueError(f"{out_group} and {out_ceiling} must be in the same directory")
    if not z_paths:
        raise ValueError("no subject z arrays given")
    arrays = _open_all(z_paths)
    n_subjects, (n_trs, n_voxels) = len(arrays), arrays[0].shape
    if n_subjects < 2:
        log.warning("one subject: the inter-subject noise ceiling is undefined and written as 0")
    block = max(1, BLOCK_BYTES // (8 * n_subjects * n_trs))
    isc_start, isc_stop = (0, n_trs) if isc_trs is None else (int(isc_trs[0]), int(isc_trs[1]))
    if not 0 <= isc_start < isc_stop - 2 < n_trs:
        raise ValueError(f"ISC TRs [{isc_start}, {isc_stop}) do not lie inside the {n_trs} TRs of {z_paths[0]}")

    isc = np.zeros(n_voxels, dtype=np.float32)
    n_valid = np.zeros(n_voxels, dtype=np.int16)
    with atomic_output_dir(out_group.parent) as tmp:
        group = np.lib.format.open_memmap(tmp / out_group.name, mode="w+", dtype=np.float32, shape=(n_trs, n_voxels))
        for start in progress_bar(range(0, n_voxels, block), "average subjects", "block", progress):
            stop = min(start + block, n_voxels)
            data = np.stack([np.asarray(a[:, start:stop], dtype=np.float64) for a in arrays])  # (S, T, v)
            group[:, start:stop] = data.mean(axis=0)
            isc[start:stop], n_valid[start:stop] = block_isc(data[:, isc_start:isc_stop])
        group.flush()
        single = np.sqrt(np.maximum(isc, 0.0)).astype(np.float32)
        group_ceiling = spearman_brown(isc.astype(np.float64), n_valid).astype(np.float32)
        np.savez(tmp / out_ceiling.name, isc=isc, single=single, group=group_ceiling, n_valid=n_valid,
                 n_subjects=n_subjects, isc_trs=np.array([isc_start, isc_stop]))
        write_sidecar(tmp / out_group.name, group, parameters={"n_subjects": n_subjects, "statistic": "mean"},
                      sources=_source_roles(z_paths))
        del group
    summary = {"n_subjects": n_subjects, "n_trs": int(n_trs), "n_voxels": int(n_voxels),
               "median_isc": float(np.median(isc)), "median_single_ceiling": float(np.median(single)),
               "median_group_ceiling": float(np.median(group_ceiling))}
    log.info("group mean of %d subjects: %s", n_subjects, summary)
    return summary
