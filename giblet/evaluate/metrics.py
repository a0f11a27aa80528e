"""Encoding metrics (stimulus -> brain) on one held-out block: small pure-numpy functions, no model or file access.

Encoding is scored **per voxel over time**: the Pearson r between a voxel's predicted and measured
time courses across the N test TRs (:func:`pearson_columns`). A correlation *across voxels within one
TR* (a spatial correlation) mostly measures whether the prediction has the brain's average spatial
pattern, which a model gets right without following the movie at all; it is used here only where it
is the right tool: timepoint identification (which TR does this predicted pattern belong to?).
:func:`fmri_metrics` gathers them all, with the fraction of the noise ceiling and a circular-shift
null. The decoding metrics (brain -> stimulus) are in :mod:`giblet.evaluate.decoding_metrics`.

Every function returns a dict of plain Python numbers (JSON-ready; ``None`` where a value is
undefined, never NaN). Ties in a ranking count against the model (a constant prediction scores 0,
not chance).
"""

from __future__ import annotations

import numpy as np

# Voxels whose noise ceiling is at least this are "reliable" (see reliable_voxels).
RELIABLE_THRESHOLD = 0.3
# fraction_of_ceiling's voxelwise median uses voxels whose ceiling exceeds this (r / ceiling explodes below).
RATIO_MIN_CEILING = 0.1
# Null voxels are processed in blocks of this many (bounds the FFT's memory on whole-brain data).
_VOXEL_BLOCK = 16384


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b``, over axis 0.

    Parameters
    ----------
    a, b : array of shape (n_samples, n_columns)
        E.g. predicted and measured fMRI, (n_trs, n_voxels).

    Returns
    -------
    r : array of shape (n_columns,), float64
        The correlation of each column over samples. A column that is constant in ``a`` or ``b``
        gives 0 (no NaN, no warning).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (n_samples, n_columns) arrays of one shape, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denominator = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    numerator = (a * b).sum(axis=0)
    r = np.zeros(a.shape[1])
    np.divide(numerator, denominator, out=r, where=denominator > 0)
    return np.clip(r, -1.0, 1.0)


def reliable_voxels(ceiling: np.ndarray, threshold: float = RELIABLE_THRESHOLD) -> np.ndarray:
    """Voxels whose noise ceiling is high enough that their prediction accuracy can be measured.

    Rule: ``ceiling >= threshold``, default 0.3. Why 0.3: (1) the ceiling is the r a perfect
    model would reach, and a voxel whose ceiling is below ~3 standard errors of r under no effect
    (about 1 / sqrt(N) = 0.1 for N = 100 test TRs) cannot show its accuracy on a test block;
    (2) the ISC ceiling estimate (Spearman-Brown on a mean pairwise correlation, then a square root)
    inflates noise: on the demo, whose truth is known, pure-noise voxels reach ISC ceilings of
    ~0.37 at their 95th percentile, and ``>= 0.3`` keeps 90 % of the signal voxels with under 8 %
    noise voxels among those kept (``>= 0.2``: 95 % and 15 %). The demo's exact ceiling is 0 for
    its null region and 0.2-0.9 elsewhere.

    Parameters
    ----------
    ceiling : array of shape (n_voxels,)
        Noise ceiling per voxel (a correlation).
    threshold : float

    Returns
    -------
    reliable : bool array of shape (n_voxels,)
    """
    ceiling = np.asarray(ceiling, dtype=np.float64)
    return np.nan_to_num(ceiling, nan=0.0) >= threshold


def _within_chance(n: int, radius: int) -> float:
    """Chance of a uniformly random guess among ``n`` TRs landing within ``radius`` TRs of the true one."""
    i = np.arange(n)
    counts = np.minimum(i + radius, n - 1) - np.maximum(i - radius, 0) + 1
    return float(counts.sum() / n / n)


