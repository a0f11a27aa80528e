"""Frozen CLIP image embeddings of the frames of each TR (the ``embed_frames`` stage).

Output: float16 ``(T, F, d)`` in ``frame_features.npy``, F = ``frames_per_tr``: exactly the frames
``extract_frames`` keeps (both sample through :func:`giblet.stimulus.frames.sample_frames`: the TR a
frame belongs to comes from its timestamp, every ``frame_skip``-th frame is kept, and spare or empty
slots repeat a frame by :func:`giblet.stimulus.frames.slot_sources`), each embedded by open_clip's
image tower: ``model.encode_image(preprocess(image), normalize=True)``, so every row has unit length
(d = 512 for ViT-B-32). A repeated slot repeats its frame's embedding.

Frames are decoded from the movie at its own resolution and go through open_clip's own evaluation
transform for the model (resize of the shortest side, centre crop, normalisation: 224 x 224 for
ViT-B-32), never through the small ``frames.npy``, whose 128 x 72 pixels would have to be upscaled.
The sidecar ``frame_features.json`` records the weights id, the transform, how many frames were
embedded and how fast (frames/s, decoding included).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from giblet.devices import resolve_device
from giblet.files import atomic_output_dir, write_sidecar
from giblet.stimulus.clip_weights import load_clip
from giblet.stimulus.frames import FrameCounts, check_complete, movie_grid, sample_frames, sampling_summary, slot_sources

log = logging.getLogger(__name__)

CONFIG_KEY = "stimulus.frames.clip"


def image_preprocess(model) -> Callable:
    """open_clip's evaluation transform for ``model``: a PIL RGB image -> float32 ``(3, S, S)`` array.

    The sizes, interpolation, resize mode and normalisation are the model's own
    (``open_clip.get_model_preprocess_cfg``), so pretrained weights see what they were trained on. The
    transform's image steps (resize, crop) run as they are; its last two (to a tensor in [0, 1],
    normalise) are done in numpy, the same float32 arithmetic without torch's thread pool: on a busy
    CPU, torch's pool made those small per-frame ops ~50x slower beside the model.
    """
    import open_clip
    from torchvision import transforms as T

    cfg = open_clip.get_model_preprocess_cfg(model)
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                          resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"],
                                          fill_color=cfg["fill_color"])
    *image_steps, to_tensor, normalize = transform.transforms
    if not (isinstance(normalize, T.Normalize) and type(to_tensor).__name__ in ("MaybeToTensor", "ToTensor")):
        return lambda image: transform(image).numpy()  # a layout we do not know: open_clip's as it is
    mean = np.asarray(normalize.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(normalize.std, np.float32).reshape(3, 1, 1)

    def preprocess(image) -> np.ndarray:
        for step in image_steps:
            image = step(image)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        return (pixels - mean) / std

    return preprocess


def load_image_model(model_name: str, pretrained: str, device: str, seed: int):
    """An open_clip model (image tower only, eval mode) on ``device``, its transform and a weights id.

    ``pretrained`` is ``"none"`` (DEMO ONLY: seeded random init), a local weights file or an open_clip
    tag (:func:`giblet.stimulus.clip_weights.load_clip`, shared with ``embed_text``); errors name
    ``stimulus.frames.clip`` or the weights file. Returns ``(model, preprocess, weights_id)``.
    """
    model, weights_id = load_clip(model_name, pretrained, seed, CONFIG_KEY)
    preprocess = image_preprocess(model)
    for tower in ("transformer", "token_embedding", "text"):  # only encode_image is used
        if isinstance(getattr(model, tower, None), torch.nn.Module):
            setattr(model, tower, None)
    return model.to(resolve_device(device)).eval(), preprocess, weights_id


@torch.inference_mode()
def encode_images(model, images: np.ndarray) -> np.ndarray:
    """Unit-length CLIP image embeddings, float32 ``(B, d)``, of preprocessed images ``(B, 3, S, S)``."""
    device = next(model.parameters()).device
    return model.encode_image(torch.from_numpy(images).to(device), normalize=True).float().cpu().numpy()


def frame_batches(movie: Path, tr: float, slots: int, frame_skip: int, counts: FrameCounts, preprocess: Callable,
                  batch_size: int, progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sampled frames of ``movie``, preprocessed, ``batch_size`` at a time.

    Yields ``(positions, images)``: int64 ``(B,)`` flat slot indices ``tr * slots + slot`` and float32
    ``(B, 3, S, S)``. ``counts`` is filled in as :func:`giblet.stimulus.frames.sample_frames` goes.
    """
    from av.video.reformatter import VideoReformatter
    from PIL import Image

    # One reformatter for the whole movie (it keeps its scaler context; frame.to_image() builds one per
    # frame). No size is given: the frame keeps its own resolution, the transform resizes it.
    reformatter = VideoReformatter()
    positions, images = [], []
    for i, slot, frame in sample_frames(movie, tr, slots, frame_skip, counts, progress, desc="CLIP frames"):
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
        images.append(preprocess(Image.fromarray(rgb)))
        positions.append(i * slots + slot)
        if len(images) == batch_size:
            yield np.asarray(positions, dtype=np.int64), np.stack(images)
            positions, images = [], []
    if images:
        yield np.asarray(positions, dtype=np.int64), np.stack(images)


