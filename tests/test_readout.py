"""The closed-form fMRI layer, the brain-shaped temporal filters, the banded baseline and the oracle."""

import numpy as np
import pytest
import torch

from giblet.data.manifest import read_manifest
from giblet.evaluate.ridge import feature_groups
from giblet.evaluate.ridge_solvers import banded_ridge_predict, ridge_cv_predict
from giblet.model.encoders import HemodynamicFilters
from giblet.splits import blocked_cv
from giblet.timing import hrf_kernel
from giblet.train.readout import ridge_weights
from tests.bundles import in_memory_manifest


def test_ridge_weights_equal_the_closed_form_ridge_on_centred_features():
    rng = np.random.default_rng(0)
    n, q, v = 120, 6, 5
    X = rng.standard_normal((n, q)) * rng.uniform(0.5, 3, q) + rng.uniform(-2, 2, q)
    Y = (X @ rng.standard_normal((q, v)) + rng.standard_normal((n, v)) * np.linspace(0.1, 5, v)).astype(np.float32)
    weight, bias, alphas = ridge_weights(X, Y, np.arange(n), lag_trs=2, alphas=np.logspace(-2, 4, 7))
    Z = X - X.mean(0)
    Yc = Y - Y.mean(0)
    for j in range(v):  # numpy reference with the alpha CV chose for that voxel
        coef = np.linalg.solve(Z.T @ Z + alphas[j] * np.eye(q), Z.T @ Yc[:, j])
        reference = Z @ coef + Y[:, j].mean()
        np.testing.assert_allclose(X @ weight[j] + bias[j], reference, rtol=1e-3, atol=1e-3)
    assert alphas[-1] > alphas[0]  # the noisiest voxel is shrunk the most


def test_hemodynamic_filters_start_as_the_hrf_and_see_only_their_own_feature():
    lag, tr = 8, 1.5
    filters = HemodynamicFilters(dim=3, lag=lag, n_filters=2, tr=tr)
    hrf = hrf_kernel(tr)[:lag]
    x = torch.zeros(lag, lag, 3)
    x[torch.arange(lag), torch.arange(lag), 1] = 1.0  # sample k: an impulse in feature 1 at window slot k
    out = filters(x).detach()                         # (lag, 3 * 2)
    # slot k is lag - 1 - k TRs before the window's end: the response is the HRF at that delay
    np.testing.assert_allclose(out[:, 2].numpy(), hrf[::-1][:lag] / np.abs(hrf).max(), rtol=1e-5, atol=1e-6)
    assert torch.all(out[:, [0, 1, 4, 5]] == 0)       # features 0 and 2 stay silent
    shorter = filters(x[:, 3:])                        # a window shorter than lag is zero-padded on the left
    assert torch.allclose(shorter, filters(torch.cat([torch.zeros(lag, 3, 3), x[:, 3:]], dim=1)))


def test_feature_groups_follow_the_lagged_layout():
    groups = feature_groups({"frames": [0, 2], "text": [2, 5]}, n_per_tr=5, lag_trs=3)
    assert groups.tolist() == [0, 0, 1, 1, 1] * 3
    with pytest.raises(ValueError, match="do not cover"):
        feature_groups({"frames": [0, 2]}, n_per_tr=5, lag_trs=1)


def test_banded_ridge_silences_a_useless_band_and_beats_one_penalty():
    """Band 0 drives the voxels through a few strong weights; band 1 is 40 columns of noise. One
    penalty must shrink both alike; the banded solver learns to turn band 1 off."""
    rng = np.random.default_rng(1)
    n, v = 300, 20
    X = rng.standard_normal((n + 100, 44)).astype(np.float32)
    groups = np.array([0] * 4 + [1] * 40)
    Y = X[:, :4] @ rng.standard_normal((4, v)) + 1.5 * rng.standard_normal((n + 100, v))
    cv = blocked_cv(np.arange(n), 5, 2)
    alphas = np.logspace(-2, 4, 13)
    banded, deltas, info = banded_ridge_predict(X[:n], Y[:n], X[n:], groups, alphas, cv, n_iter=20)
    single, _, _ = ridge_cv_predict(X[:n], Y[:n], X[n:], alphas, cv)
    noise_free = X[n:, :4] @ np.linalg.lstsq(X[:n, :4], Y[:n], rcond=None)[0]

    def r(pred):
        return np.mean([np.corrcoef(pred[:, j], noise_free[:, j])[0, 1] for j in range(v)])

    assert info["n_groups"] == 2 and deltas.shape == (2, v)
    assert np.median(deltas[0] - deltas[1]) > 2  # band 1 is weighted down by e^2 or more
    assert r(banded) > r(single) + 0.01


