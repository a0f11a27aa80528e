"""How fast the embed_frames stage embeds a movie's frames with CLIP on the CPU (ViT-B-32, random init).

    python -m benchmarks.clip_frames_speed [--quick]

The stage (``giblet.stimulus.frame_features.embed_frames``) decodes the movie, samples the frames of
each TR as ``extract_frames`` does (``frame_skip`` 12: 4 per 1.5 s TR at 25 fps), applies open_clip's
transform and embeds them, decoding the next batch on a second thread. Timed in the same run on the
same frames:

- the bare model, ``model.encode_image`` on batches already decoded and preprocessed (the stage can at
  best match it: the ratio shows what decoding still costs beside the model);
- decoding and preprocessing alone, without the model;
- real time: the movie seconds embedded per second of wall time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL, BATCH_SIZE = "ViT-B-32", 64  # the config defaults (stimulus.frames.clip)


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def clip_frames_throughput(quick: bool) -> dict:
    """Frames per second on the CPU: embed_frames vs the bare encode_image and vs decoding alone."""
    from benchmarks.frames_speed import _movie
    from giblet.config import load_config
    from giblet.stimulus.frame_features import embed_frames, encode_images, frame_batches, load_image_model
    from giblet.stimulus.frames import FrameCounts, movie_grid

    config = load_config(None)
    tr, skip = config["tr"], config["stimulus"]["frames"]["frame_skip"]
    seconds = 30.0 if quick else 120.0
    params = {"frame_skip": skip, "clip": {"model": MODEL, "pretrained": "none", "batch_size": BATCH_SIZE,
                                           "device": "cpu", "seed": 0}}
    with tempfile.TemporaryDirectory() as tmp:
        movie = _movie(Path(tmp) / "movie.mp4", seconds, 640, 360)
        _, n_trs, slots = movie_grid(movie, tr, skip)
        model, preprocess, _ = load_image_model(MODEL, "none", "cpu", 0)
        encode_images(model, np.zeros((2, 3, 224, 224), np.float32))  # warm-up

        stage_s, out = _timed(lambda: embed_frames(movie, Path(tmp) / "ff" / "frame_features.npy", tr, params,
                                                   progress=False))
        sidecar = json.loads(out.with_suffix(".json").read_text())
        n = sidecar["frames_embedded"]

        counts = FrameCounts.zeros(n_trs)
        decode_s, batches = _timed(lambda: list(frame_batches(movie, tr, slots, skip, counts, preprocess, BATCH_SIZE,
                                                              progress=False)))
        model_s, _ = _timed(lambda: [encode_images(model, images) for _, images in batches])

    # The stage's own clock (its sidecar) runs from the first decoded frame to the last embedding; the call
    # also loads the model.
    stage_rate, model_rate, decode_rate = n / sidecar["seconds"], n / model_s, n / decode_s
    movie_seconds_per_second = seconds / sidecar["seconds"]
    return {
        "movie": "640x360 H.264, 25 fps", "movie_seconds": seconds, "model": MODEL, "batch_size": BATCH_SIZE,
        "frame_skip": skip, "frames_per_tr": slots, "frames_embedded": n, "torch_threads": torch.get_num_threads(),
        "embed_frames_fps": round(stage_rate, 2),
        "embed_frames_fps_with_model_loading": round(n / stage_s, 2),
        "reference_encode_image_fps": round(model_rate, 2),
        "reference_decode_preprocess_fps": round(decode_rate, 1),
        "ratio_vs_encode_image": round(stage_rate / model_rate, 3),
        "decode_share_of_sequential_time": round((1 / decode_rate) / (1 / decode_rate + 1 / model_rate), 3),
        "ratio_vs_real_time": round(movie_seconds_per_second, 2),
        "minutes_for_sherlock_at_skip_4": round(1976 * 12 / stage_rate / 60, 1),  # 1,976 TRs x 12 frames
    }


if __name__ == "__main__":
    print(json.dumps({"benchmark": "clip_frames_throughput", **clip_frames_throughput("--quick" in sys.argv)},
                     indent=2))
