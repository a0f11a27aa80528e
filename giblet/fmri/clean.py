"""Cleaning one run of masked BOLD with nilearn: confounds, drift, high-motion volumes.

Each run is cleaned on its own, before the runs are joined and z-scored (:mod:`giblet.fmri.normalize`):

1. ``nilearn.signal.clean`` regresses out the confounds TSV's ``fmri.confounds`` columns (standardised,
   as nilearn does), a linear trend (``fmri.detrend``) and a cosine drift basis below
   ``fmri.high_pass_hz``, all in one least-squares fit, per voxel;
2. the run's mean is removed, so runs acquired at different baselines join without a step (one
   constant per run and voxel, learnt from no stimulus);
3. high-motion volumes (``framewise_displacement`` above ``fmri.motion.fd_threshold_mm``) are
   **interpolated**: nilearn leaves them out of the fit (its ``sample_mask``), and each is then
   replaced by a cubic spline through the kept volumes of the run (the nearest kept volume at the
   run's edges). The timeline keeps every volume, so it stays aligned with the movie; the sidecar
   lists the interpolated volumes.

Voxels are cleaned in blocks, so memory stays at the run's length x ``BLOCK_VOXELS`` in float64.

nilearn may quietly leave part of the requested fit out: its cosine basis, when a confound already
correlates above 0.9 with one of its terms or the run is too short for any, and confounds that are
constant or a combination of the others (its pivoted QR). :func:`fit_notes` decides this as nilearn
does, so each run's record (the z array's sidecar, the rule's log, the report) says what was really
removed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from giblet.fmri.confounds import FRAMEWISE_DISPLACEMENT, read_confounds

BLOCK_VOXELS = 16384
COSINE_CORRELATION = 0.9  # nilearn keeps only the confounds when one correlates above this with a cosine
RANK_TOLERANCE = 100 * np.finfo(np.float64).eps  # nilearn's pivoted QR drops directions below this


@dataclass(frozen=True)
class Cleaning:
    """What is removed from each run; see the module docstring. ``confounds`` are column names
    (empty: none, or no confounds file); ``tr`` in seconds."""

    tr: float
    confounds: tuple[str, ...] = ()
    high_pass_hz: float | None = None
    detrend: bool = False
    fd_threshold_mm: float | None = None

    @classmethod
    def from_params(cls, params: dict) -> "Cleaning":
        """From the ``normalize_fmri`` rule's ``cleaning`` param (:func:`giblet.rules.params`)."""
        return cls(tr=float(params["tr"]), confounds=tuple(params["confounds"]),
                   high_pass_hz=params["high_pass_hz"], detrend=bool(params["detrend"]),
                   fd_threshold_mm=params["fd_threshold_mm"])

    def columns(self) -> list[str]:
        """The confounds TSV columns read: the regressors, and the displacement when motion is handled."""
        return list(self.confounds) + ([FRAMEWISE_DISPLACEMENT] if self.fd_threshold_mm is not None else [])

    def removes_anything_but_the_mean(self) -> bool:
        return bool(self.confounds or self.high_pass_hz or self.detrend or self.fd_threshold_mm is not None)


def run_confounds(read: dict, cleaning: Cleaning) -> tuple[np.ndarray | None, np.ndarray]:
    """One run's confound regressors (n, k) float64 or None, and its high-motion flags (n,) bool, for
    the volumes used (dummies dropped). ``read`` is a :func:`giblet.fmri.runs.subject_reads` entry."""
    n, first = read["n"], read["first"]
    high_motion = np.zeros(n, dtype=bool)
    if not read.get("confounds") or not cleaning.columns():
        return None, high_motion
    table = read_confounds(read["confounds"], cleaning.columns(), read["n_volumes_in_file"])[first:first + n]
    if cleaning.fd_threshold_mm is not None:
        high_motion = table[:, -1] > cleaning.fd_threshold_mm
        table = table[:, :-1]
    return (table if table.shape[1] else None), high_motion


