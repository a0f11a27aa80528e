"""embed_frames: frozen CLIP image embeddings of exactly the frames extract_frames keeps, equal to
open_clip's own encode_image, wired into the rules, the model and the ridge baseline."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from giblet.config import load_config
from giblet.errors import ConfigError, InputError
from giblet.stimulus.frame_features import embed_frames
from giblet.stimulus.frames import extract_frames, frames_per_tr
from tests.test_frames import expected_numbers, write_numbered_clip

TR, FPS = 1.5, 25
SIDE, BITS = 96, 8  # square frames: CLIP's centre crop keeps all of them


def clip_params(skip: int, model: str = "ViT-B-32", pretrained: str = "none") -> dict:
    return {"frame_skip": skip, "clip": {"model": model, "pretrained": pretrained, "batch_size": 5, "device": "cpu",
                                         "seed": 0}}


def write_square_numbered_clip(path: Path, n_frames: int) -> Path:
    """A lossless 25 fps 96 x 96 clip whose frame k draws k in binary: 8 columns of 12 px, white where a bit
    is set (test_frames' numbered clip is 16:9, and the centre crop would hide its lowest bits)."""
    from giblet.demo.movie import stream_rate

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=stream_rate(FPS), options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for k in range(n_frames):
            bits = (k >> np.arange(BITS)) & 1
            row = np.repeat(bits * 255, SIDE // BITS).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(np.repeat(row[None, :, None], SIDE, 0), 3, 2), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_tr_clip(path: Path, colours: list[tuple], width: int = 96, height: int = 64) -> Path:
    """A lossless 25 fps clip with one picture per TR: the frames shown in [1.5 i, 1.5 (i+1)) s are
    ``colours[i]`` with a white square whose place moves with i."""
    from giblet.demo.movie import stream_rate

    n_frames = int(len(colours) * TR * FPS)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=stream_rate(FPS), options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(n_frames):
            i = int(k / FPS // TR)  # k / 25 is exact on the TR edges (k = 75, 150, ...)
            image = np.empty((height, width, 3), np.uint8)
            image[:] = colours[i]
            image[4:28, 4 + 12 * i:28 + 12 * i] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def reference_clip():
    """open_clip's own ViT-B-32 with its own evaluation transform, built independently of giblet (the same
    seed as the stage's demo random init)."""
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return model.eval(), preprocess


def reference_embeddings(reference_clip, rgb: np.ndarray) -> np.ndarray:
    """``model.encode_image(preprocess(image), normalize=True)`` of each RGB frame (N, H, W, 3): (N, d)."""
    from PIL import Image

    model, preprocess = reference_clip
    with torch.inference_mode():
        return model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in rgb]), normalize=True).numpy()


