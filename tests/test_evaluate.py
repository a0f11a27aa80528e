"""Evaluation metrics against independent references, brain maps, and evaluate() end to end."""

import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import stats

from giblet.errors import InputError
from giblet.evaluate import metrics as M
from giblet.evaluate.brain_maps import plot_r_map, r_map_image
from giblet.evaluate.decoding_metrics import code_metrics, frame_metrics, text_metrics
from giblet.evaluate.ceiling import CEILING_EXACT, CEILING_ISC
from giblet.evaluate.evaluate import evaluate

# -- per-voxel correlation -------------------------------------------------------------------------


def test_pearson_columns_matches_scipy_and_constant_columns_give_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 6))
    b = 0.5 * a + rng.standard_normal((30, 6))
    a[:, 4] = 3.0  # constant prediction
    b[:, 5] = -1.0  # constant data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = M.pearson_columns(a, b)
    expected = [stats.pearsonr(a[:, v], b[:, v])[0] for v in range(4)]
    np.testing.assert_allclose(r[:4], expected, atol=1e-12)
    np.testing.assert_allclose(r[:4], [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(4)], atol=1e-12)
    assert r[4] == 0 and r[5] == 0 and r.shape == (6,)


def test_per_voxel_r_is_over_time_not_across_voxels():
    """Predicting the brain's average pattern gets a high spatial r, but per-voxel r over time is 0."""
    rng = np.random.default_rng(1)
    pattern = rng.standard_normal(200) * 3
    true = pattern + rng.standard_normal((50, 200))
    pred = np.tile(pattern, (50, 1)) + 1e-3 * rng.standard_normal((50, 200))
    spatial = np.mean([np.corrcoef(pred[t], true[t])[0, 1] for t in range(50)])
    assert spatial > 0.9
    assert abs(M.fmri_metrics(pred, true, n_null=10)["r_mean"]) < 0.05


def test_shifted_r_equals_rolling_the_prediction():
    rng = np.random.default_rng(2)
    pred, true = rng.standard_normal((23, 7)), rng.standard_normal((23, 7))
    pred[:, 3] = 1.0
    shifts = [1, 5, 11, 22]
    expected = np.stack([M.pearson_columns(np.roll(pred, s, axis=0), true) for s in shifts])
    np.testing.assert_allclose(M.shifted_r(pred, true, shifts), expected, atol=1e-12)


# -- identification -------------------------------------------------------------------------------


def _brute_force_identification(pred, true):
    """Reference: np.corrcoef on voxel-centered patterns, ranks by explicit loops."""
    n = len(pred)
    p, t = pred - pred.mean(0), true - true.mean(0)
    c = np.corrcoef(p, t)[:n, n:]
    top1 = top5 = near = 0
    for i in range(n):
        better = sum(c[i, j] >= c[i, i] for j in range(n) if j != i)
        top1 += better < 1
        top5 += better < 5
        best = int(np.argmax(c[i]))
        near += abs(best - i) <= 2
    return top1 / n, top5 / n, near / n


def test_identification_perfect_permuted_and_reference():
    rng = np.random.default_rng(3)
    n, v = 40, 300
    true = rng.standard_normal((n, v))
    perfect = M.identification(true * 2 + 1, true)
    assert perfect["top1"] == perfect["top5"] == perfect["within_2tr"] == 1.0
    # First half right, second half rotated by 10 TRs: each moved TR's best match is 10 TRs away.
    perm = np.r_[np.arange(20), 20 + (np.arange(20) + 10) % 20]
    moved = M.identification(true[perm], true)
    assert moved["top1"] == 0.5 and moved["within_2tr"] == 0.5
    # A noisy prediction against the brute-force reference.
    noisy = 0.1 * true + rng.standard_normal((n, v))
    ours = M.identification(noisy, true)
    top1, top5, near = _brute_force_identification(noisy, true)
    assert (ours["top1"], ours["top5"]) == pytest.approx((top1, top5))
    assert ours["within_2tr"] == pytest.approx(near)
    assert 0.2 < ours["top1"] < 1.0  # neither trivial nor perfect: the comparison means something


