"""The audio of a movie as EnCodec codes per TR, and back to a waveform.

    movie --load_audio--> float32 mono 24 kHz --encode--> (n_q, n_frames) int16 codes
          --codes_per_tr--> (T, n_q, frames_per_tr) int16 --decode--> float32 waveform --write_wav

EnCodec 24 kHz emits one code frame per 320 samples (75 frames/s) from n_q = bandwidth / 0.75
residual codebooks of 1024 entries. Codes are categorical: models predict them with embeddings and
cross-entropy, never MSE. TR i covers [i * tr, (i + 1) * tr) seconds and keeps the frames lying
entirely inside that window, so for tr = 1.5 s (112.5 frames) every TR has 112 frames and one frame
every two TRs is dropped. ``encode_audio`` is the pipeline stage; ``decode_audio`` its inverse.

Weights: ``"pretrained"`` (torch hub cache), a local state dict, or ``"demo-random"`` (DEMO ONLY;
see ``giblet.stimulus.encodec_weights``). Nearest codewords are found in float64, so chunked and
one-shot encodes agree even where the demo's codewords nearly tie.
"""

from __future__ import annotations

import logging
import math
import wave
from pathlib import Path

import av
import numpy as np
import torch
from encodec import EncodecModel

from giblet.devices import resolve_device
from giblet.errors import InputError
from giblet.files import atomic_output_dir, read_sidecar, sha256_file, write_sidecar
from giblet.logs import progress as progress_bar
from giblet.stimulus.encodec_weights import (HOP, audio_fingerprint, bare_model, load_pretrained,
                                             load_state_dict_file, nearest_codeword, seed_codebooks)
from giblet.stimulus.media import open_media, probe_movie
from giblet.timing import n_trs

log = logging.getLogger(__name__)

ENCODEC_SAMPLE_RATE = 24_000
ENCODEC_FRAME_RATE = 75  # code frames per second; hop = 320 samples
CODEBOOK_SIZE = 1024  # entries per EnCodec codebook: codes are in [0, 1024)
CODEBOOKS_PER_BANDWIDTH = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
CONTEXT_S = 2.0  # audio encoded (or codes decoded) on each side of a chunk and then discarded
DECODE_CHUNK_S = 60.0
MODEL_NAME = "encodec_24khz"


def frames_per_tr(tr: float) -> int:
    """Code frames per TR: the whole frames that fit in ``tr`` seconds, ``floor(tr * 75)``."""
    return int(math.floor(tr * ENCODEC_FRAME_RATE + 1e-6))


def tr_first_frames(tr: float, n: int) -> np.ndarray:
    """Index of the first code frame of each of ``n`` TRs: the first frame starting at or after i * tr."""
    return np.ceil(np.arange(n) * tr * ENCODEC_FRAME_RATE - 1e-6).astype(np.int64)


def check_bandwidth(bandwidth: float) -> float:
    """``bandwidth`` (kbps) as a float, or ValueError listing the ones EnCodec 24 kHz supports."""
    if float(bandwidth) not in CODEBOOKS_PER_BANDWIDTH:
        allowed = ", ".join(str(b) for b in CODEBOOKS_PER_BANDWIDTH)
        raise ValueError(f"stimulus.audio.bandwidth: {bandwidth} kbps is not supported; choose one of {allowed}")
    return float(bandwidth)


# ---------------------------------------------------------------------------------------------
# Reading the movie's audio