def center_rows(x: np.ndarray) -> np.ndarray:
    """Center and unit-normalize each row of ``x`` (n_rows, n_columns), keeping its float dtype, so
    that ``center_rows(a) @ center_rows(b).T`` is the Pearson r (across columns) of every row of ``a``
    with every row of ``b``; constant rows -> 0."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def identification(pred: np.ndarray, true: np.ndarray, radius: int = 2) -> dict:
    """Timepoint identification: which of the N measured TRs does each predicted pattern match best?

    Each voxel is first centered over the N TRs (in ``pred`` and ``true`` separately), so the
    shared average pattern cannot make every TR look alike. Then, for each TR ``i``, the predicted
    pattern ``pred[i]`` is correlated (Pearson, across voxels) with every measured pattern
    ``true[j]`` and the candidates are ranked. Ties count against the model.

    Parameters
    ----------
    pred, true : arrays of shape (n_trs, n_voxels)
    radius : int
        ``within`` counts a TR as identified when the best match lies within ``radius`` TRs.

    Returns
    -------
    dict
        ``top1``, ``top5`` (fraction of TRs whose true pattern ranks first / in the first 5),
        ``within_2tr`` (the best match lies within ``radius`` TRs; the key keeps the name for the
        default radius 2), and their chance levels ``chance_top1`` = 1/N, ``chance_top5`` =
        min(5, N)/N, ``chance_within_2tr`` = the mean fraction of TRs within ``radius`` (about
        (2 radius + 1)/N, less at the block's edges); ``n_trs``, ``n_voxels``.
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"expected two (n_trs, n_voxels) arrays of one shape, got {pred.shape} and {true.shape}")
    n = pred.shape[0]
    p = center_rows(pred - pred.mean(axis=0))
    t = center_rows(true - true.mean(axis=0))
    scores = p @ t.T                                     # (N, N): scores[i, j] = r(pred[i], true[j])
    correct = np.diag(scores)[:, None]
    others = ~np.eye(n, dtype=bool)
    rank = ((scores >= correct) & others).sum(axis=1)   # candidates at least as good as the right one
    offsets = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    near = np.where(offsets <= radius, scores, -np.inf).max(axis=1)
    far = np.where(offsets > radius, scores, -np.inf).max(axis=1)
    return {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)),
            "within_2tr": float(np.mean(near > far)),
            "chance_top1": 1.0 / n, "chance_top5": min(5, n) / n, "chance_within_2tr": _within_chance(n, radius),
            "radius_trs": radius, "n_trs": n, "n_voxels": int(pred.shape[1])}


def _standardize(x: np.ndarray) -> np.ndarray:
    """Columns to mean 0 and unit root-mean-square over axis 0 (constant columns -> 0)."""
    x = x - x.mean(axis=0)
    sd = np.sqrt((x * x).mean(axis=0))
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)


