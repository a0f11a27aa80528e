"""The EnCodec audio-codes stage: layout per TR, weights, chunking, decoding and bad input."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.signal import correlate, resample_poly

from giblet.errors import InputError
from giblet.files import sha256_file
from giblet.stimulus import audio as A
from giblet.stimulus import encodec_weights as W
from giblet.timing import n_trs

SOURCE_RATE = 22_050
DURATION_S = 16.0  # > 13.7 s, so the demo codebooks get 1024 distinct latent frames
TR = 1.5


def make_signal(duration_s: float = DURATION_S, rate: int = SOURCE_RATE, noise: bool = True) -> np.ndarray:
    """Stereo float32 (2, n): a chirp 200 Hz -> 4 kHz, amplitude-modulated noise, a silent gap."""
    t = np.arange(int(duration_s * rate)) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 0.5 * 3800 / duration_s * t**2))
    hiss = np.random.default_rng(0).standard_normal(t.size) * 0.1 * (1 + np.sin(2 * np.pi * 0.7 * t))
    mono = np.where((t % 5) < 4.5, chirp + noise * hiss, 0.0)  # half a second of silence every 5 s
    return np.stack([mono, 0.5 * mono]).astype(np.float32)


def write_media(path: Path, audio: np.ndarray | None, video_s: float = 0.0, faststart: bool = False,
                audio_start_s: float = 0.0) -> Path:
    """An mp4/m4a with AAC audio (2, n) at SOURCE_RATE from ``audio_start_s`` on, and/or a tiny
    H.264 video of ``video_s`` s from 0 on."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:  # streams first, then the packets
        vstream = container.add_stream("libx264", rate=5) if video_s else None
        astream = container.add_stream("aac", rate=SOURCE_RATE, layout="stereo") if audio is not None else None
        if vstream is not None:
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
            for j in range(int(video_s * 5)):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), j % 256, np.uint8), format="rgb24")
                frame.pts = j
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            for start in range(0, audio.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start: start + 1024]),
                                                   format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = SOURCE_RATE, start + round(audio_start_s * SOURCE_RATE)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("media")
    return {"movie": write_media(root / "movie.mp4", make_signal(), video_s=DURATION_S),
            "chirp": write_media(root / "chirp.m4a", make_signal(4.0, noise=False)),
            "late": write_media(root / "late.mp4", make_signal(4.0, noise=False), video_s=5.0, audio_start_s=0.5),
            "silent": write_media(root / "silent.mp4", None, video_s=3.0),
            "root": root}


@pytest.fixture(scope="module")
def audio(media) -> np.ndarray:
    return A.load_audio(media["movie"])


@pytest.fixture(scope="module")
def demo_model(audio):
    return A.load_encodec("demo-random", 3.0, "cpu", seed=0, seeding_audio=audio)


@pytest.fixture(scope="module")
def one_shot(demo_model, audio) -> np.ndarray:
    return A.encode(demo_model[0], audio, chunk_s=1000, device="cpu", progress=False)


@pytest.fixture(scope="module")
def weights_file(demo_model, media) -> Path:
    """The demo model's state dict saved like any weights file (it has varied codebooks)."""
    path = media["root"] / "encodec_demo.th"
    torch.save(demo_model[0].state_dict(), path)
    return path


def params(**overrides) -> dict:
    return {"enabled": True, "bandwidth": 3.0, "weights": "demo-random", "weights_sha256": None,
            "chunk_s": 60, "device": "cpu", "seed": 0, **overrides}


# --- time layout ---------------------------------------------------------------------------------


def test_frames_per_tr_and_tr_windows():
    assert A.frames_per_tr(1.5) == 112 and A.frames_per_tr(2.0) == 150 and A.frames_per_tr(0.8) == 60
    codes = np.arange(3 * 2000, dtype=np.int16).reshape(3, 2000) % 1024
    per_tr = A.codes_per_tr(codes, TR, 12)
    assert per_tr.shape == (12, 3, 112) and per_tr.dtype == np.int16
    first = A.tr_first_frames(TR, 12)
    assert list(first[:4]) == [0, 113, 225, 338]  # one frame every two TRs is dropped at tr = 1.5
    for i, f0 in enumerate(first):  # every frame lies entirely inside its TR's window
        assert f0 / 75 >= i * TR - 1e-9 and (f0 + 112) / 75 <= (i + 1) * TR + 1e-9
        assert np.array_equal(per_tr[i], codes[:, f0: f0 + 112])
    with pytest.raises(ValueError, match="too few"):
        A.codes_per_tr(codes[:, :1000], TR, 12)


# --- audio in --------------------------------------------------------------------------------------


