"""The ridge baseline (giblet.evaluate.ridge) against independent references: closed-form ridge,
sklearn, hand-written windows, and synthetic brains with a known stimulus -> fMRI mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from giblet.data.manifest import ArrayFile
from giblet.data.samples import WindowDataset
from giblet.evaluate.ridge import RidgeResult, fit_ridge
from giblet.evaluate.ridge_solvers import ridge_cv_predict
from giblet.splits import blocked_cv
from giblet.evaluate.ridge_features import lagged, stimulus_features, window_trs
from giblet.splits import Split, plan_split
from tests.bundles import in_memory_manifest

LAG, SHIFT = 5, 1


# ------------------------------------------------------------------------------------------ helpers


def closed_form(X, y, Xp, alpha):
    """Ridge with an unpenalized intercept, float64: centre, ``(X'X + aI)^-1 X'y``, uncentre."""
    X, y, Xp = (np.asarray(a, np.float64) for a in (X, y, Xp))
    mx, my = X.mean(0), y.mean(0)
    Xc = X - mx
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (y - my))
    return (Xp - mx) @ w + my


def hand_cv_alpha(X, y, alphas, folds):
    """The alpha with the lowest mean-over-folds validation MSE, by closed form."""
    errors = [np.mean([np.mean((closed_form(X[tr], y[tr], X[va], a) - y[va]) ** 2) for tr, va in folds])
              for a in alphas]
    return alphas[int(np.argmin(errors))]


def brightness_signal(n_trs, rng):
    """A slowly varying stimulus quantity in [0.1, 0.9]."""
    s = np.convolve(rng.standard_normal(n_trs + 4), np.ones(3) / 3, mode="same")[2:-2]
    return 0.5 + 0.4 * s / np.abs(s).max()


def make_manifest(path, n_trs=300, n_voxels=20, modalities=("frames", "audio", "text"), noise=0.2,
                  shuffle_fmri=False, seed=0):
    """A tiny manifest on disk whose fMRI is a lagged linear function of the frames' brightness.

    fMRI index ``t`` holds the response at stimulus TR ``t + SHIFT`` (pre-shifted like Sherlock):
    ``y_v(t) = w_v * sum_j h_j b(t + SHIFT - j)`` over ``j < LAG``, plus Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    b = brightness_signal(n_trs, rng)
    pattern = rng.uniform(0.5, 1.0, (12, 16, 3))
    frames = b[:, None, None, None, None] * pattern[None, None] + 0.03 * rng.standard_normal((n_trs, 2, 12, 16, 3))
    frames = np.clip(frames * 255, 0, 255).astype(np.uint8)
    codes = rng.integers(0, 16, (n_trs, 2, 8)).astype(np.int16)
    text = rng.standard_normal((n_trs, 2, 8)).astype(np.float32)
    text_mask = rng.random((n_trs, 2)) < 0.5
    h = np.array([0.1, 0.5, 1.0, 0.6, 0.2])
    drive = np.convolve(b - b.mean(), h)[:n_trs]                      # drive[s] = sum_j h_j b(s - j)
    n_fmri = n_trs - SHIFT
    weights = rng.uniform(0.5, 1.5, n_voxels) * rng.choice([-1, 1], n_voxels)
    fmri = drive[SHIFT:SHIFT + n_fmri, None] * weights[None] / drive.std()
    fmri = (fmri + noise * rng.standard_normal(fmri.shape)).astype(np.float32)
    if shuffle_fmri:  # each voxel its own permutation, so the voxels' null r are independent
        fmri = np.stack([fmri[rng.permutation(n_fmri), v] for v in range(n_voxels)], axis=1)
    arrays = {"fmri": fmri}
    if "frames" in modalities:
        arrays["frames"] = frames
    if "audio" in modalities:
        arrays["audio_codes"] = codes
    if "text" in modalities:
        arrays["text"], arrays["text_mask"] = text, text_mask
    for role, array in arrays.items():
        np.save(path / f"{role}.npy", array)
    params = {"lag_trs": LAG, "buffer_trs": None, "ranges": None,
              "fractions": {"train": 0.6, "val": 0.15, "test": 0.25}}
    split = plan_split(n_fmri, n_trs, params, SHIFT)
    return in_memory_manifest({role: path / f"{role}.npy" for role in arrays}, split, n_voxels=n_voxels,
                              modalities={"audio": {"n_q": 2, "frames_per_tr": 8, "codebook_size": 16}}
                              if "audio" in modalities else {})


def with_array(manifest, role, array, path):
    np.save(path, array)
    return dataclasses.replace(manifest, arrays={**manifest.arrays, role: ArrayFile(Path(path), "")})


# ------------------------------------------------------------------------------------------ ridge


@pytest.mark.parametrize("n_features, solver", [(8, "primal"), (120, "kernel")])
def test_himalaya_matches_closed_form_ridge_with_the_selected_alpha(n_features, solver):
    rng = np.random.default_rng(1)
    n = 80
    X = rng.standard_normal((n, n_features)).astype(np.float32)
    Xp = rng.standard_normal((30, n_features)).astype(np.float32)
    w = rng.standard_normal((n_features, 3))
    Y = (X @ w * np.array([1.0, 0.3, 0.05]) + rng.standard_normal((n, 3)) + 2.0).astype(np.float32)
    alphas = np.logspace(-1, 4, 6)
    folds = blocked_cv(np.arange(n), n_folds=4, gap=2)
    pred, best, info = ridge_cv_predict(X, Y, Xp, alphas, folds, solver="auto")
    assert info["solver"] == solver
    for v in range(3):
        alpha = hand_cv_alpha(X, Y[:, v], alphas, folds)
        assert best[v] == pytest.approx(alpha, rel=1e-5)
        expected = closed_form(X, Y[:, v], Xp, alpha)
        scale = np.abs(expected - expected.mean()).max()
        np.testing.assert_allclose(pred[:, v], expected, atol=1e-4 * scale + 1e-5)
        sk = Ridge(alpha=float(alpha)).fit(X.astype(np.float64), Y[:, v]).predict(Xp.astype(np.float64))
        np.testing.assert_allclose(pred[:, v], sk, atol=1e-4 * scale + 1e-5)


def test_primal_and_kernel_solvers_agree_and_chunking_changes_nothing():
    rng = np.random.default_rng(2)
    X, Xp = rng.standard_normal((60, 30)).astype(np.float32), rng.standard_normal((10, 30)).astype(np.float32)
    Y = (X @ rng.standard_normal((30, 7)) + 3 * rng.standard_normal((60, 7))).astype(np.float32)
    folds = blocked_cv(np.arange(60), 3, 1)
    p1, a1, _ = ridge_cv_predict(X, Y, Xp, np.logspace(0, 4, 5), folds, solver="primal")
    p2, a2, _ = ridge_cv_predict(X, Y, Xp, np.logspace(0, 4, 5), folds, solver="kernel", voxel_chunk=3)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(p1, p2, atol=1e-4 * np.abs(p1).max())


def test_a_noisier_target_gets_a_larger_alpha():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 20)).astype(np.float32)
    signal = X @ rng.standard_normal(20)
    Y = np.stack([signal + 0.1 * rng.standard_normal(200), signal + 8.0 * rng.standard_normal(200)], 1)
    _, best, _ = ridge_cv_predict(X, Y.astype(np.float32), X[:5], np.logspace(-2, 5, 15),
                                  blocked_cv(np.arange(200), 5, 2))
    assert best[1] > 10 * best[0]


