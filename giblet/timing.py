"""The TR grid and the hemodynamic delay: every stage handles time through this module.

Conventions (every stage uses the same TR grid, so the modalities line up without time-warping):

- TR ``i`` covers the stimulus interval ``[i * tr, (i + 1) * tr)`` seconds.
- A recording of ``duration`` seconds has ``n_trs = floor(duration / tr)`` TRs; a trailing partial
  TR is dropped, never stretched. Modalities are truncated to a common length, never time-warped.
- fMRI volume ``i`` is referenced to the middle of its acquisition, ``(i + 0.5) * tr``.
- The hemodynamic response is causal: a stimulus at time ``t`` affects the BOLD signal only after
  ``t`` and peaks about 5 s later (nilearn's Glover HRF).
"""

from __future__ import annotations

import math

import numpy as np

# A duration that is a whole number of TRs up to float rounding (e.g. 660.0000001 / 1.5) must not
# lose its last TR.
_EPS = 1e-6


def n_trs(duration_s: float, tr: float) -> int:
    """Number of whole TRs in ``duration_s`` seconds: ``floor(duration / tr)``."""
    if tr <= 0:
        raise ValueError(f"tr must be positive, got {tr}")
    if duration_s < 0:
        raise ValueError(f"duration must be non-negative, got {duration_s}")
    return int(math.floor(duration_s / tr + _EPS))


def tr_index(t_s: float, tr: float) -> int:
    """Scalar :func:`tr_of_time` for per-frame loops (no numpy call overhead)."""
    return math.floor(t_s / tr + _EPS)


def tr_of_time(t_s: np.ndarray | float, tr: float) -> np.ndarray:
    """Index of the TR whose window ``[i*tr, (i+1)*tr)`` contains time ``t_s`` (seconds)."""
    return np.floor(np.asarray(t_s, dtype=np.float64) / tr + _EPS).astype(np.int64)


def volume_times(n: int, tr: float) -> np.ndarray:
    """Reference time (s) of each fMRI volume: the middle of its acquisition, ``(i + 0.5) * tr``."""
    return (np.arange(n) + 0.5) * tr


def hrf_peak_trs(tr: float) -> int:
    """TRs from a stimulus to the peak of its response (the Glover HRF's peak, ~5 s): 3 at 1.5 s."""
    kernel = hrf_kernel(0.01)
    return int(round(np.argmax(kernel) * 0.01 / tr))


# A brain volume belongs to the window the decoders read for a stimulus TR when its response to that
# TR is at least this fraction of the strongest volume's.
DECODE_WINDOW_FRACTION = 0.75


def hrf_window_trs(tr: float) -> tuple[int, int]:
    """``(first, last)``: the brain volumes ``s + first .. s + last`` that respond most to stimulus TR ``s``.

    The response to a stimulus lasting TR ``s`` (the Glover HRF convolved with a TR-long boxcar),
    read at each later volume's reference time ``(k + 0.5) * tr`` after the TR's start; the volumes
    at ``DECODE_WINDOW_FRACTION`` of the strongest or more. At 1.5 s: volumes 3 and 4 after (0.93 and 1
    of the peak; volume 2 has 0.55, volume 5 0.51).
    """
    dt = 0.01
    kernel = hrf_kernel(dt)
    response = np.convolve(kernel, np.ones(max(1, int(round(tr / dt)))))[: len(kernel)]
    lags = np.arange(int(len(kernel) * dt / tr) - 1)
    values = response[np.round((lags + 0.5) * tr / dt).astype(int)]
    keep = np.flatnonzero(values >= DECODE_WINDOW_FRACTION * values.max())
    return int(keep[0]), int(keep[-1])


def decode_delay_trs(tr: float, lag_trs: int) -> int:
    """TRs before a window's end of the stimulus the decoders reconstruct: the last volume of
    :func:`hrf_window_trs`, so the window of brain TRs the decoders read ends at the target; within the
    stimulus window."""
    return min(hrf_window_trs(tr)[1], int(lag_trs) - 1)


def decode_window_trs(tr: float, lag_trs: int) -> int:
    """Brain TRs the decoders read, ending at the target: :func:`hrf_window_trs`'s volumes."""
    first, last = hrf_window_trs(tr)
    return max(1, min(last, int(lag_trs) - 1) - first + 1)


def hrf_kernel(dt: float, length_s: float = 32.0) -> np.ndarray:
    """nilearn's Glover HRF sampled every ``dt`` seconds from lag 0; sums to 1, peaks near 5 s.

    Returns shape ``(ceil(length_s / dt),)``; element ``k`` is the response at lag ``k * dt``.
    """
    from nilearn.glm.first_level import glover_hrf

    return glover_hrf(dt, oversampling=1, time_length=length_s)


def convolve_hrf(signal: np.ndarray, dt: float) -> np.ndarray:
    """Causally convolve ``signal`` (n_samples, ...) sampled every ``dt`` s with the HRF.

    ``out[n] = sum_k h[k] * signal[n - k]`` with zeros before the start, so the output at time t
    depends only on the input at times <= t. Same shape as the input.
    """
    from scipy.signal import fftconvolve  # 0.8 s to import: not at the start of every stage that reads the TR grid

    signal = np.asarray(signal, dtype=np.float64)
    kernel = hrf_kernel(dt).reshape((-1,) + (1,) * (signal.ndim - 1))
    return fftconvolve(signal, kernel, axes=0)[: signal.shape[0]]


def sample_at_volumes(signal: np.ndarray, dt: float, tr: float, n: int) -> np.ndarray:
    """Sample a signal on a fine grid (step ``dt``, first sample at t=0) at ``n`` volume times.

    Linear interpolation along axis 0. Returns shape ``(n, ...)``.
    """
    signal = np.asarray(signal)
    t_fine = np.arange(signal.shape[0]) * dt
    t_vol = volume_times(n, tr)
    if t_vol[-1] > t_fine[-1] + _EPS:
        raise ValueError(f"signal of {t_fine[-1] + dt:.2f} s is too short for {n} volumes of {tr} s")
    flat = signal.reshape(signal.shape[0], -1)
    out = np.stack([np.interp(t_vol, t_fine, col) for col in flat.T], axis=1)
    return out.reshape((n,) + signal.shape[1:])