def test_oracle_recovers_a_brain_made_of_its_regressors(tmp_path):
    from giblet.evaluate.oracle import oracle_predict, true_regressors
    from giblet.splits import plan_split
    from giblet.config import load_config

    rng = np.random.default_rng(2)
    n, v = 200, 30
    design = {"design_a_linear": rng.standard_normal((n, 3)), "design_b_nonlinear": rng.standard_normal((n, 2))}
    np.savez(tmp_path / "truth.npz", **design, other=np.zeros(3))
    X = np.concatenate([design["design_a_linear"], design["design_b_nonlinear"]], axis=1)
    assert np.array_equal(true_regressors(tmp_path / "truth.npz"), X.astype(np.float32))
    fmri = X @ rng.standard_normal((5, v)) + 0.3 * rng.standard_normal((n, v))
    split = plan_split(n, n, load_config(None, ["split.lag_trs=4"])["split"])
    manifest = in_memory_manifest({"truth": tmp_path / "truth.npz"}, split)
    pred, true = oracle_predict(manifest, fmri)
    test = range(*split.ranges["test"])
    assert np.array_equal(true, fmri[test].astype(np.float32))
    r = [np.corrcoef(pred[:, j], true[:, j])[0, 1] for j in range(v)]
    assert min(r) > 0.9
    assert oracle_predict(in_memory_manifest({}, split), fmri) is None


def test_decoders_that_return_the_true_stimulus_identify_every_tr():
    from giblet.evaluate.decoding_identification import (decoded_descriptors, identification_scores,
                                                         stimulus_descriptors)

    rng = np.random.default_rng(3)
    n = 12
    stimulus = {"frames": rng.integers(0, 256, (n, 2, 12, 16, 3), dtype=np.uint8),
                "codes": rng.integers(0, 32, (n, 2, 6)), "text": rng.standard_normal((n, 2, 8)).astype(np.float32),
                "text_mask": rng.random((n, 2)) > 0.3}
    stimulus["text_mask"][0] = False  # a TR without annotation is neither a query nor a candidate
    logits = np.where(np.arange(32) == stimulus["codes"][..., None], 20.0, 0.0)
    decoded = {"frames": stimulus["frames"] / 255.0, "code_logits": logits, "text": stimulus["text"]}
    true = stimulus_descriptors(stimulus, 32)
    perfect = identification_scores(decoded_descriptors(decoded, stimulus["text_mask"]), true)
    assert {m: perfect[m]["top1"] for m in perfect} == {"frames": 1.0, "audio": 1.0, "text": 1.0}
    assert perfect["text"]["n"] == int(stimulus["text_mask"].any(axis=1).sum()) < n
    assert perfect["frames"]["chance_top1"] == pytest.approx(1 / n)
    shuffled = {k: v[::-1] for k, v in decoded.items()}
    wrong = identification_scores(decoded_descriptors(shuffled, stimulus["text_mask"][::-1]), true)
    assert all(wrong[m]["top1"] <= 0.2 for m in wrong)


def test_ridge_decoder_identifies_the_stimulus_the_brain_encodes_at_the_hemodynamic_delay(tmp_path):
    """The brain at TR t is a noisy linear map of the frame descriptors at TR t - 3 (the decode delay):
    the ridge decoder identifies frames far above chance, and audio, which the brain ignores, at chance."""
    from giblet.evaluate.decoding_identification import decode_delay, ridge_decoder
    from giblet.evaluate.ridge_features import frame_features
    from tests.bundles import write_bundle

    def frame_brain(rng, frames, n_voxels):
        descriptors = frame_features(frames)
        descriptors = (descriptors - descriptors.mean(0)) / descriptors.std(0)
        drive = np.roll(descriptors, 3, axis=0) @ rng.standard_normal((descriptors.shape[1], n_voxels))
        return drive + 0.5 * drive.std() * rng.standard_normal(drive.shape)

    manifest_path = write_bundle(tmp_path, 300, frame_brain, fractions="{train: 0.5, val: 0.1, test: 0.4}")
    manifest = read_manifest(manifest_path)
    assert decode_delay(manifest) == 3
    scores = ridge_decoder(manifest, np.load(manifest.arrays["fmri"].path), n_components=20)
    assert scores["frames"]["top1"] >= 0.6 > 5 * scores["frames"]["chance_top1"]
    assert scores["audio"]["top1"] <= 0.35


def test_modality_features_append_every_pairwise_product_of_the_projection():
    from giblet.model.encoders import ModalityFeatures

    torch.manual_seed(0)
    layer = ModalityFeatures(dim=5, hidden=7, interactions=3)
    z = torch.randn(4, 5)
    out = layer(z).detach().numpy()
    assert out.shape == (4, 5 + 6)
    residual = (z + layer.mlp(z)).detach().numpy()
    p = layer.project(layer.mlp(z) + z).detach().numpy()
    products = np.einsum("ni,nj->nij", p, p)[:, *np.triu_indices(3)]   # numpy's own pairs, squares included
    np.testing.assert_allclose(out[:, :5], residual, rtol=1e-6)
    np.testing.assert_allclose(out[:, 5:], products, rtol=1e-5, atol=1e-6)
    assert ModalityFeatures(5, 0, 0)(z) is z  # nothing asked: the identity


