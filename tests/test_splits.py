"""Splits: contiguous blocks whose windows never reach another block's targets."""

import pytest

from giblet.config import load_config
from giblet.splits import SplitError, plan_split, usable_targets


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
    first, stop = usable_targets(440, 440, 10, 0)
    assert (first, stop) == (9, 440)
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
