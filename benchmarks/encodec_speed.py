"""EnCodec speed on the CPU at 3 kbps: seconds of audio encoded per second of compute.

The encode is timed as the stage runs it (chunk_s = 60). References timed in the same run, because
machines here are noisy: decoding the same audio from an AAC file with PyAV (``load_audio``:
decode + resample), and a one-shot encode, against which an encode in 4 chunks (each with 2 s of
context on both sides) is compared for speed and for identical codes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from giblet.stimulus import audio as A

RATE = A.ENCODEC_SAMPLE_RATE


def _signal(duration_s: float) -> np.ndarray:
    """Mono float32 at 24 kHz: a slow chirp, amplitude-modulated noise, a silent gap every 5 s."""
    t = np.arange(int(duration_s * RATE)) / RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 50 * t**2 / max(duration_s, 1.0)))
    hiss = np.random.default_rng(0).standard_normal(t.size) * 0.1 * (1 + np.sin(2 * np.pi * 0.7 * t))
    return np.where((t % 5) < 4.5, chirp + hiss, 0.0).astype(np.float32)


def _write_aac(path: Path, signal: np.ndarray) -> None:
    """The signal as a mono AAC .m4a at 24 kHz, for the decode reference."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono")
        for start in range(0, signal.size, 1024):
            frame = av.AudioFrame.from_ndarray(signal[None, start: start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _timed(fn, *args, repeat: int = 1):
    """fn's result and its best wall time over ``repeat`` runs (the first run of a new input shape
    also pays for building the CPU kernels, which a stage pays once per movie)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def encodec_realtime(quick: bool) -> dict:
    """Real-time factors of EnCodec encode/decode on the CPU at 3 kbps (quick: 10 s of audio, else 60 s)."""
    duration = 10.0 if quick else 60.0
    signal = _signal(duration)
    model, seeding_s = _timed(lambda: A.load_encodec("demo-random", 3.0, "cpu", seeding_audio=signal)[0])
    staged, stage_s = _timed(A.encode, model, signal, 60, "cpu", False, repeat=2)  # the stage's chunk_s
    one_shot, one_shot_s = _timed(A.encode, model, signal, 1e9, "cpu", False, repeat=2)
    chunked, chunked_s = _timed(A.encode, model, signal, duration / 4, "cpu", False, repeat=2)  # + context
    per_tr = A.codes_per_tr(staged, 1.5, int(duration // 1.5))
    wav, decode_s = _timed(A.decode, model, per_tr, "cpu", repeat=2)
    with tempfile.TemporaryDirectory() as tmp:
        _write_aac(Path(tmp) / "audio.m4a", signal)
        _, load_s = _timed(A.load_audio, Path(tmp) / "audio.m4a", repeat=2)
    return {
        "audio_seconds": duration, "torch_threads": torch.get_num_threads(),
        "encode_realtime_factor": round(duration / stage_s, 2),
        "encode_one_shot_realtime_factor": round(duration / one_shot_s, 2),
        "encode_4_chunks_realtime_factor": round(duration / chunked_s, 2),
        "decode_realtime_factor": round(wav.size / RATE / decode_s, 2),
        "demo_seeding_seconds": round(seeding_s, 2),
        "reference_pyav_load_realtime_factor": round(duration / load_s, 1),
        "ratio_encode_vs_pyav_load": round(stage_s / load_s, 1),
        "ratio_4_chunks_vs_one_shot": round(chunked_s / one_shot_s, 2),
        "chunked_identical_codes_fraction": round(float(np.mean(chunked == one_shot)), 5),
    }


if __name__ == "__main__":
    print(encodec_realtime(quick=True))
