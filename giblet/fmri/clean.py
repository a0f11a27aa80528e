"""Cleaning one run of masked BOLD with nilearn: confounds, drift, high-motion volumes.

Each run is cleaned on its own, before the runs are joined and z-scored (:mod:`giblet.fmri.normalize`):

1. ``nilearn.signal.clean`` regresses out the confounds TSV's ``fmri.confounds`` columns (standardised,
   as nilearn does), a linear trend (``fmri.detrend``) and nilearn's cosine drift basis below
   ``fmri.high_pass_hz`` (built by ``nilearn.signal.create_cosine_drift`` and passed with the
   confounds), all in one least-squares fit, per voxel;
2. the run's mean is removed, so runs acquired at different baselines join without a step (one
   constant per run and voxel, learnt from no stimulus);
3. high-motion volumes (``framewise_displacement`` above ``fmri.motion.fd_threshold_mm``) are
   **interpolated**: nilearn leaves them out of the fit (its ``sample_mask``), and each is then
   replaced by a cubic spline through the kept volumes of the run (the nearest kept volume at the
   run's edges). The timeline keeps every volume, so it stays aligned with the movie; the sidecar
   lists the interpolated volumes.

Voxels are cleaned in blocks, so memory stays at the run's length x ``BLOCK_VOXELS`` in float64.

The cosine terms are passed as confounds, not as nilearn's ``filter="cosine"``, because nilearn then
drops its whole basis for the run whenever any confound correlates above 0.9 with one of its terms,
taking it for a user-supplied drift regressor: slow head-motion drifts do (in every run of the
tests' fMRIPrep-like data set), and the high-pass asked for would silently not happen.
Regressing both is harmless. What can still not be done is recorded by :func:`fit_notes`: a run too
short for any cosine term below the cut-off, and confounds the fit leaves out because they are
constant or a combination of the others (nilearn's pivoted QR). Each run's record (the z array's
sidecar, the rule's log, the report) says what was really removed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from giblet.fmri.confounds import FRAMEWISE_DISPLACEMENT, read_confounds

BLOCK_VOXELS = 16384
COSINE_CORRELATION = 0.9  # nilearn's filter="cosine" drops its basis when a confound correlates above this
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


def drift_terms(n: int, cleaning: Cleaning) -> np.ndarray:
    """nilearn's cosine drift regressors below ``high_pass_hz`` over a run of ``n`` volumes, the constant
    left out: (n, k), k = 0 when none is asked for or the run is too short for one."""
    from nilearn.signal import create_cosine_drift

    if not cleaning.high_pass_hz:
        return np.empty((n, 0))
    return create_cosine_drift(cleaning.high_pass_hz, np.arange(n) * cleaning.tr)[:, :-1]


def fit_notes(confounds: np.ndarray | None, names: tuple[str, ...], kept: np.ndarray, n: int,
              cleaning: Cleaning) -> dict:
    """What one run's fit really removes, decided as nilearn decides.

    ``confounds`` (n, k) regressors (columns ``names``) or None; ``kept`` the volumes in the fit (the
    others are high-motion). Returns ``{"high_pass": None (not asked) | "applied: ..." | "dropped:
    why", "dropped_confounds": {column: why}}``. An applied high-pass notes when nilearn's own filter
    would have dropped it (see the module docstring).
    """
    from scipy.linalg import qr
    from scipy.signal import detrend

    notes = {"high_pass": None, "dropped_confounds": {}}
    design = np.empty((n, 0)) if confounds is None else np.asarray(confounds, dtype=np.float64)
    labels = list(names) if confounds is not None else []
    if cleaning.high_pass_hz:
        cosines = drift_terms(n, cleaning)
        if cosines.shape[1] == 0:
            notes["high_pass"] = (f"dropped: the run ({n} volumes, {n * cleaning.tr:g} s) is too short for a "
                                  f"cosine term below {cleaning.high_pass_hz:g} Hz")
        else:
            notes["high_pass"] = f"applied: {cosines.shape[1]} cosine term(s) below {cleaning.high_pass_hz:g} Hz"
            correlation = _cross_correlation(cosines, design)
            if correlation.size and np.nanmax(correlation) > COSINE_CORRELATION:
                term, column = np.unravel_index(np.nanargmax(correlation), correlation.shape)
                notes["high_pass"] += (f" (nilearn's own filter would have dropped them: confound "
                                       f"{labels[column]!r} correlates {correlation[term, column]:.2f} with term "
                                       f"{term + 1})")
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
        if spread[column] < np.finfo(np.float64).eps:
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
    regressors = np.hstack([np.empty((n, 0)) if confounds is None else confounds, drift_terms(n, cleaning)])
    options = {"detrend": cleaning.detrend, "confounds": regressors if regressors.shape[1] else None,
               "standardize": False, "filter": False, "t_r": cleaning.tr,
               "sample_mask": kept if len(kept) < n else None}
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
