"""Evaluation plots: reconstructions, lesions and the training summary.

The bundle's stimulus is what its own (untrained, seeded) model decodes from the bundle's fMRI, placed
at the TR the decoders reconstruct (``decode_index``, 3 TRs before each window's last with its lag of 4), so the
intact decoding is exact by construction (code accuracy 1, text top-1 1, ...), and the model's bottleneck
reads only the voxels of region A, so a lesion of A must degrade every modality while an equal number
of random voxels from outside A (all ignored) changes nothing.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from giblet.config import load_config
from giblet.data.assemble import assemble_dataset
from giblet.errors import InputError
from giblet.evaluate.lesion import lesion
from giblet.evaluate.reconstructions import plot_reconstructions
from giblet.evaluate.training_summary import training_summary
from giblet.files import sha256_file, write_json, write_sidecar
from giblet.model import BrainAutoencoder
from giblet.model.model_file import write_model_file
from giblet.splits import plan_split

N_TRS, GRID = 60, (5, 6, 1)
N_VOXELS = int(np.prod(GRID))
REGION_A = np.arange(10)  # the voxels the decoder reads
REGION_B = np.arange(20, 30)  # ignored by the decoder
F, H, W, N_Q, FA, C, K, D = 2, 18, 32, 4, 16, 64, 2, 16


def _save_model(model: BrainAutoencoder, path: Path) -> Path:
    """The fields of Trainer.write_model that load_model needs."""
    return write_model_file(path, model.config(), model.state_dict(), manifest="manifest.json")


def make_bundle(root: Path, encodec_sidecar: dict | None = None) -> dict:
    """A tiny data set whose stimulus is its own model's decoding of its fMRI (see the module doc).

    ``encodec_sidecar``: the codes sidecar's ``models.encodec`` record (default: one without weights,
    which plot_reconstructions cannot rebuild, so it skips the wav).
    """
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    fmri = rng.standard_normal((N_TRS, N_VOXELS)).astype(np.float32)
    mask = np.ones((N_TRS, K), bool)
    mask[::3, 1] = False  # some empty text slots
    arrays = {"frames": np.zeros((N_TRS, F, H, W, 3), np.uint8), "audio_codes": np.zeros((N_TRS, N_Q, FA), np.int16),
              "text": np.zeros((N_TRS, K, D), np.float32), "text_mask": mask}
    record = encodec_sidecar if encodec_sidecar is not None else {"codebook_size": C}
    nib.save(nib.Nifti1Image(np.ones(GRID, np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), root / "mask.nii.gz")
    np.save(root / "group.npy", fmri)
    region = np.zeros(N_VOXELS, np.int8)
    region[REGION_A], region[REGION_B] = 1, 2
    ceiling = np.where(region == 1, 0.8, 0.1)  # the reliable voxels (evaluate.load_ceiling reads it) are A's
    np.savez(root / "truth.npz", region=region, region_names=np.array(["null", "A", "B"]), ceiling_group=ceiling)
    split_params = load_config(None, ["split.lag_trs=4", "split.fractions={train: 0.6, val: 0.2, test: 0.2}"])["split"]
    write_json(root / "split.json", plan_split(N_TRS, N_TRS, split_params).to_dict())

    def assemble():
        for name, array in arrays.items():
            np.save(root / f"{name}.npy", array)
        write_sidecar(root / "audio_codes.npy", arrays["audio_codes"], {}, {}, models={"encodec": record})
        return assemble_dataset({k: root / f"{k}.npy" for k in arrays}, root / "group.npy", root / "mask.nii.gz",
                                root / "split.json", root / "manifest.json", tr=1.5, truth=root / "truth.npz")

    manifest = assemble()
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(manifest, "tiny").eval()
    with torch.no_grad():
        model.bottleneck.linear.weight[:, np.setdiff1d(np.arange(N_VOXELS), REGION_A)] = 0.0
        model.to_fmri.weight.normal_(0, 0.3)  # predicted fMRI that varies (the layer starts at zero)
        # Frames that differ between TRs by more than uint8 rounding: no shared bias pattern, and a
        # final conv large enough to spread the sigmoid's input.
        for name, parameter in model.heads["frames"].named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        model.heads["frames"].out.weight.mul_(1000.0)
        out = {k: v.numpy() for k, v in model.decode(torch.from_numpy(fmri)).items()}
    # Target t (shift_trs 0) decodes stimulus TR t + 1 + decode_index = t - delay: put out[t] there
    # (stimulus TR s gets out[s + delay]; the last `delay` TRs, which no target decodes, wrap around).
    delay = -1 - model.decode_index
    assert delay == 3  # so a figure of the window's last TR would not be exact
    out = {k: np.roll(v, -delay, axis=0) for k, v in out.items()}
    arrays["frames"] = np.round(out["frames"] * 255).astype(np.uint8)
    arrays["audio_codes"] = out["code_logits"].argmax(-1).astype(np.int16)
    text = out["text"] / np.linalg.norm(out["text"], axis=-1, keepdims=True)
    arrays["text"] = np.where(mask[..., None], text, 0).astype(np.float32)
    index = np.full((N_TRS, K), -1, np.int32)
    index[mask] = np.arange(mask.sum())
    np.savez(root / "text_annotations.npz", texts=np.array([f"annotation {t}.{s}" for t, s in zip(*np.nonzero(mask))]),
             embeddings=text[mask], index=index, onset=np.zeros(mask.sum()), offset=np.ones(mask.sum()))
    assemble()
    return {"root": root, "manifest": root / "manifest.json", "model": _save_model(model, root / "model.pt")}


def assert_png(path: Path, min_size=(400, 250)) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        size = image.size
        pixels = np.asarray(image.convert("L"), np.float32)
    assert size[0] >= min_size[0] and size[1] >= min_size[1], f"{path}: {size}"
    assert size[0] <= 4000 and size[1] <= 4000, f"{path}: {size}"
    assert pixels.std() > 5, f"{path} is (nearly) blank"
    return size


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders left in ``folder`` (names starting with '.')."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    return make_bundle(tmp_path_factory.mktemp("plots_bundle"))


@pytest.fixture(scope="module")
def local_encodec(tmp_path_factory) -> dict:
    """A local EnCodec state dict file and the sidecar record that names it."""
    from giblet.stimulus.encodec_weights import bare_model

    path = tmp_path_factory.mktemp("encodec") / "encodec_test.th"
    torch.save(bare_model(0).state_dict(), path)
    return {"weights": str(path), "bandwidth": 3.0, "seed": 0, "codebook_size": C,
            "weights_id": f"{path.name} sha256={sha256_file(path)}"}


# ---------------------------------------------------------------------------------------------
# Reconstructions


def test_reconstructions_skip_the_wav_when_the_weights_cannot_be_rebuilt(bundle, tmp_path, caplog):
    out = tmp_path / "recon"
    out.mkdir()
    (out / "decoded.wav").write_bytes(b"stale wav of an earlier run")
    result = plot_reconstructions(bundle["model"], bundle["manifest"], out, n_examples=4, audio_trs=3)

    files = ["audio.png", "decoded_test.npz", "fmri.png", "text.png", "video.png"]
    assert sorted(result["files"]) == files
    assert sorted(p.name for p in out.iterdir()) == files
    for name in result["files"]:
        if name.endswith(".png"):
            assert_png(out / name)
    assert result["audio"]["wav"] is None
    assert "models.encodec.weights" in result["audio"]["wav_skipped"]
    assert any("skipping decoded.wav" in r.getMessage() for r in caplog.records)
    assert no_leftovers(tmp_path) == []
    json.dumps(result)  # a caption can quote it

    # The stimulus is the model's own decoding at the decoded TR: everything is recovered exactly.
    manifest = json.loads(bundle["manifest"].read_text())
    n_test = result["n_test_trs"]
    assert n_test == manifest["n_targets"]["test"]
    assert result["decode_index"] == -4
    assert result["audio"]["accuracy_mean"] == 1.0
    assert result["audio"]["chance_uniform"] == pytest.approx(1 / C, abs=1e-4)
    assert result["text"]["library_top1"] == 1.0 and result["text"]["top1"] == 1.0
    assert result["text"]["cosine_mean"] > 0.999
    assert result["text"]["n_queries"] > n_test  # two slots where both are filled
    assert result["video"]["pixel_r_mean"] > 0.95 and result["video"]["mse"] < 1e-4
    assert result["video"]["identification"] == 1.0
    assert len(result["video"]["shown_trs"]) == 4
    # The TRs shown are the decoded stimulus TRs: target + 1 + decode_index (shift_trs is 0).
    first, stop = manifest["split"]["ranges"]["test"]
    assert result["video"]["shown_trs"][0] == first - 3 and result["video"]["shown_trs"][-1] == stop - 4
    assert result["audio"]["shown_trs"] == [first - 3 + (n_test - 3) // 2, first - 3 + (n_test - 3) // 2 + 2]
    # decoded_test.npz: every test row's decoded stimulus at the TR it reconstructs, scored without the model.
    root = bundle["root"]
    with np.load(out / "decoded_test.npz") as decoded:
        assert decoded["trs"].tolist() == list(range(first - 3, stop - 3))
        assert decoded["frames"].dtype == np.uint8
        assert np.abs(decoded["frames"].astype(int) - np.load(root / "frames.npy")[decoded["trs"]]).max() <= 1
        assert np.array_equal(decoded["codes"], np.load(root / "audio_codes.npy")[decoded["trs"]])
        assert decoded["text"].shape == (n_test, K, np.load(root / "text.npy").shape[2])
    assert result["video"]["grid_identification"]["top1"] == 1.0
    assert len(result["fmri"]["best_voxels"]) == 4
    assert result["fmri"]["n_reliable"] == len(REGION_A) and "exact" in result["fmri"]["reliable"]
    assert result["fmri"]["best_r"] == sorted(result["fmri"]["best_r"], reverse=True)


def test_reconstructions_decode_the_wav_with_the_sidecars_weights(tmp_path, local_encodec):
    from giblet.stimulus.audio import ENCODEC_SAMPLE_RATE

    data = make_bundle(tmp_path / "bundle", encodec_sidecar=local_encodec)
    out = tmp_path / "recon"
    result = plot_reconstructions(data["model"], data["manifest"], out, n_examples=3, audio_trs=3)
    assert result["audio"]["wav"] == "decoded.wav"
    assert result["audio"]["encodec_weights_id"] == local_encodec["weights_id"]
    with wave.open(str(out / "decoded.wav")) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, ENCODEC_SAMPLE_RATE)
        assert f.getnframes() == 3 * FA * 320
    assert result["audio"]["wav_first_tr"] == result["audio"]["shown_trs"][0]
    assert_png(out / "audio.png")


def test_reconstructions_only_for_enabled_modalities(tmp_path):
    data = make_bundle(tmp_path / "bundle")
    manifest = json.loads(data["manifest"].read_text())
    for role in ("audio_codes", "text", "text_mask"):
        del manifest["arrays"][role]
    del manifest["modalities"]["audio"], manifest["modalities"]["text"]
    write_json(data["root"] / "frames_only.json", manifest)
    torch.manual_seed(0)
    _save_model(BrainAutoencoder.from_manifest(manifest, "tiny").eval(), data["root"] / "frames_only.pt")
    out = tmp_path / "recon"
    result = plot_reconstructions(data["root"] / "frames_only.pt", data["root"] / "frames_only.json", out)
    files = ["decoded_test.npz", "fmri.png", "video.png"]
    assert sorted(result["files"]) == files and "audio" not in result and "text" not in result
    assert sorted(p.name for p in out.iterdir()) == files
    with np.load(out / "decoded_test.npz") as decoded:
        assert sorted(decoded.files) == ["frames", "trs"]

    # And a model of other modalities than the manifest's is refused, naming the model.
    with pytest.raises(InputError, match="modalities") as error:
        plot_reconstructions(data["model"], data["root"] / "frames_only.json", tmp_path / "other")
    assert error.value.path == data["model"]


def test_reconstructions_leave_nothing_after_an_error(tmp_path):
    data = make_bundle(tmp_path / "bundle")
    library = data["root"] / "text_annotations.npz"
    library.unlink()  # text comes after video and audio: those figures were drawn already
    out = tmp_path / "out" / "recon"
    with pytest.raises(InputError) as error:
        plot_reconstructions(data["model"], data["manifest"], out)
    assert error.value.path == library
    assert not out.exists()
    assert no_leftovers(out.parent) == []


# ---------------------------------------------------------------------------------------------
# Lesions


def test_lesion_of_the_region_the_decoder_reads_degrades_it_more_than_random(bundle, tmp_path):
    out_json, out_png = tmp_path / "lesion.json", tmp_path / "lesion.png"
    result = lesion(bundle["model"], bundle["manifest"], out_json, out_png, n_controls=2)

    assert set(result["regions"]) == {"A", "B"}  # from truth.npz, without 'null'
    assert json.loads(out_json.read_text()) == result
    assert_png(out_png)
    intact = result["intact"]
    assert intact["codes_accuracy"] == 1.0 and intact["text_cosine"] > 0.999 and intact["frames_r"] > 0.95
    a, b = result["regions"]["A"], result["regions"]["B"]
    assert a["n_voxels"] == len(REGION_A) and a["control_n_voxels"] == len(REGION_A)
    for metric in ("frames_r", "codes_accuracy", "text_cosine"):
        assert a["change"][metric] < -0.01, metric  # worse than intact...
        assert a["control_change"][metric] == 0.0, metric  # ...while random voxels outside A change nothing
        assert a["excess"][metric] < -0.01, metric
        assert b["change"][metric] == 0.0, metric  # the decoder ignores B
        assert b["control_change"][metric] < 0.0, metric  # B's controls hit A's voxels
    assert a["change"]["frames_mse"] > 0


def test_lesion_regions_from_nifti_masks(bundle, tmp_path):
    affine = nib.load(bundle["root"] / "mask.nii.gz").affine
    masks = {}
    for name, voxels in (("A", REGION_A), ("B", REGION_B)):
        data = np.zeros(GRID, np.uint8)
        data.reshape(-1)[voxels] = 1  # the mask is full, so voxel v is the v-th in C order
        masks[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), masks[name])
    result = lesion(bundle["model"], bundle["manifest"], tmp_path / "l.json", tmp_path / "l.png", regions=masks,
                    n_controls=1)
    assert result["regions"]["A"]["change"]["codes_accuracy"] < result["regions"]["A"]["control_change"]["codes_accuracy"]
    assert result["regions"]["B"]["change"]["codes_accuracy"] == 0.0

    # A mask on another grid is refused, naming it, and nothing is written.
    nib.save(nib.Nifti1Image(np.ones((5, 6, 2), np.uint8), affine), tmp_path / "bad_shape.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(GRID, np.uint8), affine * 2), tmp_path / "bad_affine.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    for bad in ("bad_shape.nii.gz", "bad_affine.nii.gz", "missing.nii.gz"):
        with pytest.raises(InputError) as error:
            lesion(bundle["model"], bundle["manifest"], out / "l.json", out / "l.png",
                   regions={"A": masks["A"], "bad": tmp_path / bad})
        assert error.value.path == tmp_path / bad
        assert list(out.iterdir()) == []


def test_lesion_without_truth_or_regions_is_an_input_error(bundle, tmp_path):
    manifest = json.loads(bundle["manifest"].read_text())
    del manifest["arrays"]["truth"]
    write_json(tmp_path / "manifest.json", manifest)
    with pytest.raises(InputError, match="no 'truth'") as error:
        lesion(bundle["model"], tmp_path / "manifest.json", tmp_path / "l.json", tmp_path / "l.png")
    assert error.value.path == tmp_path / "manifest.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# ---------------------------------------------------------------------------------------------
# Training summary


def write_history(path: Path, n_epochs: int = 4, steps_per_epoch: int = 10) -> list[dict]:
    rng = np.random.default_rng(1)
    entries, step = [], 0
    for epoch in range(n_epochs):
        for _ in range(steps_per_epoch):
            step += 1
            parts = {f"train/{k}": float(rng.random() + 1 / step) for k in ("codes", "fmri", "fmri_corr", "text")}
            entries.append({"step": step, "epoch": epoch, "lr": 1e-3 * min(1, step / 5), "grad_norm": float(rng.random()),
                            **parts, "train/total": sum(parts.values()), "samples_per_s": 30 + rng.random(),
                            "step_time_s": 0.5})
        val = {f"val/{k}": float(rng.random()) for k in ("codes", "fmri", "fmri_corr", "text", "total")}
        entries.append({"step": step, "epoch": epoch + 1, **val, "val/fmri_r_mean": float(rng.random() / 5)})
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return entries


def test_training_summary_reports_the_best_and_final_values(tmp_path):
    entries = write_history(tmp_path / "history.jsonl")
    result = training_summary(tmp_path / "history.jsonl", tmp_path / "summary.png")
    assert_png(tmp_path / "summary.png", min_size=(1000, 600))
    val = [e for e in entries if "val/total" in e]
    assert result["n_train_steps"] == 40 and result["n_validations"] == 4
    for key in ("val/total", "val/codes", "val/fmri", "val/fmri_corr", "val/text"):
        best = min(val, key=lambda e: e[key])
        assert result["best"][key] == {"value": best[key], "step": best["step"], "epoch": best["epoch"]}
    assert result["best"]["val/fmri_r_mean"]["value"] == max(e["val/fmri_r_mean"] for e in val)
    assert result["final"]["train/total"] == [e for e in entries if "train/total" in e][-1]["train/total"]
    assert result["final_val"]["val/total"] == val[-1]["val/total"]
    json.dumps(result)


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    ("\n\n", "is empty"),
    (None, "line 3 is not valid JSON"),
    ('{"step": 1, "train/total": 1.0}\n[1, 2]\n', "line 2 is not a history entry"),
    ('{"step": 1, "train/total": "x"}\n', "line 1: non-numeric value for train/total"),
])
def test_training_summary_rejects_a_bad_history(tmp_path, content, expected):
    history = tmp_path / "history.jsonl"
    if content is None:  # a good history with a truncated third line
        write_history(history)
        lines = history.read_text().splitlines(keepends=True)
        lines[2] = lines[2][:25] + "\n"
        history.write_text("".join(lines))
    else:
        history.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=expected) as error:
        training_summary(history, out / "summary.png")
    assert error.value.path == history and str(history) in str(error.value)
    assert list(out.iterdir()) == []


def test_training_summary_of_a_missing_history(tmp_path):
    with pytest.raises(InputError, match="no such training history"):
        training_summary(tmp_path / "nope.jsonl", tmp_path / "summary.png")
    assert list(tmp_path.iterdir()) == []
