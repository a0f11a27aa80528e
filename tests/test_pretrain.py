"""Stimulus pretraining: the autoencoders' losses against references, bitwise resume after SIGKILL, the outputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from giblet.config import load_config
from giblet.autoencoders.codes import (CodeAutoencoder, CodeAutoencoderConfig, chunk_codes, code_autoencoder_loss,
                                           rare_code_weights)
from giblet.autoencoders.frames import FrameAutoencoder, FrameAutoencoderConfig, foreground_weighted_mse
from giblet.autoencoders.file import load_autoencoder
from giblet.pretrain.data import code_chunk_sets, validation_trs
from giblet.pretrain.trainer import pretrain_params

FRAMES = {"rate": 4.0, "height": 12, "width": 20, "latent_dim": 4, "channels": 4, "hidden": 8, "epochs": 2,
          "batch_size": 16, "foreground_weight": 20.0}
AUDIO = {"latent_dim": 4, "embed_dim": 8, "hidden": 16, "epochs": 3, "batch_size": 4}
CHECKPOINT = {"checkpoint": {"every_steps": 2, "every_minutes": None, "keep_rolling": 2}, "device": "cpu",
              "histogram_every_steps": 0}


def params(kind: str) -> dict:
    config = load_config(None, [])
    section = {**config["pretrain"][kind], **(FRAMES if kind == "frames" else AUDIO)}
    return pretrain_params(section, {**config["train"], **CHECKPOINT})


def test_foreground_weight_zero_is_the_plain_mse_and_weights_the_object():
    rng = torch.Generator().manual_seed(0)
    frames, decoded = torch.rand(3, 8, 12, 3, generator=rng), torch.rand(3, 8, 12, 3, generator=rng)
    assert torch.allclose(foreground_weighted_mse(decoded, frames, 0.0), F.mse_loss(decoded, frames))
    # A uniform frame with one bright pixel: missing that pixel costs more with the weight than without.
    frame = torch.full((1, 8, 12, 3), 0.2)
    frame[0, 4, 6] = 1.0
    background_only = torch.full_like(frame, 0.2)
    assert foreground_weighted_mse(background_only, frame, 20.0) > 5 * foreground_weighted_mse(background_only, frame, 0.0)


def test_code_loss_cross_entropy_equals_torch_on_every_frame_and_beta_smooth_add_their_terms():
    torch.manual_seed(0)
    config = CodeAutoencoderConfig(n_q=2, codebook_size=16, chunk_frames=5, latent_dim=3, embed_dim=4, hidden=8)
    model = CodeAutoencoder(config).eval()
    chunks = torch.randint(0, 16, (3, 4, 2, 5))
    objective, cross_entropy = code_autoencoder_loss(model, chunks, None, beta=0.0, smooth=0.0)
    flat = chunks.flatten(0, 1)
    reference = F.cross_entropy(model.decode(model.encode(flat)).flatten(0, 2), flat.flatten())
    assert torch.allclose(cross_entropy, reference, atol=1e-6) and torch.allclose(objective, reference, atol=1e-6)
    mean, log_variance = model.posterior(flat)
    kl = 0.5 * (mean ** 2 + log_variance.exp() - 1 - log_variance).sum()
    steps = ((mean.view(3, 4, -1)[:, 1:] - mean.view(3, 4, -1)[:, :-1]) ** 2).sum()
    with_terms, _ = code_autoencoder_loss(model, chunks, None, beta=2.0, smooth=3.0)
    assert torch.allclose(with_terms, reference + (2.0 * kl + 3.0 * steps) / (12 * 2 * 5), atol=1e-5)


def test_rare_code_weights_follow_frequency_and_average_one_over_the_codes():
    chunks = torch.tensor([[[0, 0, 0, 1]]])                     # code 0 three times, code 1 once, codebook of 3
    weights = rare_code_weights(chunks, 3, 0.5)
    raw = np.array([4.0, 2.0, 1.0]) ** -0.5
    expected = raw / ((raw * [3, 1, 0]).sum() / 4)
    np.testing.assert_allclose(weights[0].numpy(), expected, rtol=1e-6)
    assert rare_code_weights(chunks, 3, 0.0) is None


def test_chunks_cut_every_tr_in_time_order_and_hold_out_whole_blocks():
    codes = np.arange(40 * 2 * 6).reshape(40, 2, 6)
    chunks = chunk_codes(torch.from_numpy(codes), 3)                                 # (40, 2, 2, 3)
    assert chunks.shape == (40, 2, 2, 3)
    assert torch.equal(chunks[7, 1, 0], torch.from_numpy(codes[7, 0, 3:6]))
    train, val = code_chunk_sets(codes, 3)
    held = validation_trs(np.arange(40), 40)
    assert held.sum() == len(val) == 4 and len(train) == 36                         # TRs 9, 19, 29, 39
    assert torch.equal(val.tensors["chunks"][0], chunks[9])
    assert list(np.flatnonzero(validation_trs(np.arange(400), 400))[:3]) == [72, 73, 74]   # blocks of 8
    assert list(np.flatnonzero(validation_trs(np.arange(5000), 5000))[:2]) == [180, 181]   # at most 20


def test_frame_autoencoder_shapes_and_range():
    model = FrameAutoencoder(FrameAutoencoderConfig(height=12, width=20, latent_dim=4, channels=4, hidden=8))
    frames = torch.rand(5, 12, 20, 3)
    with torch.no_grad():
        z = model.encode(frames)
        out = model.decode(z)
    assert z.shape == (5, 4)
    assert out.shape == (5, 12, 20, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        FrameAutoencoderConfig(height=10)


# -- the engine: SIGKILL and resume -------------------------------------------------------------------


def run_pretraining(kind: str, stimulus: Path, out: Path, tr: float, movie: Path | None, fault_at_step=None):
    command = [sys.executable, "-m", "giblet.pretrain", kind, str(stimulus), str(out), "--tr", str(tr),
               "--params", json.dumps(params(kind)), "--quiet"]
    if movie is not None:
        command += ["--movie", str(movie)]
    if fault_at_step is not None:
        command += ["--fault-at-step", str(fault_at_step)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def stimulus(small_demo, tmp_path_factory) -> dict:
    """The small demo's frames and codes, as extract_frames and encode_audio write them."""
    from giblet.stimulus.audio import encode_audio
    from giblet.stimulus.frames import extract_frames

    config, root = small_demo["config"], tmp_path_factory.mktemp("stimulus")
    frames, codes = root / "frames.npy", root / "audio_codes.npy"
    extract_frames(small_demo["movie"], frames, config["tr"], config["stimulus"]["frames"], progress=False)
    encode_audio(small_demo["movie"], codes, config["tr"], {**config["stimulus"]["audio"], "device": "cpu"},
                 progress=False)
    return {"frames": frames, "audio": codes, "movie": small_demo["movie"], "tr": config["tr"]}


