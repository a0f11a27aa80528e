"""giblet benchmarks: one command, ratios against references measured in the same run.

    python -m benchmarks.run                 # every benchmark
    python -m benchmarks.run demo_generation --quick
    python -m benchmarks.run quality --seeds 0 1 2   # model quality (benchmarks/quality.py)

Machines here are noisy, so each benchmark times a reference in the same process and reports the
ratio; absolute seconds are printed for context only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from giblet.config import load_config


def _encode_blank_movie(path: Path, n_frames: int, fps: float, width: int, height: int,
                        sample_rate: int, n_samples: int) -> None:
    """Reference: the same container, codecs and settings, with constant frames and silence."""
    from giblet.demo.movie import AUDIO_BIT_RATE, VIDEO_CODEC_OPTIONS, stream_rate

    blank = np.zeros((height, width, 3), dtype=np.uint8)
    silence = np.zeros((2, sample_rate), dtype=np.float32)
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("libx264", rate=stream_rate(fps), options=VIDEO_CODEC_OPTIONS)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate, layout="stereo")
        astream.bit_rate = AUDIO_BIT_RATE
        for j in range(n_frames):
            frame = av.VideoFrame.from_ndarray(blank, format="rgb24")
            frame.pts = j
            container.mux(vstream.encode(frame))
        for start in range(0, n_samples, sample_rate):
            chunk = silence[:, : min(sample_rate, n_samples - start)]
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            aframe.sample_rate, aframe.pts = sample_rate, start
            container.mux(astream.encode(aframe))
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))


def demo_generation(quick: bool) -> dict:
    """Seconds of generator time per minute of demo movie, and the ratio to a bare encode."""
    from giblet.demo.generate import make_demo

    config = load_config(None, ["demo.n_trs=120"] if quick else [])
    demo, tr = config["demo"], config["tr"]
    duration = demo["n_trs"] * tr
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_demo(demo, tr, Path(tmp) / "demo", progress=False)
        generate_s = time.perf_counter() - t0
        timings = json.loads((Path(tmp) / "demo" / "demo.json").read_text())["timings"]
        t0 = time.perf_counter()
        _encode_blank_movie(Path(tmp) / "blank.mp4", int(round(duration * demo["video"]["fps"])),
                            demo["video"]["fps"], demo["video"]["width"], demo["video"]["height"],
                            demo["audio"]["sample_rate"], int(round(duration * demo["audio"]["sample_rate"])))
        reference_s = time.perf_counter() - t0
    minutes = duration / 60
    return {
        "movie_minutes": round(minutes, 2), "n_subjects": demo["n_subjects"],
        "resolution_mm": demo["resolution_mm"],
        "seconds_total": round(generate_s, 2),
        "seconds_per_movie_minute": round(generate_s / minutes, 2),
        "movie_seconds_per_movie_minute": round(timings["movie_s"] / minutes, 2),
        "fmri_seconds_per_subject_minute": round(timings["fmri_s"] / demo["n_subjects"] / minutes, 3),
        "reference_blank_encode_seconds_per_minute": round(reference_s / minutes, 2),
        "ratio_movie_vs_blank_encode": round(timings["movie_s"] / reference_s, 2),
        "ratio_total_vs_blank_encode": round(generate_s / reference_s, 2),
    }


def _lazy(module: str, name: str):
    """Import a benchmark only when it runs (the torch-based ones take seconds to import)."""

    def run(quick: bool, **options) -> dict:
        import importlib

        return getattr(importlib.import_module(f"benchmarks.{module}"), name)(quick, **options)

    return run


BENCHMARKS = {
    "demo_generation": demo_generation,
    "frame_extraction": _lazy("frames_speed", "frame_extraction"),
    "encodec_realtime": _lazy("encodec_speed", "encodec_realtime"),
    "clip_throughput": _lazy("clip_speed", "clip_throughput"),
    "clip_frames_throughput": _lazy("clip_frames_speed", "clip_frames_throughput"),
    "normalize_memory": _lazy("fmri_memory", "normalize_memory"),
    "fmri_cleaning": _lazy("fmri_cleaning", "fmri_cleaning"),
    "trainer_overhead": _lazy("training_speed", "trainer_overhead"),
    "checkpoint_overhead": _lazy("training_speed", "checkpoint_overhead"),
    "optimizer_memory": _lazy("training_speed", "optimizer_memory"),
    "gpu_training": _lazy("training_speed", "gpu_training"),
    "snakemake_noop": _lazy("snakemake_noop", "snakemake_noop"),
    "input_check": _lazy("check_speed", "input_check"),
    "slurm_roundtrip": _lazy("slurm_roundtrip", "slurm_roundtrip"),
    "quality": _lazy("quality", "quality"),
}
# Benchmarks that take --seeds (the others ignore it).
SEEDED = {"quality"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], default=[],
                        help="benchmarks to run (default: all but quality, which takes an hour per seed)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="generator seeds (quality only; default 0 1 2)")
    args = parser.parse_args()
    for name in args.names or [n for n in BENCHMARKS if n not in SEEDED]:
        options = {"seeds": args.seeds} if name in SEEDED else {}
        result = BENCHMARKS[name](args.quick, **options)
        print(json.dumps({"benchmark": name, **result}, indent=2))


if __name__ == "__main__":
    main()