def test_identification_of_noise_is_near_chance_and_chance_is_exact():
    rng = np.random.default_rng(4)
    n = 200
    result = M.identification(rng.standard_normal((n, 400)), rng.standard_normal((n, 400)))
    assert result["chance_top1"] == 1 / n and result["chance_top5"] == 5 / n
    # +-2 TRs: 5 candidates except at the edges (3, 4, ..., 4, 3): (5n - 6) / n^2.
    assert result["chance_within_2tr"] == pytest.approx((5 * n - 6) / n**2)
    assert result["top1"] <= 0.03 and result["top5"] <= 0.07 and result["within_2tr"] <= 0.07
    constant = M.identification(np.ones((10, 5)), rng.standard_normal((10, 5)))
    assert constant["top1"] == constant["top5"] == constant["within_2tr"] == 0.0  # ties count against


# -- ceiling and null ------------------------------------------------------------------------------


def test_fraction_of_ceiling_is_one_for_the_noise_free_signal():
    rng = np.random.default_rng(5)
    n, v = 3000, 60
    signal = rng.standard_normal((n, v))
    sigma = np.linspace(0.3, 4.0, v)
    true = signal + sigma * rng.standard_normal((n, v))
    ceiling = 1 / np.sqrt(1 + sigma**2)  # r(signal, signal + noise) for unit-variance signal
    result = M.fmri_metrics(signal, true, ceiling, M.reliable_voxels(ceiling), n_null=20)
    frac = result["fraction_of_ceiling"]
    assert result["n_reliable"] == int((ceiling >= M.RELIABLE_THRESHOLD).sum()) < v
    assert frac["ratio_of_means"] == pytest.approx(1.0, abs=0.02)
    assert frac["median_voxelwise"] == pytest.approx(1.0, abs=0.03)
    half = M.fmri_metrics(0.5 * signal + rng.standard_normal((n, v)) * 0.5 * np.sqrt(3), true, ceiling,
                          M.reliable_voxels(ceiling), n_null=20)  # r with the signal = 0.5
    assert half["fraction_of_ceiling"]["ratio_of_means"] == pytest.approx(0.5, abs=0.03)


def test_null_p_value_small_for_signal_large_for_noise():
    rng = np.random.default_rng(6)
    n, v = 120, 80
    # Smooth (autocorrelated) time courses, like fMRI.
    signal = np.apply_along_axis(lambda x: np.convolve(x, np.ones(5) / 5, mode="same"), 0,
                                 rng.standard_normal((n, v)))
    true = signal + 0.05 * rng.standard_normal((n, v))
    good = M.fmri_metrics(signal, true, n_null=200, min_shift=10)
    null = good["null"]
    assert null["n_null"] == n - 2 * 10 + 1 and null["shift_range"] == [10, n - 10]
    assert null["p_value"] == pytest.approx(1 / (1 + null["n_null"]))
    assert null["observed"] > null["p99"] and abs(null["mean"]) < 0.05
    noise = M.fmri_metrics(rng.standard_normal((n, v)), true, n_null=200, min_shift=10)
    assert noise["null"]["p_value"] > 0.05
    sampled = M.fmri_metrics(signal, true, n_null=30, min_shift=10)["null"]
    assert sampled["n_null"] == 30 and sampled["p_value"] == pytest.approx(1 / 31)


def test_reliable_voxels_rule():
    assert M.reliable_voxels(np.array([0.0, 0.29, 0.3, 0.9, np.nan])).tolist() == [False, False, True, True, False]


# -- decoding ----------------------------------------------------------------------------------------


def test_code_accuracy_hand_computed():
    codes = np.array([[[0, 1, 2], [3, 3, 3]],
                      [[0, 0, 2], [1, 3, 0]]])                     # (N=2, n_q=2, Fa=3)
    guess = np.array([[[0, 1, 1], [3, 0, 3]],
                      [[0, 2, 2], [1, 1, 1]]])
    logits = np.eye(4)[guess] * 5.0                                 # argmax = guess
    result = code_metrics(logits, codes)
    assert result["accuracy_per_codebook"] == pytest.approx([4 / 6, 3 / 6])
    assert result["accuracy_mean"] == pytest.approx(7 / 12)
    # codebook 0: codes 0,1,2,0,0,2 -> '0' 3 times; codebook 1: 3,3,3,1,3,0 -> '3' 4 times.
    assert result["chance_most_frequent"] == pytest.approx([3 / 6, 4 / 6])
    assert result["chance_uniform"] == 0.25
    # learned from a reference block (the training block): its most frequent codes are 2 and 1,
    # which the test block holds 2/6 and 1/6 of the time
    reference = np.array([[[2, 2, 1], [1, 1, 0]]])
    assert code_metrics(logits, codes, reference)["chance_most_frequent"] == pytest.approx([2 / 6, 1 / 6])