def load_audio(movie: Path, sample_rate: int = ENCODEC_SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of ``movie`` as float32 mono samples (n_samples,) at ``sample_rate``.

    One sequential decode; ``av.AudioResampler`` (libswresample) resamples and downmixes with its
    default matrix for the input layout (stereo becomes (L + R) / sqrt(2), constant power). Sample 0
    is the movie's time 0 (the container's start), even if the audio stream starts later. Raises
    InputError when there is no audio stream, the file is corrupt, or the stream decodes to much
    less than its header promises (a truncated file).
    """
    movie = Path(movie)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    pieces: list[np.ndarray] = []
    start_s = None  # time of the first decoded sample on the container's timeline
    with open_media(movie) as container:
        if not container.streams.audio:
            raise InputError(movie, "has no audio stream")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if start_s is None and frame.time is not None:
                    start_s = frame.time - (container.start_time or 0) / 1_000_000
                pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
        except av.error.FFmpegError as err:
            raise InputError(movie, f"audio stream cannot be decoded ({err})") from None
        header_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    audio = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if audio.size == 0:
        raise InputError(movie, "audio stream holds no decodable samples")
    decoded_s = audio.size / sample_rate
    if header_s is not None and decoded_s < 0.99 * header_s - 1.0:
        raise InputError(movie, f"audio stream is truncated: decoded {decoded_s:.2f} s of {header_s:.2f} s")
    return _align_to_movie_start(audio, start_s or 0.0, sample_rate, movie)


def _align_to_movie_start(audio: np.ndarray, start_s: float, sample_rate: int, movie: Path) -> np.ndarray:
    """Put sample 0 at the movie's time 0: an audio stream that starts late gets leading silence
    (one that starts early loses its head), so audio and video share one clock (TR i = [i*tr, (i+1)*tr))."""
    offset = int(round(start_s * sample_rate))
    if offset:
        log.info("%s: the audio stream starts at %+.3f s; aligning it to the movie's start", movie, start_s)
    if offset > 0:
        return np.concatenate([np.zeros(offset, np.float32), audio])
    return audio[-offset:] if offset < 0 else audio


# ---------------------------------------------------------------------------------------------
# The model


def load_encodec(weights: str, bandwidth: float, device: str = "cpu", seed: int = 0,
                 seeding_audio: np.ndarray | None = None,
                 weights_sha256: str | None = None) -> tuple[EncodecModel, str]:
    """EnCodec 24 kHz in eval mode with its target bandwidth set, and a weights id for the sidecar.

    ``weights`` is ``"pretrained"`` (torch hub cache, else a download), a path to a state dict
    (checked against ``weights_sha256`` when given), or ``"demo-random"``: DEMO ONLY, a network
    with random weights from ``seed`` whose codebooks are seeded from ``seeding_audio`` (float32
    mono 24 kHz); its codes are deterministic and varied but carry no acoustic meaning.
    """
    bandwidth = check_bandwidth(bandwidth)
    model = bare_model(seed)  # built (and demo-seeded) on the CPU, so the weights never depend on the device
    if weights == "demo-random":
        if seeding_audio is None:
            raise ValueError("weights 'demo-random' needs seeding_audio to seed the codebooks from")
        log.warning("EnCodec weights 'demo-random': random network, codebooks seeded from the audio "
                    "(seed %d); DEMO ONLY, the codes mean nothing acoustically", seed)
        seed_codebooks(model, seeding_audio, seed)
        weights_id = f"demo-random seed={seed} audio={audio_fingerprint(seeding_audio)}"
    elif weights == "pretrained":
        weights_id = load_pretrained(model)
    else:
        digest = load_state_dict_file(model, weights, expected_sha256=weights_sha256)
        weights_id = f"{Path(weights).name} sha256={digest}"
    model.set_target_bandwidth(bandwidth)
    log.info("EnCodec %s at %s kbps (%d codebooks) on %s", weights_id, bandwidth,
             CODEBOOKS_PER_BANDWIDTH[bandwidth], device)
    return model.eval().to(device), weights_id


def n_codebooks(model) -> int:
    """Number of residual codebooks the model uses at its target bandwidth."""
    return model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, model.bandwidth)


def quantize(model, latent: torch.Tensor) -> torch.Tensor:
    """Residual-VQ codes (n_q, n_frames) int64 of encoder latents (128, n_frames).

    The same residual nearest-codeword search as ``model.quantizer.encode``, with the distances in
    float64 (see ``nearest_codeword``), so codes do not hinge on float32 rounding.
    """
    residual = latent.T.double()  # (n_frames, 128); the 24 kHz model has no codebook projection
    codes = []
    for layer in model.quantizer.vq.layers[: n_codebooks(model)]:
        codebook = layer._codebook.embed.double()
        index = nearest_codeword(residual, codebook)
        residual = residual - codebook[index]
        codes.append(index)
    return torch.stack(codes)


def _chunk_spans(n_frames: int, chunk: int, context: int):
    """(keep_start, keep_stop, in_start, in_stop) frame spans: keep [keep_start, keep_stop) of
    the chunk computed on [in_start, in_stop), which adds ``context`` frames on each side."""
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        yield start, stop, max(0, start - context), min(n_frames, stop + context)


def encode(model, audio: np.ndarray, chunk_s: float, device: str, progress: bool = True) -> np.ndarray:
    """EnCodec codes (n_q, n_frames) int16 of float32 mono 24 kHz ``audio``; n_frames = ceil(n / 320).

    Chunks of ``chunk_s`` seconds (rounded to whole frames) are encoded with CONTEXT_S seconds of
    audio on each side, which is encoded and discarded, so memory stays bounded for long movies.
    Chunk starts lie on the 320-sample hop grid, so frames line up exactly with a one-shot encode.
    The context absorbs the encoder's start-up transient (its conv padding and LSTM state), leaving
    float-rounding differences (~1e-7 relative) in the latents, so a code can differ from a one-shot
    encode only at a near-tie between two codewords: measured 99.9-100 % identical codes.
    """
    n_frames = -(-len(audio) // HOP)
    audio = np.pad(np.asarray(audio, dtype=np.float32), (0, n_frames * HOP - len(audio)))
    chunk = max(1, round(chunk_s * ENCODEC_FRAME_RATE))
    context = round(CONTEXT_S * ENCODEC_FRAME_RATE)
    codes = np.empty((n_codebooks(model), n_frames), dtype=np.int16)
    spans = list(_chunk_spans(n_frames, chunk, context))
    with torch.inference_mode():
        for start, stop, lo, hi in progress_bar(spans, "EnCodec encode", "chunk", enabled=progress):
            x = torch.from_numpy(audio[lo * HOP: hi * HOP]).to(device).view(1, 1, -1)
            latent = model.encoder(x)[0]  # (128, hi - lo)
            codes[:, start:stop] = quantize(model, latent[:, start - lo: stop - lo]).cpu().numpy()
    return codes


def codes_per_tr(codes: np.ndarray, tr: float, n_trs: int) -> np.ndarray:
    """Lay codes (n_q, n_frames) out per TR: (n_trs, n_q, frames_per_tr(tr)) int16.

    TR i takes the frames_per_tr frames from the first frame starting at or after i * tr, i.e.
    the frames lying entirely inside [i * tr, (i + 1) * tr). The remaining fraction of a frame
    per TR is dropped (for tr = 1.5 s: one frame every two TRs); nothing is time-warped.
    """
    f = frames_per_tr(tr)
    first = tr_first_frames(tr, n_trs)
    if n_trs and first[-1] + f > codes.shape[1]:
        raise ValueError(f"{codes.shape[1]} code frames are too few for {n_trs} TRs of {tr} s")
    index = first[:, None] + np.arange(f)[None, :]  # (T, F) frame indices
    return np.ascontiguousarray(codes[:, index].transpose(1, 0, 2)).astype(np.int16, copy=False)


def decode(model, codes_tr: np.ndarray, device: str) -> np.ndarray:
    """Waveform (T * F * 320,) float32 mono at 24 kHz from per-TR codes (T, n_q, F).

    The TRs are concatenated in time (dropped frames are not re-inserted) and decoded in
    DECODE_CHUNK_S chunks with CONTEXT_S seconds of codes on each side, like ``encode``.
    """
    n_t, n_q, f = codes_tr.shape
    flat = torch.from_numpy(codes_tr.transpose(1, 0, 2).reshape(n_q, n_t * f).astype(np.int64))  # (n_q, T*F)
    chunk, context = round(DECODE_CHUNK_S * ENCODEC_FRAME_RATE), round(CONTEXT_S * ENCODEC_FRAME_RATE)
    out = np.empty(n_t * f * HOP, dtype=np.float32)
    with torch.inference_mode():
        for start, stop, lo, hi in _chunk_spans(n_t * f, chunk, context):
            latent = model.quantizer.decode(flat[:, None, lo:hi].to(device))  # (1, 128, hi - lo)
            wav = model.decoder(latent)[0, 0]  # ((hi - lo) * 320,)
            out[start * HOP: stop * HOP] = wav[(start - lo) * HOP: (stop - lo) * HOP].cpu().numpy()
    return out


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples (clipped to [-1, 1]) as a 16-bit PCM wav file."""
    pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


