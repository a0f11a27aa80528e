"""Frame extraction speed against a raw decode of the same file at the same output size."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from giblet.config import load_config

# By --quick: the 30 s clip's runs take a tenth of a second, and the reference's time is bimodal
# (125 or 165-175 ms on 2 cores): 15 interleaved runs give both sides their fast mode.
REPEATS = {True: 15, False: 5}


def _movie(path: Path, seconds: float, width: int, height: int) -> Path:
    """A demo-style movie (Sherlock's 640x360 at 25 fps by default) rendered from seeded latents."""
    from giblet.demo.latents import make_latents
    from giblet.demo.movie import write_movie

    config = load_config(None)
    latents = make_latents(np.random.default_rng(0), seconds, 0.1, config["demo"]["scenes"])
    write_movie(path, latents, seconds, config["tr"], {"width": width, "height": height, "fps": 25},
                44100, np.random.default_rng(1), progress=False)
    return path


def _pyav_decode_and_scale(movie: Path, width: int, height: int) -> int:
    """Reference 1: decode every frame with PyAV (same threading) and scale it to the output size."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    n = 0
    with av.open(str(movie)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                 interpolation="AREA").to_ndarray()
            n += 1
    return n


def _ffmpeg_to_null(movie: Path, width: int, height: int) -> None:
    """Reference 2: the bundled ffmpeg binary decoding and scaling to a null sink."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(movie), "-an", "-vf",
                    f"scale={width}:{height}:flags=area", "-pix_fmt", "rgb24", "-f", "null", "-"], check=True)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def frame_extraction(quick: bool) -> dict:
    from giblet.stimulus.frames import extract_frames

    seconds = 30.0 if quick else 180.0
    config = load_config(None)
    params = config["stimulus"]["frames"]
    width, height = params["width"], params["height"]
    with tempfile.TemporaryDirectory() as tmp:
        movie = _movie(Path(tmp) / "movie.mp4", seconds, 640, 360)
        n_frames = _pyav_decode_and_scale(movie, width, height)  # warm the page cache
        repeats = REPEATS[quick]
        results = {"movie": "640x360 H.264, 25 fps", "movie_seconds": seconds, "frames": n_frames,
                   "repeats": repeats}
        # Interleaved; ratios of the best runs and of the medians: the machine is noisy, and the
        # reference's own run time is bimodal on 2 cores (its decoding and scaling share them).
        pyav, ffmpeg, extract = [], [], {1: [], params["frame_skip"]: []}
        for repeat in range(repeats):
            pyav.append(_timed(_pyav_decode_and_scale, movie, width, height))
            ffmpeg.append(_timed(_ffmpeg_to_null, movie, width, height))
            for skip, times in extract.items():
                # A new folder each time, deleted after (untimed), as Snakemake deletes a rule's old
                # outputs before it runs the rule again.
                out = Path(tmp) / f"skip{skip}-{repeat}"
                times.append(_timed(extract_frames, movie, out / "frames.npy", config["tr"],
                                    {**params, "frame_skip": skip}, False))
                shutil.rmtree(out)
        reference_pyav, reference_ffmpeg = min(pyav), min(ffmpeg)
        for skip, times in extract.items():
            elapsed = min(times)
            results[f"extract_fps_skip{skip}"] = round(n_frames / elapsed, 1)
            results[f"ratio_skip{skip}_vs_pyav_decode_scale"] = round(reference_pyav / elapsed, 3)
            results[f"ratio_skip{skip}_vs_ffmpeg_to_null"] = round(reference_ffmpeg / elapsed, 3)
            results[f"median_ratio_skip{skip}_vs_pyav_decode_scale"] = round(
                float(np.median(pyav)) / float(np.median(times)), 3)
        results["reference_pyav_decode_scale_fps"] = round(n_frames / reference_pyav, 1)
        results["reference_ffmpeg_to_null_fps"] = round(n_frames / reference_ffmpeg, 1)
    return results