def test_text_retrieval_on_a_constructed_case():
    e = np.eye(4)[:3] * np.array([[1.0], [2.0], [0.5]])             # 3 distinct embeddings, dim 4
    true = np.zeros((4, 2, 4))
    mask = np.array([[True, True], [True, False], [True, True], [False, False]])
    true[0, 0], true[0, 1], true[1, 0], true[2, 0], true[2, 1] = e[0], e[1], e[0], e[2], e[1]  # e0 spans 2 TRs
    decoded = true.copy()
    decoded[2, 0] = e[1] + 0.1 * e[2]     # wrong: closest to e1; the right one (e2) ranks 2nd
    decoded[3] = 7.0                       # unannotated: ignored
    result = text_metrics(decoded, true, mask)
    assert result["n_queries"] == 5 and result["n_candidates"] == 3
    assert result["top1"] == pytest.approx(4 / 5) and result["top5"] == 1.0
    assert result["chance_top1"] == pytest.approx(1 / 3) and result["chance_top5"] == 1.0
    empty = text_metrics(decoded, true, np.zeros((4, 2), bool))
    assert empty["n_queries"] == 0 and empty["top1"] is None


def test_frame_metrics_perfect_and_baseline():
    rng = np.random.default_rng(7)
    true = rng.integers(0, 256, (5, 2, 4, 6, 3), dtype=np.uint8)
    perfect = frame_metrics(true / 255.0, true)
    assert perfect["pixel_r_mean"] == pytest.approx(1.0) and perfect["mse"] == pytest.approx(0.0)
    mean_frame = true.mean(axis=0) / 255.0
    expected = np.mean([np.corrcoef(mean_frame.ravel(), true[i].ravel() / 255.0)[0, 1] for i in range(5)])
    assert perfect["r_mean_baseline_mean_frame"] == pytest.approx(expected)
    flat = frame_metrics(np.full(true.shape, 0.5), true)
    assert flat["pixel_r_mean"] == 0.0 and flat["mse"] > 0


