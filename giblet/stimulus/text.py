"""CLIP text embeddings of scene annotations, per TR (the ``embed_text`` stage).

For every TR ``i`` (covering ``[i*tr, (i+1)*tr)`` s, see giblet.timing) we keep up to ``k``
annotations that overlap it and store their open_clip text embeddings:

- ``text.npy``              float32 (T, k, d), L2-normalized rows, zeros in empty slots;
- ``text_mask.npy``         bool (T, k), True where a slot holds an annotation;
- ``text_annotations.npz``  the library for the inverse (nearest-annotation lookup): ``texts`` (A,)
  str, ``onset``/``offset`` (A,) float64 s, ``embeddings`` (A, d) float32, ``index`` (T, k) int32
  (row of each slot in that library, -1 = empty);
- ``text.json``             sidecar: shape, parameters, source hashes, model and weights id, counts.

Empty slots stay empty and are masked downstream; filling a TR without annotations with the
previous TR's ones happens only with ``fill_gaps: forward``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from giblet import logs
from giblet.errors import ConfigError
from giblet.devices import resolve_device
from giblet.files import atomic_output_dir, write_sidecar
from giblet.stimulus.annotations import read_annotations
from giblet.stimulus.clip_weights import load_clip
from giblet.stimulus.media import probe_movie
from giblet.timing import n_trs as count_trs

log = logging.getLogger(__name__)

# Times within this fraction of a TR of a TR edge count as exactly on the edge (float rounding of
# e.g. 4.5 / 1.5 must not make an annotation leak into the next TR); as in giblet.timing.
_EDGE_EPS = 1e-6


# ----------------------------------------------------------------------------- annotations -> TRs

def _tr_span(onset: np.ndarray, offset: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """First and last TR each annotation overlaps, int64 (A,) each; last < first if none.

    Annotation ``[onset, offset)`` overlaps TR i iff ``onset < (i+1)*tr and offset > i*tr``, so
    one ending exactly on an edge does not touch the next TR.
    """
    first = np.floor(onset / tr + _EDGE_EPS).astype(np.int64)
    last = np.ceil(offset / tr - _EDGE_EPS).astype(np.int64) - 1
    return first, last


def overlap_counts(onset: np.ndarray, offset: np.ndarray, n_trs: int, tr: float) -> np.ndarray:
    """Number of annotations overlapping each TR, int64 (T,) (before any cap at k)."""
    first, last = _tr_span(np.asarray(onset, np.float64), np.asarray(offset, np.float64), tr)
    first, last = np.clip(first, 0, n_trs), np.clip(last, -1, n_trs - 1)
    valid = first <= last
    delta = np.zeros(n_trs + 1, dtype=np.int64)  # +1 where a span starts, -1 after it ends
    np.add.at(delta, first[valid], 1)
    np.add.at(delta, last[valid] + 1, -1)
    return np.cumsum(delta)[:n_trs]


def assign_to_trs(onset: np.ndarray, offset: np.ndarray, n_trs: int, tr: float, k: int) -> np.ndarray:
    """Which annotations fill each TR's k slots.

    Args:
        onset, offset: (A,) seconds, ``offset > onset``.
        n_trs, tr: the TR grid (T TRs of ``tr`` seconds).
        k: slots per TR.

    Returns:
        int32 (T, k): row indices into the annotations, -1 for an empty slot. When more than k
        annotations overlap a TR, the k with the longest overlap are kept (ties: earlier onset,
        then earlier row); the kept ones are stored in onset order, empty slots last.
    """
    onset, offset = np.asarray(onset, np.float64), np.asarray(offset, np.float64)
    first, last = _tr_span(onset, offset, tr)
    candidates: list[list[tuple]] = [[] for _ in range(n_trs)]
    for a in range(len(onset)):
        for i in range(max(first[a], 0), min(last[a], n_trs - 1) + 1):
            overlap = min(offset[a], (i + 1) * tr) - max(onset[a], i * tr)
            # Rounded so that equal overlaps computed from different edges tie exactly.
            candidates[i].append((-round(overlap, 9), onset[a], a))
    index = np.full((n_trs, k), -1, dtype=np.int32)
    for i, found in enumerate(candidates):
        kept = sorted(sorted(found)[:k], key=lambda c: (c[1], c[2]))
        index[i, : len(kept)] = [a for _, _, a in kept]
    return index


def forward_fill(index: np.ndarray) -> np.ndarray:
    """A copy of ``index`` (T, k) where each TR with no annotation takes the previous TR's slots.

    Only wholly empty TRs are filled (a TR with some annotations keeps its empty slots); empty
    TRs before the first annotation stay empty. This is the explicit ``fill_gaps: forward`` option.
    """
    filled = index.copy()
    for i in range(1, len(filled)):
        if (filled[i] < 0).all():
            filled[i] = filled[i - 1]
    return filled


# ----------------------------------------------------------------------------- the model

def load_text_model(model_name: str, pretrained: str, device: str, seed: int):
    """An open_clip model (text tower only, eval mode), its tokenizer and a weights id.

    ``pretrained`` is ``"none"`` (DEMO ONLY: seeded random init), a local weights file or an
    open_clip tag, loaded by :func:`giblet.stimulus.clip_weights.load_clip` (which ``embed_frames``
    shares): errors name ``stimulus.text`` or the weights file.

    Returns ``(model, tokenizer, weights_id)``. The vision tower is dropped to save memory.
    """
    import open_clip

    device = resolve_device(device)
    model, weights_id = load_clip(model_name, pretrained, seed, "stimulus.text")
    model.visual = None  # only encode_text is used
    model = model.to(device).eval()
    return model, open_clip.get_tokenizer(model_name), weights_id


# ----------------------------------------------------------------------------- embedding

def _causal_argmax_clip(model) -> bool:
    """Whether the text tower is CLIP's causal transformer pooled at the end-of-text token."""
    import open_clip

    return (isinstance(model, open_clip.CLIP) and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "attn_mask", None) is not None)