def test_load_audio_matches_independent_resampling(media):
    audio = A.load_audio(media["chirp"])  # AAC keeps a chirp's waveform (not that of noise)
    stereo = make_signal(4.0, noise=False)
    # libswresample's stereo -> mono downmix is (L + R) / sqrt(2); scipy resamples 22.05 -> 24 kHz.
    reference = resample_poly((stereo[0] + stereo[1]) / np.sqrt(2), 160, 147)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(reference)) < 0.05 * A.ENCODEC_SAMPLE_RATE  # AAC pads < 50 ms
    n, edge = min(len(audio), len(reference)), 2400
    error = audio[edge: n - edge] - reference[edge: n - edge]
    assert np.sqrt(np.mean(error**2) / np.mean(reference[edge: n - edge] ** 2)) < 0.03


def test_load_audio_puts_a_late_audio_stream_at_its_time(media):
    audio = A.load_audio(media["late"])  # the video starts at 0 s, the audio at 0.5 s
    stereo = make_signal(4.0, noise=False)
    reference = resample_poly((stereo[0] + stereo[1]) / np.sqrt(2), 160, 147)
    lag = np.argmax(correlate(audio, reference, mode="full", method="fft")) - (len(reference) - 1)
    assert abs(lag - 0.5 * A.ENCODEC_SAMPLE_RATE) <= 24  # within 1 ms (measured: 13 samples early)
    assert np.abs(audio[: int(0.45 * A.ENCODEC_SAMPLE_RATE)]).max() < 1e-3


# --- the model -------------------------------------------------------------------------------------