# ---------------------------------------------------------------------------------------------
# The stage and its inverse


def _encodec_record(weights: str, weights_id: str, bandwidth: float, seed: int) -> dict:
    return {"name": MODEL_NAME, "weights": weights, "weights_id": weights_id, "seed": seed,
            "bandwidth": bandwidth, "n_q": CODEBOOKS_PER_BANDWIDTH[bandwidth], "codebook_size": CODEBOOK_SIZE,
            "frame_rate": ENCODEC_FRAME_RATE, "sample_rate": ENCODEC_SAMPLE_RATE}


def encode_audio(movie: Path, out_npy: Path, tr: float, params: dict, progress: bool = True) -> Path:
    """The ``encode_audio`` stage: ``movie`` -> ``out_npy`` int16 (T, n_q, frames_per_tr) + JSON sidecar.

    ``params`` is the config section ``stimulus.audio``. T = floor(audio duration / tr). Both files
    are written atomically: on any error the output directory is left as it was.
    """
    movie, out_npy = Path(movie), Path(out_npy)
    bandwidth = check_bandwidth(params["bandwidth"])
    info = probe_movie(movie)
    if not info.has_audio:
        raise InputError(movie, "has no audio stream; set stimulus.audio.enabled: false for a silent movie")
    device = resolve_device(params.get("device", "auto"), "stimulus.audio.device")
    seed = int(params.get("seed", 0))

    audio = load_audio(movie)
    duration = len(audio) / ENCODEC_SAMPLE_RATE
    n_t = n_trs(duration, tr)
    if n_t == 0:
        raise InputError(movie, f"audio lasts {duration:.2f} s, less than one TR of {tr} s")
    log.info("%s: %.1f s of audio at %d Hz -> %d TRs of %s s", movie, duration, ENCODEC_SAMPLE_RATE, n_t, tr)
    model, weights_id = load_encodec(params["weights"], bandwidth, device, seed, seeding_audio=audio,
                                     weights_sha256=params.get("weights_sha256"))

    # Encode only what the TRs use, zero-padded so the last TR has all its frames (the encoder is
    # causal, so audio after the last TR would not change these codes anyway).
    f = frames_per_tr(tr)
    n_samples = int(tr_first_frames(tr, n_t)[-1] + f) * HOP
    audio = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))
    codes = codes_per_tr(encode(model, audio, params.get("chunk_s", 60), device, progress), tr, n_t)

    with atomic_output_dir(out_npy.parent) as tmp:
        np.save(tmp / out_npy.name, codes)
        write_sidecar(tmp / out_npy.name, codes, parameters=dict(params), sources={"movie": movie},
                      models={"encodec": _encodec_record(params["weights"], weights_id, bandwidth, seed)},
                      extra={"n_trs": n_t, "duration_s": duration, "frames_per_tr": f, "tr": tr,
                             "device": device},
                      packages=("torch", "encodec", "av"))
    log.info("wrote %s: %s int16 codes (%d distinct)", out_npy, codes.shape, len(np.unique(codes)))
    return out_npy