def test_blocked_cv_folds_are_contiguous_purged_and_cover_every_sample():
    targets = np.r_[np.arange(10, 60), np.arange(70, 90)]  # train + val with a buffer in between
    folds = blocked_cv(targets, n_folds=5, gap=4)
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(len(targets)))
    for train, val in folds:
        t_val = targets[val]
        assert np.ptp(val) == len(val) - 1                         # contiguous rows
        distance = np.abs(targets[train][:, None] - t_val[None]).min(axis=1)
        assert distance.min() > 4                                  # purged around the fold
        outside = np.abs(targets[:, None] - t_val[None]).min(axis=1) > 4
        np.testing.assert_array_equal(train, np.flatnonzero(outside))  # everything else is used


# ------------------------------------------------------------------------------------------ windows


def test_lagged_returns_the_window_rows_written_by_hand():
    X = np.arange(20 * 3).reshape(20, 3).astype(np.float32)
    split = Split({"train": (5, 9)}, lag_trs=3, shift_trs=1, buffer_trs=3)
    out = lagged(X, split, [5, 8])
    # target 5, shift 1: the window ends at stimulus TR 6 and holds TRs 4, 5, 6 (oldest first)
    np.testing.assert_array_equal(out[0], np.concatenate([X[4], X[5], X[6]]))
    np.testing.assert_array_equal(out[1], np.concatenate([X[7], X[8], X[9]]))
    assert out.shape == (2, 9)
    with pytest.raises(ValueError):
        lagged(X, split, [19])                                    # window [18, 21) leaves the 20 TRs


def test_lagged_sees_exactly_the_model_samples(tmp_path):
    manifest = make_manifest(tmp_path, n_trs=60, modalities=("frames",))
    split = manifest.split
    n_trs = 60
    frames = np.zeros((n_trs, 1, 1, 1, 3), np.uint8)
    frames[:, 0, 0, 0, 0] = np.arange(n_trs)                      # each TR's frame carries its index
    manifest = with_array(manifest, "frames", frames, tmp_path / "ids.npy")
    dataset = WindowDataset(manifest, "test")
    tr_index = np.arange(n_trs, dtype=np.float32)[:, None]
    ours = lagged(tr_index, split, dataset.targets)
    theirs = np.stack([dataset[j]["frames"][:, 0, 0, 0, 0].numpy() for j in range(len(dataset))])
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------------------------------ features