@torch.inference_mode()
def encode_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """L2-normalized text embeddings (B, d) of tokens (B, context_length), in the model's dtype.

    Same result as ``model.encode_text(tokens, normalize=True)`` (tested), but faster: CLIP's text
    transformer is causal and pools at the end-of-text token (the largest id in a row), so the
    padding after it never changes the output, and we run only up to the longest text in the batch.
    Other text towers go through ``encode_text`` unchanged.
    """
    if not _causal_argmax_clip(model):
        return model.encode_text(tokens, normalize=True)
    eot = tokens.argmax(dim=-1)
    n = int(eot.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1)


def embed_texts(texts: list[str], model, tokenizer, batch_size: int, device: str,
                progress: bool = True) -> np.ndarray:
    """CLIP text embeddings, float32 (A, d), each row L2-normalized, in the order of ``texts``.

    Texts are batched by token length (less padding per batch). Texts longer than the model's
    context (77 tokens for CLIP) are truncated by the tokenizer; a warning gives their count.
    """
    device = resolve_device(device)
    tokens = tokenizer(list(texts)) if len(texts) else tokenizer([""])[:0]
    truncated = int((tokens[:, -1] != 0).sum())
    if truncated:
        log.warning("%d of %d texts fill the %d-token context and are truncated", truncated, len(texts),
                    tokens.shape[1])
    if not len(texts):  # still report the width d
        d = encode_tokens(model, tokenizer([""]).to(device)).shape[1]
        return np.zeros((0, d), dtype=np.float32)
    order = np.argsort((tokens != 0).sum(dim=1).numpy(), kind="stable")
    chunks = []
    for start in logs.progress(range(0, len(order), batch_size), desc="CLIP text", unit="batch",
                               enabled=progress):
        rows = torch.from_numpy(order[start : start + batch_size])
        chunks.append(encode_tokens(model, tokens[rows].to(device)).float().cpu().numpy())
    embeddings = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    embeddings[order] = np.concatenate(chunks)
    return embeddings


# ----------------------------------------------------------------------------- the stage

def output_paths(out_npy: str | Path) -> dict[str, Path]:
    """The files the stage writes, named after ``out_npy`` (``text.npy`` -> ``text_mask.npy``, ...)."""
    out_npy = Path(out_npy)
    stem = out_npy.stem
    return {"text": out_npy, "mask": out_npy.with_name(f"{stem}_mask.npy"),
            "annotations": out_npy.with_name(f"{stem}_annotations.npz"),
            "sidecar": out_npy.with_suffix(".json")}