def fit_notes(confounds: np.ndarray | None, names: tuple[str, ...], kept: np.ndarray, n: int,
              cleaning: Cleaning) -> dict:
    """What ``nilearn.signal.clean`` will leave out of one run's fit, decided as nilearn decides.

    ``confounds`` (n, k) regressors (columns ``names``) or None; ``kept`` the volumes in the fit (the
    others are high-motion). Returns ``{"high_pass": None (not asked) | "applied" | "dropped: why",
    "dropped_confounds": {column: why}}``.
    """
    from nilearn.signal import create_cosine_drift
    from scipy.linalg import qr
    from scipy.signal import detrend

    notes = {"high_pass": None, "dropped_confounds": {}}
    design = np.empty((n, 0)) if confounds is None else np.asarray(confounds, dtype=np.float64)
    labels = list(names) if confounds is not None else []
    if cleaning.high_pass_hz:
        # Over every volume of the run, before censoring, as nilearn builds it.
        cosines = create_cosine_drift(cleaning.high_pass_hz, np.arange(n) * cleaning.tr)[:, :-1]
        correlation = _cross_correlation(cosines, design)
        if cosines.shape[1] == 0:
            notes["high_pass"] = (f"dropped: the run ({n} volumes, {n * cleaning.tr:g} s) is too short for a "
                                  f"cosine term below {cleaning.high_pass_hz:g} Hz")
        elif correlation.size and np.nanmax(correlation) > COSINE_CORRELATION:
            term, column = np.unravel_index(np.nanargmax(correlation), correlation.shape)
            notes["high_pass"] = (f"dropped: confound {labels[column]!r} correlates {correlation[term, column]:.2f} "
                                  f"with cosine term {term + 1}, and nilearn then uses the confounds alone")
        else:
            notes["high_pass"] = "applied"
            design = np.hstack([design, cosines])
            labels += [f"cosine term {k + 1}" for k in range(cosines.shape[1])]
    if not design.shape[1]:
        return notes
    rows = design[kept]
    if cleaning.detrend:
        rows = detrend(rows, axis=0, type="linear")
    centred = rows - rows.mean(axis=0)
    spread = centred.std(axis=0)
    standardized = centred / np.where(spread < np.finfo(np.float64).eps, 1.0, spread)
    _, r, order = qr(standardized, mode="economic", pivoting=True)
    rank = int((np.abs(np.diag(r)) > RANK_TOLERANCE).sum())
    for column in sorted(order[rank:]):
        if labels[column].startswith("cosine term"):
            why = "collinear with the confounds"
        elif spread[column] < np.finfo(np.float64).eps:
            why = "constant in this run" + (" once detrended (a linear trend)" if cleaning.detrend else "")
        else:
            why = "a linear combination of the other regressors"
        notes["dropped_confounds"][labels[column]] = why
    return notes


def _cross_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b``: (a cols, b cols); NaN for a
    constant column (nilearn's test then passes it by)."""
    if not a.shape[1] or not b.shape[1]:
        return np.empty((a.shape[1], b.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(a.T, b.T)[:a.shape[1], a.shape[1]:]


def clean_run(rows: np.ndarray, confounds: np.ndarray | None, high_motion: np.ndarray, cleaning: Cleaning,
              names: tuple[str, ...] = ()) -> dict:
    """Clean one run's masked data ``rows`` (n, V) float32 in place; see the module docstring.

    ``confounds`` (n, k) regressors named ``names``, or None; ``high_motion`` (n,) bool, the volumes to
    interpolate. Returns :func:`fit_notes` plus ``"nilearn_warnings"``: what nilearn warned of (its
    notices about future defaults aside).
    """
    from nilearn.signal import clean

    n = len(rows)
    kept = np.flatnonzero(~high_motion)
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} of {n} volumes are below the motion threshold")
    options = {"detrend": cleaning.detrend, "confounds": confounds, "standardize": False,
               "filter": "cosine" if cleaning.high_pass_hz else False, "high_pass": cleaning.high_pass_hz,
               "t_r": cleaning.tr, "sample_mask": kept if len(kept) < n else None}
    notes = fit_notes(confounds, names, kept, n, cleaning)
    notices = set()
    for start in range(0, rows.shape[1], BLOCK_VOXELS):
        block = rows[:, start:start + BLOCK_VOXELS].astype(np.float64)
        if cleaning.removes_anything_but_the_mean():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cleaned = clean(block, **options)
            notices.update(str(w.message) for w in caught if not issubclass(w.category, (FutureWarning,
                                                                                        DeprecationWarning)))
        else:
            cleaned = block
        cleaned = cleaned - cleaned.mean(axis=0)
        rows[:, start:start + BLOCK_VOXELS] = interpolate_volumes(cleaned, kept, n) if len(kept) < n else cleaned
    return {**notes, "nilearn_warnings": sorted(notices)}


def interpolate_volumes(values: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """(n, V): ``values`` (len(kept), V) at volumes ``kept``, the others filled by a cubic spline in
    time through the kept ones (scipy's ``CubicSpline``, not-a-knot); before the first and after the
    last kept volume, the nearest one.

    A spline's value is linear in the data, so the spline is fitted once to the identity (one column
    per kept volume) and its rows at the missing volumes weight the data: the same numbers as a
    spline per voxel, at the cost of a small matrix product.
    """
    from scipy.interpolate import CubicSpline

    times = np.arange(n)
    out = np.empty((n, values.shape[1]), dtype=values.dtype)
    out[kept] = values
    missing = np.setdiff1d(times, kept)
    inside = missing[(missing > kept[0]) & (missing < kept[-1])]
    if len(inside):
        weights = CubicSpline(kept, np.eye(len(kept)), axis=0)(inside)  # (len(inside), len(kept))
        out[inside] = weights @ values
    out[missing[missing < kept[0]]] = values[0]
    out[missing[missing > kept[-1]]] = values[-1]
    return out