def test_features_are_fitted_on_the_fit_trs_only(tmp_path):
    manifest = make_manifest(tmp_path / "a", n_trs=120)
    split = manifest.split
    fit = window_trs(split, ("train", "val"))
    other = np.setdiff1d(np.arange(120), fit)
    assert len(other) > 20 and np.intersect1d(window_trs(split, ("test",)), fit).size == 0
    X1, info = stimulus_features(manifest, fit, n_components=4)
    assert X1.shape == (120, 4 + 4 + 4 + 1) and info["columns"] == {"frames": [0, 4], "audio": [4, 8],
                                                                     "text": [8, 13]}
    np.testing.assert_allclose(X1[fit].mean(0), 0, atol=1e-5)     # standardized on the fit rows
    np.testing.assert_allclose(X1[fit].std(0), 1, atol=1e-4)

    rng = np.random.default_rng(9)
    changed = manifest
    for role in ("frames", "audio_codes", "text", "text_mask"):
        array = np.load(manifest.arrays[role].path)
        if role == "frames":
            array[other] = rng.integers(0, 256, array[other].shape)
        elif role == "audio_codes":
            array[other] = rng.integers(0, 16, array[other].shape)
        elif role == "text":
            array[other] = 10 * rng.standard_normal(array[other].shape)
        else:
            array[other] = ~array[other]
        changed = with_array(changed, role, array, tmp_path / f"changed_{role}.npy")
    X2, _ = stimulus_features(changed, fit, n_components=4)
    np.testing.assert_array_equal(X2[fit], X1[fit])                # test stimuli never reach fit rows
    assert not np.allclose(X2[other], X1[other])

    # positive control: changing one fit TR does move the other fit rows (PCA + scaling use them)
    frames = np.load(manifest.arrays["frames"].path)
    frames[fit[0]] = 255 - frames[fit[0]]
    X3, _ = stimulus_features(with_array(manifest, "frames", frames, tmp_path / "f3.npy"), fit, n_components=4)
    assert not np.allclose(X3[fit[1:], :4], X1[fit[1:], :4])


def test_code_histograms_and_text_means_by_hand(tmp_path):
    from giblet.evaluate.ridge_features import code_features, text_features

    codes = np.array([[[0, 0, 1, 3]], [[2, 2, 2, 2]]], np.int16)  # (T=2, n_q=1, Fa=4), codebook 4
    np.testing.assert_allclose(code_features(codes, 4), np.sqrt([[0.5, 0.25, 0, 0.25], [0, 0, 1, 0]]))
    np.testing.assert_allclose(code_features(codes, 4, max_bins=2), np.sqrt([[0.5, 0.5], [1, 0]]))  # folded
    with pytest.raises(ValueError):
        code_features(codes, 3)
    text = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.float32)
    mean, none = text_features(text, np.array([[True, True], [False, False]]))
    np.testing.assert_allclose(mean, [[2, 3], [0, 0]])
    np.testing.assert_array_equal(none, [[0], [1]])


def test_missing_modalities_are_skipped_and_requesting_one_fails(tmp_path):
    manifest = make_manifest(tmp_path, n_trs=150, modalities=("text",))
    split = manifest.split
    X, info = stimulus_features(manifest, window_trs(split, ("train",)), n_components=3)
    assert list(info["columns"]) == ["text"] and X.shape == (150, 4)
    with pytest.raises(ValueError, match="frames"):
        stimulus_features(manifest, window_trs(split, ("train",)), modalities=("frames",))
    result = fit_ridge(manifest, n_components=3, alphas=[1, 10, 100])
    assert result.pred_test.shape == result.true_test.shape == (split.ranges["test"][1] - split.ranges["test"][0], 20)
    assert result.info["ridge"]["n_features"] == LAG * 4
    assert np.all(np.isfinite(result.pred_test))


# ------------------------------------------------------------------------------------------ end to end


def test_end_to_end_recovers_a_lagged_linear_brain_and_not_a_shuffled_one(tmp_path):
    manifest = make_manifest(tmp_path / "real", noise=0.3)
    result = fit_ridge(manifest, n_components=6, alphas=np.logspace(-1, 5, 13))
    split = manifest.split
    np.testing.assert_array_equal(result.targets_test, np.arange(*split.ranges["test"]))
    fmri = np.load(manifest.arrays["fmri"].path)
    np.testing.assert_array_equal(result.true_test, fmri[result.targets_test])
    r = result.r()
    # r is the model's metric; check it against numpy's Pearson r
    expected = [np.corrcoef(result.pred_test[:, v], result.true_test[:, v])[0, 1] for v in range(r.size)]
    np.testing.assert_allclose(r, expected, atol=1e-5)
    assert r.mean() > 0.8 and result.info["r_test"]["mean"] == pytest.approx(r.mean())
    assert result.best_alphas.shape == (20,)

    shuffled = fit_ridge(make_manifest(tmp_path / "shuffled", noise=0.3, shuffle_fmri=True), n_components=6,
                         alphas=np.logspace(-1, 5, 13))
    assert abs(shuffled.r().mean()) < 0.1 and shuffled.r().max() < 0.5


def test_result_r_handles_constant_voxels():
    res = RidgeResult(np.arange(4), np.ones((4, 2), np.float32),
                      np.array([[1, 0], [2, 0], [3, 0], [5, 0]], np.float32), np.ones(2))
    np.testing.assert_array_equal(res.r(), [0.0, 0.0])