# -- brain maps ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_mask(tmp_path) -> Path:
    rng = np.random.default_rng(8)
    data = (rng.random((5, 4, 3)) > 0.4).astype(np.uint8)
    affine = np.array([[3.0, 0, 0, -7], [0, 3.0, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "mask.nii.gz")
    return tmp_path / "mask.nii.gz"


def test_r_map_round_trip(tiny_mask, tmp_path):
    from nilearn.masking import apply_mask

    mask_img = nib.load(tiny_mask)
    inside = np.asarray(mask_img.dataobj) > 0
    r = np.random.default_rng(9).uniform(-1, 1, int(inside.sum())).astype(np.float32)
    img = r_map_image(r, tiny_mask)
    nib.save(img, tmp_path / "r.nii.gz")
    loaded = nib.load(tmp_path / "r.nii.gz")
    np.testing.assert_array_equal(loaded.affine, mask_img.affine)
    data = np.asarray(loaded.dataobj)
    np.testing.assert_array_equal(data[inside], r)
    assert not data[~inside].any()
    np.testing.assert_array_equal(apply_mask(loaded, tiny_mask), r)  # nilearn's voxel order too
    png = plot_r_map(loaded, tmp_path / "r.png", "test map", threshold=0.2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*tmp*"))


# -- evaluate() end to end ----------------------------------------------------------------------------

N_VOXELS = 30


def make_bundle(root: Path, ceiling: bool = True, truth: bool = False, test: bool = True) -> Path:
    """A small manifest with all four modalities (tests/bundles.py), plus ceiling/truth files."""
    from tests.bundles import write_bundle

    root.mkdir(parents=True, exist_ok=True)
    ceiling_values = np.linspace(0, 0.9, N_VOXELS).astype(np.float32)
    np.savez(root / "ceiling.npz", group=ceiling_values, isc=ceiling_values**2)
    np.savez(root / "truth.npz", ceiling_group=ceiling_values, region=(np.arange(N_VOXELS) % 2).astype(np.int8),
             region_names=np.array(["null", "visual"]))
    return write_bundle(root, N_VOXELS, zscore=False, affine=np.diag([2.0, 2.0, 2.0, 1.0]),
                        fractions="{train: 0.6, val: 0.2, test: 0.2}" if test else "{train: 0.7, val: 0.3, test: 0}",
                        ceiling=root / "ceiling.npz" if ceiling else None, truth=root / "truth.npz" if truth else None)


def save_model(manifest_path: Path, out: Path, n_voxels: int | None = None) -> Path:
    """An untrained tiny model in the model.pt format (Trainer.write_model), fMRI layer randomized."""
    from giblet.model import BrainAutoencoder
    from giblet.model.model_file import write_model_file

    manifest = json.loads(manifest_path.read_text())
    if n_voxels is not None:
        manifest = {**manifest, "n_voxels": n_voxels}
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(manifest, "tiny")
    torch.nn.init.normal_(model.to_fmri.weight, std=0.5)  # the zero init would predict a constant
    write_model_file(out, model.config(), model.state_dict(),
                     weights={"weights": "final", "step": 3, "epoch": 1}, manifest=str(manifest_path),
                     manifest_sha256="0" * 64, config_hash="feedfacecafe0001", steps=3, epochs=1,
                     best_val_loss=1.5, giblet_version="0.1.0")
    return out


def test_evaluate_end_to_end(tmp_path):
    manifest = make_bundle(tmp_path / "bundle", ceiling=True, truth=False)
    model = save_model(manifest, tmp_path / "model.pt")
    out = tmp_path / "eval"
    result = evaluate(model, manifest, out, n_null=50)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "r_map.nii.gz", "r_map.png"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == result
    test_range = json.loads(manifest.read_text())["split"]["ranges"]["test"]
    assert result["test_range"] == test_range and result["n_test"] == test_range[1] - test_range[0] > 0
    assert result["model"]["config_hash"] == "feedfacecafe0001" and result["model"]["steps"] == 3
    assert result["ceiling"]["source"] == CEILING_ISC and result["ceiling"]["reliable_threshold"] == 0.3
    fmri = result["fmri"]
    assert -1 <= fmri["r_mean"] <= 1 and fmri["n_voxels"] == N_VOXELS
    assert fmri["n_reliable"] == int((np.linspace(0, 0.9, N_VOXELS) >= 0.3).sum())
    assert fmri["identification"]["chance_top1"] == pytest.approx(1 / result["n_test"])
    assert 0 < fmri["null"]["p_value"] <= 1 and fmri["null"]["n_null"] >= 1
    assert set(result["decoding"]) == {"frames", "audio_codes", "text"}
    assert len(result["decoding"]["audio_codes"]["accuracy_per_codebook"]) == 4
    assert result["decoding"]["text"]["n_queries"] > 0
    assert result["by_region"] is None
    r_img = nib.load(out / "r_map.nii.gz")
    np.testing.assert_allclose(np.asarray(r_img.dataobj).ravel().mean(), fmri["r_mean"], atol=1e-6)
    np.testing.assert_array_equal(r_img.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert (out / "r_map.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".eval.tmp-*"))


def test_evaluate_uses_the_exact_demo_ceiling_when_the_manifest_has_truth(tmp_path):
    manifest = make_bundle(tmp_path / "bundle", ceiling=True, truth=True)
    result = evaluate(save_model(manifest, tmp_path / "model.pt"), manifest, tmp_path / "eval", n_null=10)
    assert result["ceiling"]["source"] == CEILING_EXACT
    assert set(result["by_region"]) == {"null", "visual"}
    assert result["by_region"]["null"]["n_voxels"] == N_VOXELS // 2


def test_realised_test_ceiling_matches_the_generators_expected_one(tmp_path):
    """Noise of variance 1/c^2 - 1 around a unit-variance signal: over many TRs the realised correlation
    is c; over few it scatters (what the demo's test block reports beside the expected value)."""
    from giblet.evaluate.ceiling import realised_ceiling
    from tests.bundles import in_memory_manifest

    rng = np.random.default_rng(0)
    c = np.linspace(0.3, 0.9, 50)
    signal = rng.standard_normal((20000, 50))
    measured = signal + rng.standard_normal((20000, 50)) * np.sqrt(1 / c**2 - 1)
    np.savez(tmp_path / "truth.npz", signal=signal)
    manifest = in_memory_manifest({"truth": tmp_path / "truth.npz"})
    result = realised_ceiling(manifest, range(20000), measured, c, None)
    assert result["expected_mean"] == pytest.approx(c.mean())
    assert result["realised_mean"] == pytest.approx(c.mean(), abs=0.005)
    few = realised_ceiling(manifest, range(40), measured[:40], c, c > 0.6)
    assert few["expected_mean"] == pytest.approx(c[c > 0.6].mean())
    assert few["realised_mean"] != pytest.approx(few["expected_mean"], abs=1e-4)
    assert realised_ceiling(in_memory_manifest({}), range(40), measured[:40], c, None) is None  # real data


def test_evaluate_errors_name_the_file_and_write_nothing(tmp_path):
    manifest = make_bundle(tmp_path / "bundle")
    wrong = save_model(manifest, tmp_path / "wrong.pt", n_voxels=N_VOXELS + 1)
    out = tmp_path / "out" / "eval"
    with pytest.raises(InputError, match=rf"^{re.escape(str(wrong))}: the model has {N_VOXELS + 1} voxels"):
        evaluate(wrong, manifest, out)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=rf"^{re.escape(str(corrupt))}: cannot be read"):
        evaluate(corrupt, manifest, out)
    no_test = make_bundle(tmp_path / "no_test", test=False)
    with pytest.raises(InputError, match=rf"^{re.escape(str(no_test))}: has no test block"):
        evaluate(save_model(no_test, tmp_path / "ok.pt"), no_test, out)
    assert not (tmp_path / "out").exists()  # no output dir, no partial files, no temporary dir


def test_mean_frame_grid_and_its_identification_against_numpy():
    from giblet.evaluate.decoding_identification import frame_grid_identification, mean_frame_grid

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 3, 18, 32, 3), dtype=np.uint8)
    # Reference: each TR's mean frame in 2 x 2 pixel cells (18 x 32 on a 9 x 16 grid), in [0, 1].
    reference = frames.mean(axis=1).reshape(12, 9, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(12, -1) / 255
    np.testing.assert_allclose(mean_frame_grid(frames), reference, atol=1e-12)
    np.testing.assert_allclose(mean_frame_grid(frames.astype(np.float32) / 255), reference, atol=1e-6)
    assert frame_grid_identification(frames, frames)["top1"] == 1.0
    # Decoded frames that show the next TR's picture identify that TR, never their own.
    scores = frame_grid_identification(np.roll(frames, -1, axis=0), frames)
    assert scores["top1"] == 0.0 and scores["chance_top1"] == pytest.approx(1 / 12)


def test_identification_among_distinct_stimuli_counts_no_repeat_as_a_rival():
    from giblet.evaluate.decoding_identification import distinct_identification
    from giblet.evaluate.metrics import identification

    rng = np.random.default_rng(1)
    true = np.repeat(rng.standard_normal((5, 8)), [3, 1, 2, 2, 2], axis=0)   # annotations that last several TRs
    scores = distinct_identification(true, true)
    assert scores["top1"] == 1.0 and scores["n_distinct"] == 5
    assert identification(true, true)["top1"] == pytest.approx(1 / 10)          # only the lone TR, as ties count
    # chance: 1 over the right TR and the TRs of other stimuli (8 for a row of the 3-TR annotation, ...)
    rivals = 10 - np.repeat([3, 1, 2, 2, 2], [3, 1, 2, 2, 2]) + 1
    assert scores["chance_top1"] == pytest.approx(np.mean(1 / rivals))
