"""Decoding metrics (brain -> stimulus) on one held-out block: small pure-numpy functions, no model or file access.

Scored per modality: frame pixel correlation against a mean-frame baseline (:func:`frame_metrics`),
audio code accuracy per codebook against the most frequent code (:func:`code_metrics`), and text
retrieval among the block's distinct embeddings (:func:`text_metrics`). The encoding metrics
(stimulus -> brain) are in :mod:`giblet.evaluate.metrics`.

Every function returns a dict of plain Python numbers (JSON-ready; ``None`` where a value is
undefined, never NaN). Ties in a ranking count against the model.
"""

from __future__ import annotations

import numpy as np

from giblet.evaluate.metrics import pearson_columns


def frame_metrics(decoded: np.ndarray, true: np.ndarray, mean_frame: np.ndarray | None = None) -> dict:
    """Frames decoded from the brain vs the true frames.

    Parameters
    ----------
    decoded : array of shape (n_samples, n_frames, height, width, 3), float in [0, 1]
    true : array of the same shape, uint8 (0-255)
    mean_frame : array of shape (n_frames, height, width, 3) in [0, 1], or None
        The baseline prediction, the same for every sample; default: the mean of ``true``
        (the evaluation passes the training block's mean frame).

    Returns
    -------
    dict
        ``pixel_r_mean``: mean over samples of the Pearson r between a sample's decoded and true
        pixels (all its frames, positions and channels; a constant sample gives 0); ``mse`` on the
        [0, 1] scale; ``r_mean_baseline_mean_frame`` and ``mse_baseline_mean_frame``: the same for
        always predicting ``mean_frame``; ``n_samples``.
    """
    decoded = np.asarray(decoded, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64) / 255.0
    if decoded.shape != true.shape:
        raise ValueError(f"decoded {decoded.shape} and true {true.shape} frames differ in shape")
    n = decoded.shape[0]
    flat_true = true.reshape(n, -1)
    mean_frame = true.mean(axis=0) if mean_frame is None else np.asarray(mean_frame, dtype=np.float64)
    baseline = np.broadcast_to(mean_frame.reshape(1, -1), flat_true.shape)
    r = pearson_columns(decoded.reshape(n, -1).T, flat_true.T)
    r_base = pearson_columns(baseline.T, flat_true.T)
    return {"pixel_r_mean": float(r.mean()), "mse": float(np.mean((decoded.reshape(n, -1) - flat_true) ** 2)),
            "r_mean_baseline_mean_frame": float(r_base.mean()),
            "mse_baseline_mean_frame": float(np.mean((baseline - flat_true) ** 2)), "n_samples": n}


def code_metrics(logits: np.ndarray, codes: np.ndarray, reference_codes: np.ndarray | None = None) -> dict:
    """Audio codes decoded from the brain: accuracy per codebook of the most likely code.

    Parameters
    ----------
    logits : array of shape (n_samples, n_q, frames_per_tr, codebook_size)
    codes : int array of shape (n_samples, n_q, frames_per_tr)
    reference_codes : int array of shape (n_reference, n_q, frames_per_tr), optional
        The codes the constant baseline may learn from (the training block). None: ``codes`` itself.

    Returns
    -------
    dict
        ``accuracy_per_codebook`` [n_q] (fraction of (sample, frame) positions whose argmax is the
        true code), ``accuracy_mean``; ``chance_most_frequent`` [n_q]: the accuracy on ``codes`` of
        always answering the codebook's most frequent code in ``reference_codes`` (a constant
        baseline; with no reference it peeks at ``codes`` and is optimistic), ``chance_uniform`` =
        1 / codebook_size.
    """
    logits, codes = np.asarray(logits), np.asarray(codes)
    if logits.shape[:-1] != codes.shape or codes.ndim != 3:
        raise ValueError(f"logits {logits.shape} do not match codes {codes.shape} "
                         "(expected (N, n_q, Fa, C) and (N, n_q, Fa))")
    hits = logits.argmax(axis=-1) == codes                           # (N, n_q, Fa)
    accuracy = hits.mean(axis=(0, 2))
    reference = codes if reference_codes is None else np.asarray(reference_codes)
    chance = [float(np.mean(codes[:, q] == np.bincount(reference[:, q].ravel().astype(np.int64)).argmax()))
              for q in range(codes.shape[1])]
    return {"accuracy_per_codebook": [float(a) for a in accuracy], "accuracy_mean": float(accuracy.mean()),
            "chance_most_frequent": chance, "chance_uniform": 1.0 / logits.shape[-1]}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (..., dim) with each vector along the last axis scaled to unit length (zero vectors stay 0),
    keeping its float dtype: dot products of the rows are cosines."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def text_metrics(decoded: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None,
                 ks: tuple[int, ...] = (1, 5)) -> dict:
    """Text embeddings decoded from the brain: retrieval among the block's distinct true embeddings.

    Each annotated slot (``mask`` True) is a query: its decoded embedding is compared by cosine with
    every distinct true embedding of the block's annotated slots (an annotation spanning several TRs
    is one candidate) and ranked; ties count against the model.

    Parameters
    ----------
    decoded, true : arrays of shape (n_samples, k, dim)
    mask : bool array of shape (n_samples, k), optional
        Slots that hold an annotation; the others are neither queries nor candidates. None: every
        slot is filled (the CLIP embeddings of a TR's frames).
    ks : tuple of int
        Retrieval depths reported as ``top{k}``.

    Returns
    -------
    dict
        ``top1``, ``top5``: fraction of queries whose true embedding ranks within k; ``chance_top1``,
        ``chance_top5`` = min(k, M) / M for M candidates; ``cosine_mean`` between decoded and true;
        ``n_queries``, ``n_candidates``. Values are None when no slot is annotated.
    """
    decoded, true = np.asarray(decoded, dtype=np.float64), np.asarray(true, dtype=np.float64)
    mask = np.ones(true.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if decoded.shape != true.shape or mask.shape != true.shape[:2]:
        raise ValueError(f"decoded {decoded.shape}, true {true.shape} and mask {mask.shape} disagree")
    queries, targets = decoded[mask], true[mask]                           # (Q, d)
    out = {"n_queries": int(len(queries))}
    if not len(queries):
        return {**out, "n_candidates": 0, "cosine_mean": None,
                **{f"top{k}": None for k in ks}, **{f"chance_top{k}": None for k in ks}}
    candidates, index = np.unique(targets, axis=0, return_inverse=True)    # (M, d), (Q,)
    index = index.reshape(-1)
    m = len(candidates)
    q_unit, c_unit = unit_rows(queries), unit_rows(candidates)
    scores = q_unit @ c_unit.T                                             # (Q, M)
    correct = scores[np.arange(len(queries)), index][:, None]
    others = np.ones_like(scores, dtype=bool)
    others[np.arange(len(queries)), index] = False
    rank = ((scores >= correct) & others).sum(axis=1)
    cosine = (q_unit * unit_rows(targets)).sum(axis=1)
    return {**out, "n_candidates": int(m), "cosine_mean": float(cosine.mean()),
            **{f"top{k}": float(np.mean(rank < k)) for k in ks},
            **{f"chance_top{k}": min(k, m) / m for k in ks}}