@pytest.mark.parametrize("kind", ["frames", "audio"])
def test_pretraining_resumes_bitwise_after_sigkill_and_writes_latents(kind, stimulus, tmp_path):
    movie = stimulus["movie"] if kind == "frames" else None
    whole = run_pretraining(kind, stimulus[kind], tmp_path / "whole", stimulus["tr"], movie)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_pretraining(kind, stimulus[kind], tmp_path / "broken", stimulus["tr"], movie, fault_at_step=5)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "broken" / "autoencoder.pt").exists()
    resumed = run_pretraining(kind, stimulus[kind], tmp_path / "broken", stimulus["tr"], movie)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step" in resumed.stderr
    a, _ = load_autoencoder(tmp_path / "whole" / "autoencoder.pt", kind)
    b, info = load_autoencoder(tmp_path / "broken" / "autoencoder.pt", kind)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    # latents.npy: one latent per frame slot (per code chunk) of every TR, from the frozen encoder
    source = np.load(stimulus[kind])
    latents = np.load(tmp_path / "broken" / "latents.npy")
    with torch.no_grad():
        if kind == "frames":
            from giblet.autoencoders.frames import resize_frames

            x = resize_frames(torch.from_numpy(source[3]), FRAMES["height"], FRAMES["width"])
            expected = b.encode(x).numpy()
        else:
            expected = b.encode(chunk_codes(torch.from_numpy(source[3:4].astype(np.int64)), 14)[0]).numpy()
    assert latents.shape[:2] == (len(source), source.shape[1] if kind == "frames" else source.shape[2] // 14)
    np.testing.assert_allclose(latents[3], expected, atol=1e-5)
    quality = info["quality"]
    key = "relative_mse" if kind == "frames" else "relative_cross_entropy"
    assert 0 < quality[key] < 1.5   # measured against the mean frame (the code frequencies)


def test_an_unusable_autoencoder_file_is_an_input_error_naming_it(tmp_path):
    from giblet.autoencoders.file import write_autoencoder
    from giblet.errors import InputError

    with pytest.raises(InputError, match="no such autoencoder file") as missing:
        load_autoencoder(tmp_path / "autoencoder.pt")
    assert str(tmp_path / "autoencoder.pt") in str(missing.value)
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot be read as an autoencoder"):
        load_autoencoder(tmp_path / "broken.pt")
    model = FrameAutoencoder(FrameAutoencoderConfig(height=12, width=20, latent_dim=4, channels=4, hidden=8))
    write_autoencoder(tmp_path / "frames.pt", "frames", model, model.state_dict())
    with pytest.raises(InputError, match="holds a 'frames' autoencoder, not 'audio'"):
        load_autoencoder(tmp_path / "frames.pt", "audio")
    loaded, info = load_autoencoder(tmp_path / "frames.pt", "frames")
    assert info["config"] == model.config.to_dict() and not any(p.requires_grad for p in loaded.parameters())
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="is not a giblet stimulus autoencoder"):
        load_autoencoder(tmp_path / "other.pt")
