"""What the stimulus autoencoders learn from: every frame of the movie at a rate, every chunk of its codes.

Both are small enough to hold in memory (the demo: 3,500 frames of 36 x 64; Sherlock at 5 frames/s:
15,000), and both hold out the same kind of validation set: whole blocks of TRs
(:func:`validation_trs`), so a validation frame is never a near-copy of its training neighbour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


# Validation holds out the last of every VALIDATION_EVERY blocks of TRs: blocks of at most
# VALIDATION_BLOCK_TRS TRs, short enough that a movie holds at least MIN_BLOCKS of them.
VALIDATION_BLOCK_TRS = 20
VALIDATION_EVERY = 10
MIN_BLOCKS = 5


def validation_trs(trs: np.ndarray, n_trs: int) -> np.ndarray:
    """(N,) bool: which of the TR indices ``trs`` (of a movie of ``n_trs`` TRs) the validation holds out."""
    block = max(1, min(VALIDATION_BLOCK_TRS, n_trs // (VALIDATION_EVERY * MIN_BLOCKS)))
    return (np.asarray(trs) // block) % VALIDATION_EVERY == VALIDATION_EVERY - 1


def movie_frames(movie: str | Path, tr: float, rate: float, height: int, width: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Every ``fps / rate``-th frame of ``movie``, scaled to ``height`` x ``width``.

    Returns uint8 frames ``(N, height, width, 3)``, each one's TR ``(N,)`` int64, in movie order, and
    the movie's number of TRs.
    Frames are sampled as ``extract_frames`` samples them (:func:`giblet.stimulus.frames.sample_frames`,
    the same timestamps-to-TR rule), only denser.
    """
    from giblet.stimulus.frames import FrameCounts, frames_per_tr, sample_frames
    from giblet.stimulus.media import probe_movie
    from giblet.timing import n_trs

    info = probe_movie(movie)
    skip = max(1, int(round(info.fps / rate)))
    slots = frames_per_tr(info.fps, tr, skip)
    counts = FrameCounts.zeros(n_trs(info.duration_s, tr))
    frames, trs = [], []
    for i, _, frame in sample_frames(Path(movie), tr, slots, skip, counts, progress=progress,
                                     desc="decode movie frames"):
        frames.append(frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA"))
        trs.append(i)
    return np.stack(frames), np.asarray(trs, dtype=np.int64), len(counts.kept)


class TensorSet:
    """Samples held as tensors (one row each), indexed by :meth:`rows`."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths {sorted(lengths)}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def rows(self, indices, device) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index].to(device) for k, v in self.tensors.items()}


def frame_sets(frames: np.ndarray, trs: np.ndarray, n_trs: int) -> tuple[TensorSet, TensorSet]:
    """(training frames, validation frames) by :func:`validation_trs`."""
    held = validation_trs(trs, n_trs)
    return TensorSet(frames=torch.from_numpy(frames[~held])), TensorSet(frames=torch.from_numpy(frames[held]))


def code_chunk_sets(codes: np.ndarray, chunk_frames: int) -> tuple[TensorSet, TensorSet]:
    """Every TR's codes ``(T, n_q, Fa)`` as its run of chunks ``(S, n_q, chunk_frames)``: (training TRs,
    validation TRs) by :func:`validation_trs`. Joined in time order the TRs are the whole soundtrack;
    a sample is a TR so that its neighbouring chunks meet in one batch."""
    from giblet.autoencoders.codes import chunk_codes

    chunks = chunk_codes(torch.from_numpy(np.asarray(codes).astype(np.int64)), chunk_frames)
    held = torch.from_numpy(validation_trs(np.arange(len(chunks)), len(chunks)))
    return TensorSet(chunks=chunks[~held]), TensorSet(chunks=chunks[held])


__all__ = ["TensorSet", "code_chunk_sets", "frame_sets", "movie_frames", "validation_trs"]