def decode_all(movie: Path) -> np.ndarray:
    """Every frame of ``movie`` as RGB (N, H, W, 3), decoded here with PyAV's own conversion."""
    with av.open(str(movie)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# ----------------------------------------------------------------------------- the stage

def test_embeddings_are_open_clips_own_of_the_frames_each_tr_keeps(tmp_path, reference_clip):
    """Shape, dtype, sidecar; each slot's embedding is encode_image(preprocess(frame)) of the frame the TR grid
    assigns it (independent decode, independent assignment), within float16 rounding."""
    times = np.arange(int(4 * TR * FPS)) / FPS  # 150 frames: 4 TRs
    movie = write_square_numbered_clip(tmp_path / "numbered.mp4", len(times))
    skip = 10
    out = embed_frames(movie, tmp_path / "stimulus" / "frame_features.npy", TR, clip_params(skip), progress=False)
    features = np.load(out)
    slots = frames_per_tr(FPS, TR, skip)
    assert features.shape == (4, slots, 512) and features.dtype == np.float16 and slots == 4
    np.testing.assert_allclose(np.linalg.norm(features.astype(np.float64), axis=-1), 1.0, atol=2e-3)

    sidecar = json.loads((tmp_path / "stimulus" / "frame_features.json").read_text())
    assert sidecar["shape"] == [4, 4, 512] and sidecar["dtype"] == "float16" and sidecar["frames_per_tr"] == 4
    assert sidecar["models"]["clip"]["model"] == "ViT-B-32" and "DEMO ONLY" in sidecar["models"]["clip"]["pretrained"]
    assert sidecar["models"]["clip"]["preprocess"]["size"] == [224, 224]
    assert sidecar["frames_embedded"] == 16 and sidecar["frames_per_s"] > 0 and sidecar["parameters"]["frame_skip"] == 10
    assert len(sidecar["sources"]["movie"]["sha256"]) == 64

    frames = decode_all(movie)
    expected = expected_numbers(times, TR, 4, skip, slots)  # frame number of every (TR, slot)
    trs, chosen = np.array([0, 1, 2, 3]), np.array([0, 2, 3, 1])
    k = expected[trs, chosen]
    reference = reference_embeddings(reference_clip, frames[np.concatenate([k, k + skip])])
    ours = features[trs, chosen].astype(np.float32)
    np.testing.assert_allclose(ours, reference[:4], atol=1e-3, rtol=0)
    # The comparison can fail: the next frame kept (10 frames on, another number drawn) is far off.
    assert (np.abs(ours - reference[4:]).max(axis=1) > 1e-2).all()
    # Every slot is its own frame: a frame_skip or TR off by one would pick another number.
    every = reference_embeddings(reference_clip, frames[expected.ravel()])
    np.testing.assert_allclose(features.reshape(16, -1).astype(np.float32), every, atol=1e-3, rtol=0)


def test_the_frames_are_those_extract_frames_keeps(tmp_path):
    """A movie whose picture changes exactly at each TR edge: every slot holds its own TR's picture in
    frames.npy, and the embeddings are equal exactly where frames.npy's pictures are (same TRs, same slots)."""
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]
    movie = write_tr_clip(tmp_path / "tr_pictures.mp4", colours)
    skip = 12  # slots 0, 12, 24, 36 of a window: TR 1's last slot is frame 74 (2.96 s), TR 2's first is 75 (3.0 s)
    features = np.load(embed_frames(movie, tmp_path / "ff" / "frame_features.npy", TR,
                                    clip_params(skip, model="ViT-S-32"), progress=False)).astype(np.float32)
    pixels = np.load(extract_frames(movie, tmp_path / "px" / "frames.npy", TR,
                                    {"enabled": True, "width": 96, "height": 64, "frame_skip": skip}, progress=False))
    assert features.shape[:2] == pixels.shape[:2] == (6, 4)
    # Each TR's slots show that TR's colour (away from the square).
    np.testing.assert_allclose(pixels[:, :, 40:, :].mean(axis=(2, 3)), np.array(colours, float)[:, None].repeat(4, 1),
                               atol=3)
    picture = pixels.reshape(24, -1).astype(np.int16)
    same_picture = np.abs(picture[:, None] - picture[None]).max(-1) <= 3             # (24, 24)
    difference = np.abs(features.reshape(24, 1, -1) - features.reshape(1, 24, -1)).max(-1)
    assert same_picture.sum() == 6 * 4 * 4 and difference[same_picture].max() < 1e-3
    assert difference[~same_picture].min() > 1e-2
    # ... and each is of its own TR's picture (a TR off by one would keep that pattern): nearest to open_clip's
    # own embedding of that TR's frame, among every TR's.
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    reference = reference_embeddings((model.eval(), preprocess), pixels[:, 0])     # (6, d)
    distance = np.abs(features[:, :, None] - reference[None, None]).max(-1)       # (6, 4, 6)
    assert (distance.argmin(-1) == np.arange(6)[:, None]).all()


def test_a_missing_weights_file_is_an_error_naming_it(tmp_path):
    movie = write_numbered_clip(tmp_path / "clip.mp4", np.arange(40) / FPS)
    missing = tmp_path / "weights" / "clip_vitb32.safetensors"
    with pytest.raises(InputError, match="clip_vitb32.safetensors: weights file not found"):
        embed_frames(movie, tmp_path / "out" / "frame_features.npy", TR, clip_params(12, pretrained=str(missing)),
                     progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ConfigError, match="stimulus.frames.clip.pretrained.*neither 'none', an existing file"):
        embed_frames(movie, tmp_path / "out" / "frame_features.npy", TR, clip_params(12, pretrained="no-such-tag"),
                     progress=False)


# ----------------------------------------------------------------------------- config and rules

def test_real_data_refuses_random_clip_weights_only_when_they_are_used():
    files = ["dataset=files", "inputs.movie=movie.mp4", "inputs.annotations=a.tsv",
             "stimulus.audio.weights=pretrained", "stimulus.text.pretrained=openai"]
    assert load_config(None, files)["stimulus"]["frames"]["features"] == "pixels"  # the default: no CLIP
    for features in ("clip", "both"):
        with pytest.raises(ConfigError, match=r"'stimulus\.frames\.clip\.pretrained': 'none' \(random weights\)"):
            load_config(None, files + [f"stimulus.frames.features={features}"])
        assert load_config(None, files + [f"stimulus.frames.features={features}", "stimulus.frames.clip.pretrained=openai"])
    with pytest.raises(ConfigError, match="stimulus.frames.features"):
        load_config(None, ["stimulus.frames.features=dino"])


