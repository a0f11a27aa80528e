"""Splits: contiguous blocks whose windows never reach another block's targets."""

import pytest

from giblet.config import load_config
from giblet.splits import SplitError, plan_split


def split_params(*overrides):
    return load_config(None, list(overrides))["split"]


def stimulus_trs_of_windows(split, name):
    trs = set()
    for t in split.targets(name):
        trs.update(range(*split.window(t)))
    return trs


@pytest.mark.parametrize("n_trs, shift, lag", [(440, 0, 10), (1976, 3, 10), (300, 0, 1), (500, 5, 20)])
def test_no_training_window_touches_a_validation_or_test_target(n_trs, shift, lag):
    split = plan_split(n_trs, n_trs, split_params(f"split.lag_trs={lag}"), shift)
    train_inputs = stimulus_trs_of_windows(split, "train")
    for other in ("val", "test"):
        # A target's own stimulus TR (t + shift) and its whole window are out of every training window.
        assert not train_inputs & stimulus_trs_of_windows(split, other)
        assert not set(split.targets("train")) & set(split.targets(other))
    starts = [split.ranges[n][0] for n in ("train", "val", "test")]
    assert starts == sorted(starts)  # contiguous blocks in time order
    for name in ("train", "val", "test"):
        for t in split.targets(name):
            a, b = split.window(t)
            assert 0 <= a and b <= n_trs and b - a == lag and t < n_trs


def test_fractions_are_respected_and_buffers_are_the_lag():
    split = plan_split(440, 440, split_params())
    first, stop = 9, 440  # the first window [0, 10) ends at target 9; the last target is the last TR
    assert min(split.targets("train")) == first and max(split.targets("test")) == stop - 1
    sizes = {n: b - a for n, (a, b) in split.ranges.items()}
    assert sum(sizes.values()) == stop - first - 2 * 10
    assert sizes["train"] / sum(sizes.values()) == pytest.approx(0.7, abs=0.01)
    assert split.ranges["val"][0] - split.ranges["train"][1] == 10


def test_explicit_ranges_like_a_run_boundary():
    params = split_params("split.ranges={train: [9, 936], test: [946, 1973]}")
    split = plan_split(1976, 1976, params, shift_trs=3)
    assert split.ranges == {"train": (9, 936), "test": (946, 1973)}
    with pytest.raises(SplitError, match="10 TRs apart|buffer"):
        plan_split(1976, 1976, split_params("split.ranges={train: [9, 940], test: [946, 1973]}"), 3)
    with pytest.raises(SplitError, match="outside the usable targets"):
        plan_split(1976, 1976, split_params("split.ranges={train: [0, 900], test: [946, 1973]}"), 3)


def test_buffer_shorter_than_lag_is_refused():
    with pytest.raises(SplitError, match="shorter than the lag window"):
        plan_split(440, 440, split_params("split.buffer_trs=3"))


def test_stimulus_shorter_than_fmri_limits_the_targets():
    split = plan_split(440, 400, split_params(), shift_trs=2)
    last = max(b for _, b in split.ranges.values()) - 1
    assert split.window(last)[1] <= 400


# Two runs: run 1 shows stimulus TRs [0, 70) as timeline TRs [0, 70); run 2 shows [80, 160) (the movie
# skips 10 TRs between the scans) as timeline TRs [70, 150).
TWO_RUNS = ((0, 70, 0, 70), (70, 150, 80, 160))


@pytest.mark.parametrize("shift", [0, 2])
def test_no_window_crosses_a_run_boundary(shift):
    lag = 5
    split = plan_split(150, 160, split_params(f"split.lag_trs={lag}"), shift, runs=TWO_RUNS)
    used = [t for name in split.ranges for t in split.targets(name)]
    assert used
    for t in used:
        a, b = split.window(t)
        run = TWO_RUNS[0] if t < 70 else TWO_RUNS[1]
        assert run[2] <= a and b <= run[3], (t, a, b)
        assert b - a == lag
        # Within its run, target t sees the stimulus at its own movie time (plus the pre-shift).
        assert b - 1 == run[2] + (t - run[0]) + shift
    # Every target whose window would reach back into run 1 (or past run 1's end) is left out.
    crossing = {t for t in range(150) if not split.usable(t)}
    expected = {t for t in range(70) if t < lag - 1 - shift or t + shift >= 70}
    expected |= {t for t in range(70, 150) if t - 70 < lag - 1 - shift or 80 + t - 70 + shift >= 160}
    assert crossing == expected
    assert not crossing & set(used)


def test_fractions_count_only_usable_targets_across_runs():
    split = plan_split(150, 160, split_params("split.lag_trs=5"), 0, runs=TWO_RUNS)
    usable = [t for t in range(150) if split.usable(t)]
    n = {name: len(split.targets(name)) for name in split.ranges}
    buffered = len(usable) - sum(n.values())
    assert 0 < buffered <= 2 * 5  # at most one buffer between consecutive blocks
    assert n["train"] / sum(n.values()) == pytest.approx(0.7, abs=0.03)
    ordered = sorted(split.ranges.values())
    assert all(b[0] - a[1] >= 5 for a, b in zip(ordered, ordered[1:]))


def test_a_block_with_only_crossing_windows_is_an_error():
    with pytest.raises(SplitError, match="no usable target"):
        plan_split(150, 160, split_params("split.lag_trs=5", "split.ranges={train: [5, 60], test: [70, 73]}"),
                   0, runs=TWO_RUNS)


def test_a_split_round_trips_its_runs_and_old_splits_have_none():
    split = plan_split(150, 160, split_params("split.lag_trs=5"), 0, runs=TWO_RUNS)
    again = type(split).from_dict(split.to_dict())
    assert again == split and again.runs == TWO_RUNS
    old = {k: v for k, v in split.to_dict().items() if k != "runs"}
    assert type(split).from_dict(old).runs is None