def test_demo_codes_are_varied_and_in_range(one_shot, audio):
    assert one_shot.dtype == np.int16 and one_shot.shape == (4, -(-len(audio) // 320))
    assert one_shot.min() >= 0 and one_shot.max() < 1024
    assert all(len(np.unique(layer)) > 100 for layer in one_shot)  # zero codebooks would give only 0


def test_demo_seeding_is_deterministic(demo_model, audio, one_shot):
    excerpt = audio[: 3 * A.ENCODEC_SAMPLE_RATE]
    again, weights_id = A.load_encodec("demo-random", 3.0, "cpu", seed=0, seeding_audio=audio)
    assert weights_id == demo_model[1] and "demo-random" in weights_id and "seed=0" in weights_id
    codes = A.encode(again, excerpt, 60, "cpu", progress=False)
    assert np.array_equal(codes, one_shot[:, : codes.shape[1]])
    other, other_id = A.load_encodec("demo-random", 3.0, "cpu", seed=1, seeding_audio=audio)
    assert other_id != weights_id
    assert np.mean(A.encode(other, excerpt, 60, "cpu", progress=False) != codes) > 0.5


def test_number_of_codebooks_per_bandwidth(weights_file, audio):
    for bandwidth, n_q in A.CODEBOOKS_PER_BANDWIDTH.items():
        model, _ = A.load_encodec(str(weights_file), bandwidth)
        codes = A.encode(model, audio[:A.ENCODEC_SAMPLE_RATE], 60, "cpu", progress=False)
        assert codes.shape == (n_q, 75)


def test_local_weights_give_the_codes_of_the_saved_model(weights_file, audio, one_shot):
    model, weights_id = A.load_encodec(str(weights_file), 3.0, weights_sha256=sha256_file(weights_file))
    assert weights_id == f"encodec_demo.th sha256={sha256_file(weights_file)}"
    codes = A.encode(model, audio[: 4 * A.ENCODEC_SAMPLE_RATE], 60, "cpu", progress=False)
    assert np.array_equal(codes, one_shot[:, : codes.shape[1]])


def test_pretrained_goes_through_the_hub_cache(tmp_path, monkeypatch, weights_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(W.EncodecModel, "_get_pretrained", staticmethod(offline))
    with pytest.raises(InputError, match="demo-random") as err:
        A.load_encodec("pretrained", 3.0)
    assert str(tmp_path / "hub" / "checkpoints" / W.PRETRAINED_FILE) in str(err.value)
    # A file in the cache is loaded like any local file, and checked against its name's hash prefix.
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / W.PRETRAINED_FILE).write_bytes(weights_file.read_bytes())
    with pytest.raises(InputError, match="checksum mismatch: expected d7cc33bc"):
        A.load_encodec("pretrained", 3.0)


# --- chunking and decoding ---------------------------------------------------------------------------


def test_chunked_encoding_matches_one_shot(demo_model, audio, one_shot):
    chunked = A.encode(demo_model[0], audio, chunk_s=3.0, device="cpu", progress=False)
    assert chunked.shape == one_shot.shape and chunked.dtype == np.int16
    # Chunk edges change the latents by float rounding only (~2e-8; 2 s of context absorbs the
    # encoder's start-up transient), so codes differ only at near-ties: measured 99.87 % identical
    # here (100 % in layer 1), 99.97 % on the 150 s demo; with no context it drops to 98.9 %.
    assert np.mean(chunked == one_shot) >= 0.995 and np.mean(chunked[0] == one_shot[0]) >= 0.998


def test_decode_length_and_rate(demo_model, one_shot):
    per_tr = A.codes_per_tr(one_shot, TR, 5)
    wav = A.decode(demo_model[0], per_tr, "cpu")
    assert wav.dtype == np.float32 and wav.shape == (5 * 112 * 320,) and np.isfinite(wav).all()
    assert np.abs(wav).max() > 0


# --- the stage and its inverse -----------------------------------------------------------------------


def test_encode_audio_stage_and_decode_audio(media, tmp_path, audio, one_shot):
    out = A.encode_audio(media["movie"], tmp_path / "stimulus" / "audio_codes.npy", TR, params(), progress=False)
    codes = np.load(out)
    t = n_trs(len(audio) / A.ENCODEC_SAMPLE_RATE, TR)
    assert codes.dtype == np.int16 and codes.shape == (t, 4, 112)
    assert np.array_equal(codes, A.codes_per_tr(one_shot, TR, t))  # the encoder is causal: padding is harmless
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["models"]["encodec"]["n_q"] == 4 and sidecar["frames_per_tr"] == 112
    assert sidecar["n_trs"] == t and sidecar["sources"]["movie"]["sha256"] == sha256_file(media["movie"])
    assert sidecar["models"]["encodec"]["weights_id"].startswith("demo-random seed=0")

    wav_path = A.decode_audio(out, tmp_path / "decoded" / "audio.wav", device="cpu")
    with wave.open(str(wav_path)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (24_000, 1, 2)
        assert f.getnframes() == t * 112 * 320
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["audio.wav"]


def test_decode_audio_refuses_a_changed_demo_movie(media, tmp_path):
    movie = tmp_path / "movie.mp4"
    movie.write_bytes(media["movie"].read_bytes())
    out = tmp_path / "codes" / "audio_codes.npy"
    out.parent.mkdir()
    np.save(out, np.zeros((2, 4, 112), np.int16))
    out.with_suffix(".json").write_text(json.dumps({
        "parameters": params(), "sources": {"movie": {"path": str(movie), "sha256": "0" * 64}},
        "models": {"encodec": {"weights": "demo-random", "weights_id": "x", "bandwidth": 3.0, "seed": 0}}}))
    with pytest.raises(InputError, match="changed since encoding") as err:
        A.decode_audio(out, tmp_path / "out" / "audio.wav", device="cpu")
    assert str(movie) in str(err.value) and not (tmp_path / "out" / "audio.wav").exists()


# --- bad input: a clear error naming the file, and nothing written -----------------------------------


def truncated(media, tmp_path) -> tuple[Path, dict, str]:
    path = tmp_path / "truncated.mp4"
    path.write_bytes(media["movie"].read_bytes()[:40_000])
    return path, params(), str(path)


def truncated_faststart(media, tmp_path) -> tuple[Path, dict, str]:
    whole = write_media(tmp_path / "whole.mp4", make_signal(), faststart=True)  # headers first
    path = tmp_path / "truncated.m4a"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    return path, params(), str(path)


def no_audio(media, tmp_path):
    return media["silent"], params(), "has no audio stream; set stimulus.audio.enabled: false"


def bad_bandwidth(media, tmp_path):
    return media["movie"], params(bandwidth=5.0), "1.5, 3.0, 6.0, 12.0, 24.0"


def missing_weights(media, tmp_path):
    missing = tmp_path / "nope.th"
    return media["movie"], params(weights=str(missing)), f"{missing}: EnCodec weights file not found"


def wrong_checksum(media, tmp_path, weights_file):
    return (media["movie"], params(weights=str(weights_file), weights_sha256="ab" * 32),
            f"{weights_file}: checksum mismatch: expected {'ab' * 32}, got {sha256_file(weights_file)}")


def wrong_shape(media, tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    key = "quantizer.vq.layers.0._codebook.embed"
    state[key] = state[key][:, :64]
    torch.save(state, tmp_path / "bad.th")
    return media["movie"], params(weights=str(tmp_path / "bad.th")), f"{key} (1024, 64) (expected (1024, 128))"


@pytest.mark.parametrize("case", [truncated, truncated_faststart, no_audio, bad_bandwidth, missing_weights,
                                  wrong_checksum, wrong_shape])
def test_bad_input_is_named_and_leaves_no_output(case, media, tmp_path, weights_file):
    args = (media, tmp_path, weights_file) if case in (wrong_checksum, wrong_shape) else (media, tmp_path)
    movie, bad_params, expected = case(*args)
    out_dir = tmp_path / "stimulus"
    out_dir.mkdir()
    (out_dir / "audio_codes.npy").write_bytes(b"earlier run")  # must survive a failed run untouched
    with pytest.raises(ValueError) as err:  # InputError is a ValueError too
        A.encode_audio(movie, out_dir / "audio_codes.npy", TR, bad_params, progress=False)
    assert expected in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".stimulus")) == []
    assert [p.name for p in out_dir.iterdir()] == ["audio_codes.npy"]
    assert (out_dir / "audio_codes.npy").read_bytes() == b"earlier run"
