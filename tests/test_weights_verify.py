"""Weight health (giblet.evaluate.weights) and model verification (giblet.evaluate.verify).

A healthy model (untrained or trained 1 epoch) passes without false alarms; NaN, exploding, dead and
all-zero tensors, bad optimizer state, truncated files, other data, a wrong configuration or shape and a
model that is not its checkpoint's are caught, naming the culprit, and leave no partial outputs.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from giblet.errors import InputError
from giblet.evaluate.verify import verify_checkpoint
from giblet.evaluate.weights import examine_weights
from giblet.files import sha256_file
from giblet.model import BrainAutoencoder
from giblet.model.model_file import MODEL_FORMAT
from tests.bundles import write_bundle

N_VOXELS = 50
TRAIN = {"preset": "tiny", "epochs": 1, "batch_size": 4, "device": "cpu", "optimizer": "adamw8bit",
         "checkpoint": {"every_steps": None, "every_minutes": None, "keep_rolling": 1}}


def make_bundle(root: Path) -> Path:
    """All four modalities, small, random fMRI; returns the manifest path."""
    return write_bundle(root, N_VOXELS)


def model_dict(model: BrainAutoencoder, manifest_path: Path, steps: int = 0) -> dict:
    """What Trainer.write_model saves (giblet.train.loop), for a model that trained ``steps`` steps."""
    manifest = json.loads(manifest_path.read_text())
    return {"format": MODEL_FORMAT, "model_config": model.config(),
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "weights": {"weights": "final", "step": steps, "epoch": 0}, "manifest": str(manifest_path),
            "manifest_sha256": sha256_file(manifest_path), "mask": manifest["arrays"]["mask"],
            "affine": manifest["affine"], "fmri_info": None, "train_params": {}, "config_hash": "untrained",
            "steps": steps, "epochs": 0, "best_val_loss": float("inf"), "giblet_version": "0.1.0"}


def save(saved: dict, directory: Path, name: str = "model.pt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(saved, directory / name)
    return directory / name


def tampered(path: Path, out_dir: Path, **tensors) -> Path:
    """A copy of ``path`` (no checkpoints beside it) with ``fn(state_dict[name])`` applied per name."""
    saved = torch.load(path, weights_only=True)
    for name, fn in tensors.items():
        name = name.replace("__", ".")
        saved["state_dict"][name] = fn(saved["state_dict"][name].clone())
    return save(saved, out_dir)


def assert_no_outputs(directory: Path) -> None:
    assert not (directory / "verify.json").exists()
    assert not (directory / "weights.json").exists() and not (directory / "weights.png").exists()
    assert not list(directory.glob(".*.tmp")), list(directory.iterdir())


@pytest.fixture
def no_figure(monkeypatch):
    """Skip drawing weights.png (~1.5 s of CPU each) where a test is about the flags, not the figure."""
    import giblet.evaluate.weights as weights

    monkeypatch.setattr(weights, "_figure", lambda report, state_dict, path: Path(path).write_bytes(b"png"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def untrained(bundle, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(json.loads(bundle.read_text()), "tiny")
    return save(model_dict(model, bundle), tmp_path_factory.mktemp("untrained"))


@pytest.fixture(scope="module")
def trained(bundle, tmp_path_factory) -> Path:
    """A real 1-epoch run (8-bit AdamW): model.pt with checkpoints/ and index.json beside it."""
    from giblet.train.loop import train

    out = tmp_path_factory.mktemp("trained")
    assert train(bundle, out, TRAIN, progress=False) == 0
    return out / "model.pt"


def test_healthy_untrained_model_is_ok_with_structural_notes(bundle, untrained, tmp_path):
    report = examine_weights(untrained, tmp_path / "weights.json", tmp_path / "weights.png")
    assert report["verdict"] == "ok", report["flags"]
    assert report["flags"] == [] and report["counts"]["failed"] == report["counts"]["warnings"] == 0
    tensors = report["tensors"]
    # Zero-initialized fMRI layer, BatchNorm counters and running statistics: noted, never flagged.
    for name in ("to_fmri.bias", "to_fmri.weight", "modality_norms.frames.running_var",
                 "modality_norms.frames.running_mean", "modality_norms.frames.num_batches_tracked"):
        assert tensors[name]["flags"] == [] and tensors[name]["notes"][0].startswith("structural:"), name
    assert "predicts the mean" in tensors["to_fmri.bias"]["notes"][0]
    assert tensors["modality_norms.audio.num_batches_tracked"]["kind"] == "counter"
    assert tensors["to_fmri.weight"]["zero_fraction"] == 1.0 and tensors["to_fmri.weight"]["shape"] == [N_VOXELS, 600]  # 3 x (64 + 36 products) x 2 filters
    assert json.loads((tmp_path / "weights.json").read_text()) == report
    assert (tmp_path / "weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = verify_checkpoint(untrained, bundle, tmp_path / "verify.json")
    assert result["ok"] and all(c["ok"] for c in result["checks"].values()), result["checks"]
    assert set(result["checks"]) == {"load", "format", "manifest_sha256", "n_voxels", "lag_trs", "modalities",
                                     "finite", "architecture", "forward", "checkpoint"}
    assert result["checks"]["checkpoint"]["skipped"]  # no checkpoints/ beside it
    assert result["checks"]["forward"]["output_shapes"]["fmri"] == [1, N_VOXELS]
    assert result["model_sha256"] == sha256_file(untrained)
    assert json.loads((tmp_path / "verify.json").read_text()) == result
    assert not list(tmp_path.glob(".*.tmp"))


def test_trained_model_and_its_8bit_optimizer_state_are_ok(bundle, trained, tmp_path, no_figure):
    checkpoint = trained.parent / "checkpoints" / "latest.pt"
    report = examine_weights(trained, tmp_path / "weights.json", tmp_path / "weights.png", checkpoint_path=checkpoint)
    assert report["verdict"] == "ok", report["flags"]
    optimizer = report["optimizer"]
    # every parameter has optimizer state but the decoder bottleneck, fixed to the brain's principal components,
    # and the fMRI layer, composed from them (trained as to_components; fmri_rank)
    assert sorted(optimizer["without_state"]) == ["bottleneck.linear.bias", "bottleneck.linear.weight",
                                                  "to_fmri.bias", "to_fmri.weight"]
    assert optimizer["kind"] == ["8bit"] and optimizer["n_states"] == report["counts"]["parameters"] - 4
    assert {t["state"] for t in optimizer["tensors"].values()} == {"8bit", "float"}  # large tensors quantized
    quantized = next(t for t in optimizer["tensors"].values() if t["state"] == "8bit")
    assert quantized["exp_avg_sq"]["absmax_finite"] and quantized["exp_avg_sq"]["min_code_value"] >= 0
    # concatenated modalities: each BatchNorm bias gets its own gradient (summed ones would be bit-identical)
    assert not any("bit-identical" in n for n in report["tensors"]["modality_norms.audio.bias"]["notes"])

    result = verify_checkpoint(trained, bundle, tmp_path / "verify.json")
    source = result["checks"]["checkpoint"]
    assert source["ok"] and not source.get("skipped") and source["file"].endswith("best.pt")
    assert source["sha256"] == sha256_file(trained.parent / "checkpoints" / "best.pt")


def test_nan_fails_the_weights_verdict_and_the_verification(bundle, trained, tmp_path):
    def nan(t):
        t.view(-1)[3] = float("nan")
        return t
    model = tampered(trained, tmp_path / "nan", temporal__weight=nan)
    report = examine_weights(model, tmp_path / "weights.json", tmp_path / "weights.png")
    assert report["verdict"] == "failed"
    assert [(f["tensor"], f["flag"], f["severity"]) for f in report["flags"]] == \
        [("temporal.weight", "non_finite", "failed")]
    assert report["tensors"]["temporal.weight"]["n_nan"] == 1
    assert (tmp_path / "weights.png").exists()  # a sick model is reported, not raised

    out = tmp_path / "nan" / "verify.json"
    out.write_text("{}")  # a stale result of an earlier run must not survive a failure
    with pytest.raises(InputError) as error:
        verify_checkpoint(model, bundle, out)
    assert error.value.path == model and "temporal.weight" in str(error.value)
    assert "finite" in str(error.value)
    assert_no_outputs(tmp_path / "nan")


def test_exploding_outlier_dead_and_all_zero_tensors_are_flagged(trained, tmp_path, no_figure):
    def explode(t):
        t.view(-1)[0] = 5e3
        return t

    def outlier(t):  # 500 < 1e3, but ~180 stds from the mean of 32768 values
        t.view(-1)[0] = 500.0
        return t
    model = tampered(trained, tmp_path, heads__text__mlp__0__weight=explode, heads__audio__linear__weight=outlier,
                     heads__text__mlp__2__weight=lambda t: torch.full_like(t, 0.5),
                     encoders__frames__proj__weight=torch.zeros_like, to_fmri__bias=torch.zeros_like)
    report = examine_weights(model, tmp_path / "weights.json", tmp_path / "weights.png")
    assert report["verdict"] == "warnings"
    flags = {(f["tensor"], f["flag"]) for f in report["flags"]}
    assert flags == {("heads.text.mlp.0.weight", "exploding"), ("heads.audio.linear.weight", "outlier"),
                     ("heads.text.mlp.2.weight", "dead"), ("encoders.frames.proj.weight", "all_zero"),
                     ("to_fmri.bias", "dead")}
    assert all(f["severity"] == "warning" for f in report["flags"])
    reasons = {f["tensor"]: f["reason"] for f in report["flags"]}
    assert "5e+03 > 1000" in reasons["heads.text.mlp.0.weight"]
    assert "after 8 training steps" in reasons["to_fmri.bias"]  # zero init that never moved: not structural


def test_truncated_model_raises_naming_the_file(bundle, trained, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    for run in (lambda: examine_weights(model, tmp_path / "weights.json", tmp_path / "weights.png"),
                lambda: verify_checkpoint(model, bundle, tmp_path / "verify.json")):
        with pytest.raises(InputError) as error:
            run()
        assert error.value.path == model and str(error.value).startswith(str(model))
        assert "cannot be read" in str(error.value)
    assert_no_outputs(tmp_path)
    with pytest.raises(InputError, match="no such model file"):
        verify_checkpoint(tmp_path / "missing.pt", bundle, tmp_path / "verify.json")


def test_model_trained_on_another_manifest_fails(bundle, untrained, tmp_path):
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps(json.loads(bundle.read_text()), indent=1))  # same data, other bytes
    with pytest.raises(InputError) as error:
        verify_checkpoint(untrained, other, tmp_path / "verify.json")
    message = str(error.value)
    assert error.value.path == untrained and "manifest_sha256" in message and "different data" in message
    assert sha256_file(other)[:12] in message and sha256_file(bundle)[:12] in message
    assert_no_outputs(tmp_path)
    with pytest.raises(InputError) as error:
        verify_checkpoint(untrained, tmp_path / "absent.json", tmp_path / "verify.json")
    assert error.value.path == tmp_path / "absent.json"


def test_wrong_configuration_or_shapes_fail(bundle, untrained, tmp_path):
    manifest = json.loads(bundle.read_text())
    model = BrainAutoencoder.from_manifest({**manifest, "n_voxels": N_VOXELS - 1}, "tiny")
    wrong = save(model_dict(model, bundle), tmp_path / "voxels")
    with pytest.raises(InputError) as error:
        verify_checkpoint(wrong, bundle, tmp_path / "voxels" / "verify.json")
    assert "n_voxels: model 49 != manifest 50" in str(error.value)
    assert "manifest_sha256" not in str(error.value)  # the data are the same: only the config is wrong
    assert_no_outputs(tmp_path / "voxels")

    shape = tampered(untrained, tmp_path / "shape", to_fmri__bias=lambda t: t[:-1])
    with pytest.raises(InputError, match=r"wrong shape to_fmri\.bias \[49\] \(expected \[50\]\)"):
        verify_checkpoint(shape, bundle, tmp_path / "shape" / "verify.json")
    assert_no_outputs(tmp_path / "shape")


def test_model_must_be_its_checkpoint(bundle, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained.parent, run)
    saved = torch.load(run / "model.pt", weights_only=True)
    saved["state_dict"]["heads.text.mlp.0.bias"][0] += 1e-3  # finite, healthy, but not the trained weights
    save(saved, run)
    with pytest.raises(InputError, match="no checkpoint in .* holds model.pt's weights"):
        verify_checkpoint(run / "model.pt", bundle, run / "verify.json")

    shutil.copy2(trained, run / "model.pt")
    best = run / "checkpoints" / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # at-rest corruption of the source checkpoint
    best.unlink()  # best.pt is a hard link: break it instead of corrupting the fixture's file
    best.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"best\.pt: sha256 \w+\.\.\. is not the \w+\.\.\. that .*index\.json records"):
        verify_checkpoint(run / "model.pt", bundle, run / "verify.json")
    assert_no_outputs(run)


def test_bad_optimizer_state_fails(bundle, untrained, trained, tmp_path, no_figure):
    # Plain AdamW: one step on random gradients, then a negative second moment.
    saved = torch.load(untrained, weights_only=True)
    model = BrainAutoencoder.from_config(saved["model_config"])
    model.load_state_dict(saved["state_dict"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1, "epoch": 0}
    ok = save(state, tmp_path, "adamw.pt")
    report = examine_weights(untrained, tmp_path / "a.json", tmp_path / "a.png", checkpoint_path=ok)
    assert report["optimizer"]["kind"] == ["adamw"] and report["verdict"] == "ok", report["flags"]
    bad = copy.deepcopy(state)
    bad["optimizer"]["state"][1]["exp_avg_sq"][0] = -1.0  # parameter 1: encoders.frames.convs.0.bias
    report = examine_weights(untrained, tmp_path / "b.json", tmp_path / "b.png",
                             checkpoint_path=save(bad, tmp_path, "bad.pt"))
    assert report["verdict"] == "failed"
    assert [(f["tensor"], f["flag"]) for f in report["flags"] if f["severity"] == "failed"] == \
        [("optimizer/encoders.frames.convs.0.bias", "negative")]

    # bitsandbytes 8-bit state: a NaN block scale of a quantized second moment.
    state = torch.load(trained.parent / "checkpoints" / "latest.pt", weights_only=False)
    index, entry = next((i, e) for i, e in state["optimizer"]["state"].items()
                        if e["__bnb_optimizer_quant_state__"]["state2"].dtype == torch.uint8)
    entry["__bnb_optimizer_quant_state__"]["absmax2"][0] = float("nan")
    report = examine_weights(trained, tmp_path / "c.json", tmp_path / "c.png",
                             checkpoint_path=save(state, tmp_path, "bad8.pt"))
    failed = [f for f in report["flags"] if f["severity"] == "failed"]
    assert report["verdict"] == "failed" and len(failed) == 1 and failed[0]["flag"] == "non_finite"
    assert "absmax" in failed[0]["reason"] and failed[0]["tensor"].startswith("optimizer/")

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ok.read_bytes()[:100])
    with pytest.raises(InputError) as error:
        examine_weights(untrained, tmp_path / "d.json", tmp_path / "d.png", checkpoint_path=truncated)
    assert error.value.path == truncated
    assert not (tmp_path / "d.json").exists() and not (tmp_path / "d.png").exists()