def shifted_r(pred: np.ndarray, true: np.ndarray, shifts) -> np.ndarray:
    """Per-voxel r of circularly shifted predictions: row ``s`` is
    ``pearson_columns(np.roll(pred, shifts[s], axis=0), true)``.

    Computed for all shifts at once with FFTs (circular cross-correlation), in voxel blocks.

    Parameters
    ----------
    pred, true : arrays of shape (n_trs, n_voxels)
    shifts : sequence of int

    Returns
    -------
    r : array of shape (n_shifts, n_voxels), float64
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=int) % pred.shape[0]
    n, n_voxels = pred.shape
    out = np.empty((len(shifts), n_voxels))
    for start in range(0, n_voxels, _VOXEL_BLOCK):
        block = slice(start, start + _VOXEL_BLOCK)
        zp, zt = _standardize(pred[:, block]), _standardize(true[:, block])
        # irfft(conj(F(p)) * F(t))[s] = sum_t p[t] true[t + s] = sum_t roll(p, s)[t] true[t]
        cc = np.fft.irfft(np.conj(np.fft.rfft(zp, axis=0)) * np.fft.rfft(zt, axis=0), n=n, axis=0) / n
        out[:, block] = cc[shifts]
    return np.clip(out, -1.0, 1.0)


def null_shifts(n: int, min_shift: int, n_null: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """The circular shifts of the null: at least ``min_shift`` TRs away from 0 and from ``n``.

    All allowed shifts ``[min_shift, n - min_shift]`` when there are at most ``n_null`` of them,
    else ``n_null`` of them drawn without replacement (seeded). When the block is too short for
    ``min_shift``, it is lowered to ``max(1, n // 4)``. Returns (sorted shifts, min_shift used).
    """
    if n < 2:
        return np.zeros(0, dtype=int), 0
    min_shift = int(min_shift)
    if n - 2 * min_shift + 1 < 1:
        min_shift = max(1, n // 4)
    allowed = np.arange(min_shift, n - min_shift + 1)
    if len(allowed) > n_null:
        allowed = np.sort(np.random.default_rng(seed).choice(allowed, size=n_null, replace=False))
    return allowed, min_shift


def fmri_metrics(pred: np.ndarray, true: np.ndarray, ceiling: np.ndarray | None = None,
                 reliable: np.ndarray | None = None, n_null: int = 100, seed: int = 0,
                 min_shift: int = 10) -> dict:
    """Encoding accuracy on one block: per-voxel r over time, fraction of the ceiling, identification, null.

    Parameters
    ----------
    pred, true : arrays of shape (n_trs, n_voxels)
        Predicted and measured fMRI of the block's TRs, in time order (the null shifts in time).
    ceiling : array of shape (n_voxels,) or None
        Noise ceiling per voxel: the r a perfect model reaches with the measured data.
    reliable : bool array of shape (n_voxels,) or None
        The voxels that summaries ``*_reliable``, identification and the null use
        (e.g. :func:`reliable_voxels`). None: every voxel.
    n_null : int
        At most this many circular shifts in the null (see :func:`null_shifts`).
    seed : int
        Seeds the choice of shifts when there are more than ``n_null``.
    min_shift : int
        Shifts lie at least this many TRs from 0 and from N, so the shifted prediction shares no
        timing with the original through the signal's autocorrelation (the HRF spans ~15-20 s; the
        evaluation passes the model's lag window, ``lag_trs``).

    Returns
    -------
    dict
        - ``r_mean``, ``r_median``: per-voxel r over time, summarized over all voxels;
        - ``r_mean_reliable``, ``n_reliable``: the mean over reliable voxels (None if there are none);
        - ``fraction_of_ceiling`` (None without a ceiling): ``ratio_of_means`` = mean r over reliable
          voxels / mean ceiling over the same voxels (the headline number), and
          ``median_voxelwise`` = median over voxels with ceiling > 0.1 of r / ceiling, with
          ``n_voxels_voxelwise``;
        - ``identification``: see :func:`identification`, over the reliable voxels (all voxels when
          there are none), with ``voxels`` saying which;
        - ``null``: the statistic (``r_mean_reliable``, or ``r_mean`` without reliable voxels) for
          predictions circularly shifted in time: its ``mean``, ``p95``, ``p99``, ``p_value`` =
          (1 + #{null >= observed}) / (1 + n_null), the shifts used, and ``voxel_r_p95``: the
          95th percentile of single-voxel null r pooled over voxels and shifts (a map threshold).
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"expected two (n_trs, n_voxels) arrays of one shape, got {pred.shape} and {true.shape}")
    n, n_voxels = pred.shape
    r = pearson_columns(pred, true)
    if reliable is None:
        reliable = np.ones(n_voxels, dtype=bool)
    reliable = np.asarray(reliable, dtype=bool)
    if reliable.shape != (n_voxels,):
        raise ValueError(f"reliable must have shape ({n_voxels},), got {reliable.shape}")
    n_reliable = int(reliable.sum())
    out = {"n_trs": n, "n_voxels": n_voxels, "r_mean": float(r.mean()), "r_median": float(np.median(r)),
           "r_mean_reliable": float(r[reliable].mean()) if n_reliable else None, "n_reliable": n_reliable,
           "fraction_of_ceiling": None}

    if ceiling is not None:
        ceiling = np.nan_to_num(np.asarray(ceiling, dtype=np.float64), nan=0.0)
        if ceiling.shape != (n_voxels,):
            raise ValueError(f"ceiling must have shape ({n_voxels},), got {ceiling.shape}")
        ratio_voxels = ceiling > RATIO_MIN_CEILING
        mean_ceiling = float(ceiling[reliable].mean()) if n_reliable else 0.0
        out["fraction_of_ceiling"] = {
            "ratio_of_means": _finite(r[reliable].mean() / mean_ceiling) if mean_ceiling > 0 else None,
            "ratio_of_means_voxels": "reliable",
            "mean_ceiling_reliable": mean_ceiling if n_reliable else None,
            "median_voxelwise": (float(np.median(r[ratio_voxels] / ceiling[ratio_voxels]))
                                 if ratio_voxels.any() else None),
            "median_voxelwise_min_ceiling": RATIO_MIN_CEILING,
            "n_voxels_voxelwise": int(ratio_voxels.sum()),
        }

    used = reliable if n_reliable else np.ones(n_voxels, dtype=bool)
    out["identification"] = {**identification(pred[:, used], true[:, used]),
                             "voxels": "reliable" if n_reliable else "all"}

    shifts, used_min_shift = null_shifts(n, min_shift, n_null, seed)
    statistic = "r_mean_reliable" if n_reliable else "r_mean"
    observed = out[statistic]
    if len(shifts):
        null_r = shifted_r(pred, true, shifts)           # (S, V)
        null = null_r[:, used].mean(axis=1)
        out["null"] = {
            "method": "predictions circularly shifted in time (np.roll over the block's TRs)",
            "statistic": statistic, "observed": observed, "n_null": int(len(shifts)),
            "min_shift": used_min_shift, "min_shift_requested": int(min_shift),
            "shift_range": [int(shifts.min()), int(shifts.max())],
            "mean": float(null.mean()), "p95": float(np.percentile(null, 95)), "p99": float(np.percentile(null, 99)),
            "p_value": float((1 + np.sum(null >= observed)) / (1 + len(null))),
            "voxel_r_p95": float(np.percentile(null_r.astype(np.float32), 95)),
        }
    else:
        out["null"] = None
    return out