def embed_batches(batches: Iterator[tuple[np.ndarray, np.ndarray]], model, n_slots: int) -> np.ndarray:
    """Embed every batch into a float32 ``(n_slots, d)`` table (rows no batch fills stay 0).

    The next batch is decoded on a second thread while the model embeds the current one: decoding and
    the transform (PyAV, PIL, numpy) and the model (torch) release the GIL, so the decode does not wait
    for the model and vice versa (on a GPU, where the model is fast, the decode is what is left).
    """
    table = None
    with ThreadPoolExecutor(max_workers=1) as decoder:
        pending = decoder.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = decoder.submit(next, batches, None)
            positions, images = batch
            embeddings = encode_images(model, images)
            if table is None:
                table = np.zeros((n_slots, embeddings.shape[1]), dtype=np.float32)
            table[positions] = embeddings
    return table


def embed_frames(movie: str | Path, out_npy: str | Path, tr: float, params: dict, progress: bool = True) -> Path:
    """The ``embed_frames`` stage: write ``out_npy`` (float16, T x F x d) and its sidecar (module doc).

    ``params``: ``frame_skip`` (as ``stimulus.frames.frame_skip``) and ``clip``, the
    ``stimulus.frames.clip`` section (model, pretrained, batch_size, device, seed). T = floor(video
    duration / tr). Raises InputError naming the movie (no video stream, corrupt, truncated) or the
    weights file (missing, not weights of the model), ConfigError for a bad model or tag; then nothing
    is written.
    """
    movie, out_npy = Path(movie), Path(out_npy)
    clip, skip = params["clip"], params["frame_skip"]
    info, n_trs, slots = movie_grid(movie, tr, skip)
    device = resolve_device(clip["device"], f"{CONFIG_KEY}.device")
    model, preprocess, weights_id = load_image_model(clip["model"], clip["pretrained"], device, clip["seed"])
    log.info("%s: %.2f s at %.3f fps -> %d TRs x %d frames, embedded by %s (%s) on %s", movie, info.duration_s,
             info.fps, n_trs, slots, clip["model"], weights_id, device)

    counts = FrameCounts.zeros(n_trs)
    start = time.perf_counter()
    batches = frame_batches(movie, tr, slots, skip, counts, preprocess, clip["batch_size"], progress)
    table = embed_batches(batches, model, n_trs * slots)
    seconds = time.perf_counter() - start
    check_complete(movie, counts, info.duration_s)
    n_embedded = int(counts.kept.sum())

    sources = slot_sources(counts.kept, slots)
    if (sources < 0).any():  # an empty first TR shows a black frame (as in frames.npy): embed one
        from PIL import Image

        black = preprocess(Image.new("RGB", (info.width or 1, info.height or 1)))
        table = np.concatenate([table, encode_images(model, black[None])])  # row -1 of the table
    features = table[sources].astype(np.float16)                              # (T, F, d)

    cfg = {key: value for key, value in _preprocess_cfg(model).items() if key != "mode"}
    with atomic_output_dir(out_npy.parent) as tmp:
        np.save(tmp / out_npy.name, features)
        write_sidecar(tmp / out_npy.name, features, parameters={**params, "tr": tr}, sources={"movie": movie},
                      models={"clip": {"model": clip["model"], "pretrained": weights_id,
                                       "dim": int(features.shape[2]), "preprocess": cfg}},
                      packages=("av", "torch", "torchvision", "open_clip_torch", "pillow"), extra={
                          "n_trs": n_trs, "duration_s": info.duration_s, "fps": info.fps, "frames_per_tr": slots,
                          "source_size": [info.width, info.height], **sampling_summary(counts, slots),
                          "frames_embedded": n_embedded, "seconds": round(seconds, 3),
                          "frames_per_s": round(n_embedded / seconds, 2) if seconds > 0 else None,
                          "device": device,
                      })
    log.info("wrote %s: %d TRs x %d frames x %d dims (%d frames embedded, %.1f frames/s)", out_npy, n_trs, slots,
             features.shape[2], n_embedded, n_embedded / max(seconds, 1e-9))
    return out_npy


def _preprocess_cfg(model) -> dict:
    import open_clip

    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in open_clip.get_model_preprocess_cfg(model).items()}