@pytest.mark.parametrize("features, roles", [("pixels", {"frames"}), ("clip", {"frame_features"}),
                                             ("both", {"frames", "frame_features"})])
def test_the_rules_follow_stimulus_frames_features(features, roles):
    from giblet import paths, rules

    config = load_config(None, [f"stimulus.frames.features={features}"])
    arrays = paths.stimulus_arrays(config)
    assert {"frames", "frame_features"} & set(arrays) == roles
    stim = paths.stimulus(config)
    inputs = rules.inputs("assemble_dataset", config)["stimulus"]
    assert (str(stim["frame_features_sidecar"]) in inputs) == ("frame_features" in roles)
    assert (str(stim["frames_sidecar"]) in inputs) == ("frames" in roles)
    # No pixels are decoded from CLIP features alone, so there is no video figure to wait for.
    figures = [Path(p).name for p in rules.outputs("plot_reconstructions", config)["figures"]]
    assert ("video.png" in figures) == ("frames" in roles)
    # Each stage's params hold only what it reads: a CLIP setting does not rerun extract_frames.
    other = load_config(None, [f"stimulus.frames.features={features}", "stimulus.frames.clip.model=ViT-S-32"])
    assert rules.params("extract_frames", other) == rules.params("extract_frames", config)
    assert rules.params("embed_frames", other) != rules.params("embed_frames", config)
    assert set(rules.params("embed_frames", config)["settings"]) == {"frame_skip", "clip"}


# ----------------------------------------------------------------------------- the model and the baseline

def test_the_frame_features_loss_is_one_minus_cosine_over_every_frame():
    from giblet.model.losses import losses

    rng = np.random.default_rng(0)
    true = rng.standard_normal((3, 5, 4, 8)).astype(np.float32)  # (B, lag, F, d)
    pred = rng.standard_normal((3, 4, 8)).astype(np.float32)     # the decoded TR
    target = true[:, -2]
    cosine = (pred * target).sum(-1) / np.linalg.norm(pred, axis=-1) / np.linalg.norm(target, axis=-1)
    out = losses({"frame_features": torch.from_numpy(pred)}, {"frame_features": torch.from_numpy(true)},
                 {"frame_features": 2.0}, decode_index=-2)
    assert out["frame_features"].item() == pytest.approx(float(np.mean(1 - cosine)), abs=1e-6)
    assert out["total"].item() == pytest.approx(2.0 * float(np.mean(1 - cosine)), abs=1e-6)
    same = losses({"frame_features": torch.from_numpy(target * 3.0)}, {"frame_features": torch.from_numpy(true)},
                  decode_index=-2)
    assert same["frame_features"].item() == pytest.approx(0.0, abs=1e-6)


def test_with_both_the_model_encodes_and_decodes_pixels_and_clip_features():
    from giblet.model import BrainAutoencoder, BrainAutoencoderConfig, losses

    modalities = {"frames": {"frames_per_tr": 2, "height": 18, "width": 32},
                  "frame_features": {"frames_per_tr": 2, "dim": 16}}
    torch.manual_seed(0)
    config = BrainAutoencoderConfig.from_preset("tiny", modalities=modalities, n_voxels=7, lag_trs=3, fmri_rank=0)
    model = BrainAutoencoder(config)
    torch.nn.init.normal_(model.to_fmri.weight)  # zero at init: no gradient would reach the encoders yet
    batch = {"frames": torch.randint(0, 256, (4, 3, 2, 18, 32, 3), dtype=torch.uint8),
             "frame_features": torch.nn.functional.normalize(torch.randn(4, 3, 2, 16), dim=-1),
             "fmri": torch.randn(4, 7), "stimulus_trs": torch.arange(3).repeat(4, 1) + torch.arange(4)[:, None]}
    out = model.train()(batch)
    assert out["frames"].shape == (4, 2, 18, 32, 3) and out["frame_features"].shape == (4, 2, 16)
    parts = losses(out, batch, decode_index=model.decode_index)
    assert {"fmri", "frames", "frame_features"} <= set(parts)
    parts["total"].backward()
    # Both streams reach the brain prediction, and the CLIP head learns from its cosine loss.
    for name in ("frames", "frame_features"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[name].parameters()), name
    assert model.heads["frame_features"].mlp[-1].weight.grad.abs().sum() > 0