def encodec_from_sidecar(codes_npy: Path, device: str):
    """Rebuild the EnCodec model that made ``codes_npy`` from its sidecar -> (model, weights id).

    For ``demo-random`` the codebooks are re-seeded from the source movie, which must still have the
    SHA-256 recorded at encoding time. Raises InputError naming the file on any mismatch.
    """
    codes_npy = Path(codes_npy)
    sidecar = read_sidecar(codes_npy)
    record, params = sidecar["models"]["encodec"], sidecar.get("parameters", {})
    for key in ("weights", "bandwidth", "seed", "weights_id"):
        if key not in record:
            raise InputError(codes_npy.with_suffix(".json"), f"sidecar lacks models.encodec.{key}")
    seeding_audio = None
    if record["weights"] == "demo-random":
        movie = Path(sidecar["sources"]["movie"]["path"])
        if not movie.is_file() or sha256_file(movie) != sidecar["sources"]["movie"]["sha256"]:
            raise InputError(movie, f"the demo-random codebooks of {codes_npy} are seeded from this movie, "
                                    "which is missing or changed since encoding; rerun encode_audio")
        seeding_audio = load_audio(movie)
    model, weights_id = load_encodec(record["weights"], record["bandwidth"], device, record["seed"],
                                     seeding_audio, weights_sha256=params.get("weights_sha256"))
    if weights_id != record["weights_id"]:
        raise InputError(codes_npy, f"was encoded with EnCodec weights {record['weights_id']!r} "
                                    f"but the weights now load as {weights_id!r}")
    return model, weights_id


def decode_audio(codes_npy: Path, out_wav: Path, device: str = "auto") -> Path:
    """Decode a codes file from ``encode_audio`` to a 24 kHz 16-bit wav, with the same model.

    The model is rebuilt from the sidecar; for ``demo-random`` the codebooks are re-seeded from the
    source movie, which must still have the SHA-256 recorded at encoding time.
    """
    codes_npy, out_wav = Path(codes_npy), Path(out_wav)
    if not codes_npy.is_file():
        raise InputError(codes_npy, "codes file not found")
    device = resolve_device(device)
    model, _ = encodec_from_sidecar(codes_npy, device)
    codes = np.load(codes_npy)
    wav = decode(model, codes, device)
    with atomic_output_dir(out_wav.parent) as tmp:
        write_wav(tmp / out_wav.name, wav, ENCODEC_SAMPLE_RATE)
    log.info("wrote %s: %.1f s of decoded audio", out_wav, len(wav) / ENCODEC_SAMPLE_RATE)
    return out_wav
