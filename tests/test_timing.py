"""The TR grid and the HRF: causal, peaking ~5 s after the stimulus, no time-warping."""

import numpy as np
import pytest

from giblet import timing


@pytest.mark.parametrize("duration, tr, expected", [
    (660.0, 1.5, 440), (659.99, 1.5, 439), (1.4, 1.5, 0), (2963.9, 1.5, 1975),
    (0.1 * 3 * 1.5 / 0.1 * 100, 1.5, 300),  # float rounding must not lose the last TR
])
def test_n_trs_is_floor_of_duration_over_tr(duration, tr, expected):
    assert timing.n_trs(duration, tr) == expected


def test_n_trs_rejects_bad_tr():
    with pytest.raises(ValueError, match="tr must be positive"):
        timing.n_trs(10.0, 0.0)


def test_tr_of_time_uses_half_open_windows():
    times = [0.0, 1.4999, 1.5, 2.99, 3.0, 1001 / 30000 * 45]
    expected = [0, 0, 1, 1, 2, 1]
    np.testing.assert_array_equal(timing.tr_of_time(times, 1.5), expected)
    assert [timing.tr_index(t, 1.5) for t in times] == expected


def test_convolution_matches_numpy_reference():
    rng = np.random.default_rng(0)
    dt = 0.1
    x = rng.standard_normal((500, 3))
    kernel = timing.hrf_kernel(dt)
    expected = np.stack([np.convolve(x[:, k], kernel)[:500] for k in range(3)], axis=1)
    np.testing.assert_allclose(timing.convolve_hrf(x, dt), expected, atol=1e-10)


def test_impulse_response_is_causal_and_peaks_five_seconds_later():
    """DESIGN principle 5: a stimulus at TR t moves the BOLD at t + ~5 s / tr, never before."""
    tr, dt, n = 1.5, 0.1, 60
    fine = np.zeros(int(n * tr / dt))
    onset_tr = 20
    fine[int(onset_tr * tr / dt): int((onset_tr + 1) * tr / dt)] = 1.0  # stimulus fills TR 20
    bold = timing.sample_at_volumes(timing.convolve_hrf(fine, dt), dt, tr, n)
    assert np.abs(bold[:onset_tr]).max() < 1e-12  # nothing before the stimulus
    peak_tr = int(np.argmax(bold))
    assert abs((peak_tr - onset_tr) * tr - 5.0) <= tr, f"peak {peak_tr - onset_tr} TRs after onset"


def test_sample_at_volumes_reads_the_middle_of_each_volume():
    dt, tr = 0.1, 1.5
    t = np.arange(300) * dt
    values = timing.sample_at_volumes(np.stack([t, 2 * t], axis=1), dt, tr, 19)
    np.testing.assert_allclose(values[:, 0], (np.arange(19) + 0.5) * tr)
    np.testing.assert_allclose(values[:, 1], 2 * (np.arange(19) + 0.5) * tr)
    with pytest.raises(ValueError, match="too short"):
        timing.sample_at_volumes(t, dt, tr, 25)