def test_fmri_rank_trains_through_the_principal_components_and_composes_the_fmri_layer():
    """In training the brain is predicted as mean + scores @ (sd * components); eval mode reads the
    composed V-wide layer, which must give the same prediction; the basis is numpy's PCA."""
    from giblet.model import BrainAutoencoder
    from giblet.train.bottleneck import fix_fmri_basis, principal_components

    manifest = {"modalities": {"text": {"k": 2, "dim": 16}}, "n_voxels": 40, "lag_trs": 4}
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(manifest, "tiny", dropout=0.0, fmri_rank=3)
    rows = np.random.default_rng(0).standard_normal((30, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    pca = principal_components(rows, 8)
    fix_fmri_basis(model, pca)
    centred = rows - rows.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(model.fmri_basis.numpy()), np.abs(vt[:3] * s[:3, None] / np.sqrt(30)), rtol=1e-5, atol=1e-7)
    torch.nn.init.normal_(model.to_components.weight)
    assert not model.to_fmri.weight.requires_grad        # derived, never trained
    batch = {"text": torch.randn(5, 4, 2, 16), "text_mask": torch.ones(5, 4, 2, dtype=torch.bool)}
    model.train()
    model.modality_norms.eval(), model.fused_norm.eval()  # same normalization in both modes
    trained = model(batch)["fmri"]
    model.compose_fmri_layer()
    model.eval()
    torch.testing.assert_close(model.encode(batch), trained, rtol=1e-5, atol=1e-5)


def test_banded_ridge_weights_are_himalayas_banded_ridge_as_a_linear_layer():
    """The weights reproduce himalaya's own prediction on raw (uncentred) features, and a useless band is
    weighted down."""
    from himalaya.ridge import BandedRidgeCV

    from giblet.train.readout import banded_ridge_weights

    rng = np.random.default_rng(3)
    n, v = 240, 12
    X = rng.standard_normal((n + 60, 30)) * rng.uniform(0.2, 3, 30) + rng.uniform(-3, 3, 30)
    groups = np.array([0] * 6 + [1] * 24)
    Y = (X[:, :6] @ rng.standard_normal((6, v)) + 2.0 * rng.standard_normal((n + 60, v))).astype(np.float32)
    alphas = np.logspace(-2, 4, 13)
    weight, bias, deltas = banded_ridge_weights(X[:n], Y[:n], groups, np.arange(n), lag_trs=2, alphas=alphas,
                                                n_iter=15)
    reference = BandedRidgeCV(groups=groups, solver="random_search", fit_intercept=True, random_state=0,
                              cv=blocked_cv(np.arange(n), 5, 2),
                              solver_params={"n_iter": 15, "alphas": alphas.astype(np.float32), "progress_bar": False})
    reference.fit((X[:n] - X[:n].mean(0)).astype(np.float32), Y[:n])
    expected = np.asarray(reference.predict((X[n:] - X[:n].mean(0)).astype(np.float32)))
    np.testing.assert_allclose(X[n:] @ weight.T.astype(np.float64) + bias, expected, rtol=1e-3, atol=2e-3)
    assert weight.shape == (v, 30) and deltas.shape == (2, v)
    assert np.median(deltas[0] - deltas[1]) > 2


def test_recalibrated_batch_norm_holds_the_exact_statistics_of_the_windows():
    """After a few momentum updates the running variance is still mostly its initial 1; recalibration
    makes it the features' own mean and (unbiased) variance over every window, as numpy computes them."""
    from giblet.train.readout import recalibrate_batch_norm

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3)

        def features(self, batch):
            return self.norm(batch["x"])

    rng = np.random.default_rng(4)
    data = (rng.standard_normal((64, 3)) * [0.02, 1.0, 5.0] + [1.0, -2.0, 0.0]).astype(np.float32)
    model = Model()
    model.train()
    model.features({"x": torch.from_numpy(data[:16])})   # one training step's update: momentum 0.1
    assert model.norm.running_var[0] > 0.5
    batches = recalibrate_batch_norm(model, data, lambda ds, rows, device: {"x": torch.from_numpy(ds[rows])},
                                     "cpu", batch_size=16)
    assert batches == 4 and not model.training and model.norm.momentum == 0.1
    # cumulative averages of the 4 equal batches' statistics
    parts = data.reshape(4, 16, 3)
    np.testing.assert_allclose(model.norm.running_mean.numpy(), parts.mean(1).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.norm.running_var.numpy(), parts.var(1, ddof=1).mean(0), rtol=1e-4)