def clip_only_dataset(small_demo, out: Path) -> Path:
    """The small demo with CLIP frame features as its only stimulus (one frame per TR, ViT-S-32 to keep it
    fast), every 8th voxel of its noise-free brain signal plus noise as the group fMRI, and a manifest."""
    import nibabel as nib

    from giblet.data.assemble import assemble_dataset
    from giblet.files import write_json
    from giblet.splits import plan_split

    config = load_config(None, ["stimulus.frames.features=clip", "stimulus.frames.frame_skip=38",
                                "stimulus.frames.clip.model=ViT-S-32", "stimulus.frames.clip.device=cpu",
                                "split.lag_trs=4", "split.fractions={train: 0.6, val: 0.15, test: 0.25}",
                                f"results_dir={out}"])
    from giblet import paths, rules, stages

    stim = paths.stimulus(config)
    arguments = {**rules.inputs("embed_frames", config), **rules.outputs("embed_frames", config),
                 **rules.params("embed_frames", config), "movie": str(small_demo["movie"])}
    assert stages.run("embed_frames", arguments, progress=False) == 0
    with np.load(small_demo["truth"]) as truth:
        signal = truth["signal"][:, ::8]
    fmri = signal + 0.5 * np.random.default_rng(0).standard_normal(signal.shape)
    fmri = ((fmri - fmri.mean(0)) / fmri.std(0)).astype(np.float32)
    np.save(out / "group.npy", fmri)
    nib.save(nib.Nifti1Image(np.ones((fmri.shape[1], 1, 1), np.uint8), np.eye(4)), out / "mask.nii.gz")
    n_trs = len(fmri)
    write_json(out / "split.json", plan_split(n_trs, n_trs, config["split"]).to_dict())
    # The code autoencoder still learns from the soundtrack; no frame autoencoder without pixels.
    assert set(paths.stimulus_arrays(config)) == {"frame_features", "audio_codes", "text", "text_mask",
                                                  "audio_latents", "audio_autoencoder"}
    assemble_dataset({"frame_features": stim["frame_features"]}, out / "group.npy", out / "mask.nii.gz",
                     out / "split.json", out / "manifest.json", tr=config["tr"])
    return out / "manifest.json"


def test_model_and_ridge_take_clip_frame_features_as_a_stream(small_demo, tmp_path):
    from giblet.evaluate.evaluate import evaluate
    from giblet.evaluate.ridge import write_ridge_baseline
    from giblet.evaluate.verify import verify_checkpoint
    from giblet.train.loop import train

    manifest_path = clip_only_dataset(small_demo, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["modalities"] == {"frame_features": {"frames_per_tr": 1, "dim": 384}}
    assert manifest["arrays"]["frame_features"]["dtype"] == "float16" and "frames" not in manifest["arrays"]

    params = {"preset": "tiny", "epochs": 2, "batch_size": 16, "device": "cpu", "warmup_steps": 2,
              "early_stopping_patience": 0, "checkpoint": {"every_steps": None, "every_minutes": None}}
    assert train(str(manifest_path), str(tmp_path / "train"), params, progress=False) == 0
    history = [json.loads(line) for line in (tmp_path / "train" / "history.jsonl").read_text().splitlines()]
    steps = [h for h in history if "train/total" in h]
    assert steps and all(np.isfinite(h["train/frame_features"]) for h in steps)
    assert not any("train/frames" in h for h in steps)  # no pixel stream, no pixel loss

    assert verify_checkpoint(tmp_path / "train" / "model.pt", manifest_path, tmp_path / "verify.json")["ok"]
    metrics = evaluate(tmp_path / "train" / "model.pt", manifest_path, tmp_path / "metrics", n_null=5)
    decoded = metrics["decoding"]["frame_features"]
    assert -1 <= decoded["cosine_mean"] <= 1 and decoded["n_queries"] == metrics["n_test"]
    assert metrics["decoding_identification"]["frame_features"]["n"] == metrics["n_test"]

    ridge = write_ridge_baseline(manifest_path, tmp_path / "ridge.json", n_null=5)
    assert list(ridge["info"]["features"]["columns"]) == ["frame_features"]
    assert ridge["info"]["features"]["raw_dims"]["frame_features"] == 384
    assert np.isfinite(ridge["fmri"]["r_mean"]) and ridge["n_test"] == metrics["n_test"]
    assert ridge["decoding_identification"]["frame_features"]["n"] == metrics["n_test"]