def embed_text(annotations: Path, movie: Path, out_npy: Path, tr: float, params: dict,
               progress: bool = True) -> dict:
    """Embed the annotations of ``movie`` per TR and write the stage's outputs (see module doc).

    ``params`` is the config section ``stimulus.text``. T = floor(movie duration / tr). Each unique
    text is embedded once. All files appear together or not at all. Returns the paths written.
    """
    annotations, movie, out_npy = Path(annotations), Path(movie), Path(out_npy)
    duration = probe_movie(movie).duration_s
    n_trs, k = count_trs(duration, tr), params["k"]
    table = read_annotations(annotations, params["columns"], duration_s=duration)
    onset, offset = table["onset"].to_numpy(np.float64), table["offset"].to_numpy(np.float64)
    texts = table["text"].to_numpy(dtype=str)

    counts = overlap_counts(onset, offset, n_trs, tr)
    index = assign_to_trs(onset, offset, n_trs, tr, k)
    if params["fill_gaps"] == "forward":
        index = forward_fill(index)
    elif params["fill_gaps"] != "none":
        raise ConfigError(f"stimulus.text.fill_gaps: expected 'none' or 'forward', "
                          f"got {params['fill_gaps']!r}")

    device = resolve_device(params["device"], "stimulus.text.device")
    model, tokenizer, weights_id = load_text_model(params["model"], params["pretrained"], device,
                                                   params["seed"])
    unique, inverse = np.unique(texts, return_inverse=True)
    log.info("embedding %d unique texts of %d annotations with %s (%s) on %s", len(unique), len(texts),
             params["model"], weights_id, device)
    embeddings = embed_texts(list(unique), model, tokenizer, params["batch_size"], device, progress)[inverse]

    mask = index >= 0
    features = np.zeros((n_trs, k, embeddings.shape[1]), dtype=np.float32)
    features[mask] = embeddings[index[mask]]

    paths = output_paths(out_npy)
    extra = {"n_trs": n_trs, "duration_s": duration, "n_annotations": len(texts),
             "n_unique_texts": len(unique), "dropped_beyond_end": table.attrs["dropped_beyond_end"],
             "empty_trs": int((counts == 0).sum()), "trs_with_more_than_k": int((counts > k).sum()),
             "filled_trs": int(((counts == 0) & mask.any(axis=1)).sum()), "device": device}
    with atomic_output_dir(out_npy.parent) as tmp:
        np.save(tmp / paths["text"].name, features)
        np.save(tmp / paths["mask"].name, mask)
        np.savez(tmp / paths["annotations"].name, texts=texts, onset=onset, offset=offset,
                 embeddings=embeddings, index=index)
        write_sidecar(tmp / out_npy.name, features, parameters={"tr": tr, **params},
                      sources={"annotations": annotations, "movie": movie},
                      models={"clip": {"model": params["model"], "pretrained": weights_id,
                                       "dim": int(embeddings.shape[1])}},
                      extra=extra, packages=("torch", "open_clip_torch"))
    log.info("wrote %s: %d TRs x %d slots x %d dims; %d empty TRs, %d with more than k=%d annotations",
             out_npy, n_trs, k, embeddings.shape[1], extra["empty_trs"], extra["trs_with_more_than_k"], k)
    return paths


# ----------------------------------------------------------------------------- the inverse

def nearest_annotations(queries: np.ndarray, library: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The library rows most cosine-similar to each query, best first.

    Args:
        queries: (N, d) embeddings (e.g. decoded text embeddings); need not be normalized.
        library: (A, d) annotation embeddings (``embeddings`` in text_annotations.npz).
        top_k: how many to return (at most A).

    Returns:
        ``(indices, scores)``: int64 (N, top_k) library rows and float32 (N, top_k) cosine
        similarities, best first (ties: lower row first). A zero query scores 0 everywhere.
    """
    def unit(x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = unit(queries) @ unit(library).T  # (N, A)
    indices = np.argsort(-scores, axis=1, kind="stable")[:, : min(top_k, scores.shape[1])]
    return indices, np.take_along_axis(scores, indices, axis=1).astype(np.float32)
