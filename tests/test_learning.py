"""The model learns: trained through Snakemake on a demo, it predicts held-out fMRI far above chance.

The replaced system reported a held-out r of 0.0013 and called it healthy. Here the bound is measured
against the demo's ground truth and against a null from circularly shifted predictions, on the TEST
block, which training and early stopping never see.
"""

import json

import numpy as np
import pytest
import torch

from giblet.data.batch import collate
from giblet.data.manifest import read_manifest
from giblet.data.samples import WindowDataset
from giblet.model.model_file import load_model
from tests.conftest import copy_workflow
from tests.test_workflow import snakemake, write_overlay

# Long enough to learn (360 TRs = 9 min), small enough for CI: an 8 mm brain, a 64x36 movie.
LEARNING_DEMO = [
    "demo.n_trs=360", "demo.n_subjects=2", "demo.resolution_mm=8",
    "demo.video.width=64", "demo.video.height=36", "demo.audio.sample_rate=22050",
    "stimulus.frames.width=64", "stimulus.frames.height=36",
    "train.epochs=8", "train.early_stopping_patience=0",
    # 2,700 frames and 360 TRs of codes: both autoencoders are learned well before their defaults' end.
    "pretrain.frames.epochs=4", "pretrain.audio.epochs=30",
]


def pearson_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = copy_workflow(tmp_path_factory.mktemp("learning"))
    overlay = write_overlay(root, LEARNING_DEMO, "learning.yaml")
    result = snakemake(root, "results/evaluate/metrics/metrics.json", "results/evaluate/ridge.json",
                       "--configfile", overlay)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return root / "results"


@pytest.mark.slow
def test_held_out_fmri_prediction_beats_chance_and_approaches_the_ceiling(trained, monkeypatch):
    monkeypatch.chdir(trained.parent)  # the manifest's paths are relative to the workflow directory
    model, _ = load_model(trained / "train" / "model.pt")  # model.pt alone rebuilds the model
    manifest = read_manifest(trained / "dataset" / "manifest.json")
    test = WindowDataset(manifest, "test")
    with torch.no_grad():
        batch = collate(test, list(range(len(test))), "cpu")
        predicted = model.encode(batch).numpy()
    measured = batch["fmri"].numpy()

    truth = np.load(trained / "demo" / "truth.npz")
    targets = test.targets
    # The voxels the demo makes predictable: in a stimulus-driven region and reliable across subjects.
    driven = np.asarray(truth["region_names"])[truth["region"]] != "null"
    reliable = driven & (truth["ceiling_group"] >= np.quantile(truth["ceiling_group"][driven], 0.5))
    r = pearson_per_column(predicted, measured)[reliable].mean()
    r_signal = pearson_per_column(predicted, truth["signal"][targets])[reliable].mean()
    null = [pearson_per_column(np.roll(predicted, shift, axis=0), measured)[reliable].mean()
            for shift in range(10, len(targets) - 10, 3)]
    ceiling = truth["ceiling_group"][reliable].mean()
    print(f"test r {r:.3f} (vs the noise-free signal {r_signal:.3f}), ceiling {ceiling:.3f}, "
          f"null max {max(null):.3f}")
    # Measured: r 0.224 (0.323 against the noise-free signal), null max 0.042, ceiling 0.68; the
    # replaced system's 0.0013 and this model before its fixes (-0.002) fail by a wide margin.
    assert r > 0.06 and r > max(null) + 0.05
    assert r_signal > r  # it predicts the stimulus-driven signal, not the noise
    assert r < ceiling  # nothing can beat the noise ceiling: a leak between splits would

    history = [json.loads(line) for line in (trained / "train" / "history.jsonl").read_text().splitlines()]
    val_r = [h["val/fmri_r_mean"] for h in history if "val/fmri_r_mean" in h]
    # Every epoch validated. Trained through the brain's principal components, the model reaches its
    # validation r within the first epochs on this small demo (measured: 0.063 after epoch 1, 0.069-0.071
    # after epochs 2-8); the untrained model predicts the mean (r = 0). Learning itself is asserted above.
    assert len(val_r) == 8 and min(val_r) > 0


def _fractions(trained) -> tuple[dict, dict]:
    metrics = json.loads((trained / "evaluate" / "metrics" / "metrics.json").read_text())
    ridge = json.loads((trained / "evaluate" / "ridge.json").read_text())
    return metrics, ridge


@pytest.mark.slow
def test_the_oracle_bounds_the_model_and_fraction_of_oracle_is_its_ratio(trained):
    """The oracle (ridge on the demo's true regressors) knows what the model must find: a model above it
    would mean a leak between the blocks."""
    metrics, _ = _fractions(trained)
    model = metrics["fmri"]["fraction_of_ceiling"]["ratio_of_means"]
    oracle = metrics["oracle"]["fmri"]["fraction_of_ceiling"]["ratio_of_means"]
    assert 0 < model < oracle <= 1
    assert metrics["oracle"]["fraction_of_oracle"] == pytest.approx(
        metrics["fmri"]["r_mean_reliable"] / metrics["oracle"]["fmri"]["r_mean_reliable"])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 22 (ended blocked): on small demos the model beats the banded ridge in "
                   "fraction of the ceiling (default demo, seeds 0-2: 0.429 vs 0.317) but still trails it in "
                   "timepoint identification on 2 of 3 seeds (mean 0.362 vs 0.398). strict: once it passes, this marker must go")
def test_the_model_beats_the_banded_ridge_baseline_and_decodes_above_chance(trained):
    """Same data, same split, same test block, same metric code: the model must predict the reliable
    voxels better than himalaya's banded ridge on hand-made features, and decode every modality's
    stimulus from the measured brain better than chance (identification among the test TRs)."""
    metrics, ridge = _fractions(trained)
    model_fraction = metrics["fmri"]["fraction_of_ceiling"]["ratio_of_means"]
    ridge_fraction = ridge["fmri"]["fraction_of_ceiling"]["ratio_of_means"]
    print(f"fraction of the ceiling: model {model_fraction:.3f}, banded ridge {ridge_fraction:.3f}; "
          f"decoding {metrics['decoding_identification']}")
    assert model_fraction > ridge_fraction
    assert metrics["fmri"]["identification"]["top1"] > ridge["fmri"]["identification"]["top1"]
    for modality, scores in metrics["decoding_identification"].items():
        assert scores["top5"] > 2 * scores["chance_top5"], modality
