"""Decoding scored by identification: which test TR's stimulus does a decoding from the brain match?

For every test TR, the stimulus is decoded from the measured brain, turned into a per-modality
*descriptor*, and ranked against the true descriptors of all test TRs (Pearson r across descriptor
dimensions after centring each dimension over the test TRs, as in
:func:`giblet.evaluate.metrics.identification`). The descriptors are the ridge baseline's raw
per-TR stimulus features (:mod:`giblet.evaluate.ridge_features`), so the model's decoders and the
ridge decoder are scored in one space:

- frames: the TR's mean frame on a 6 x 8 colour grid plus its motion-energy map;
- frame features: the mean CLIP image embedding of the TR's frames;
- audio: per-codebook square-root code frequencies (for the model: its softmax probabilities
  averaged over the TR's code frames);
- text: the mean embedding of the TR's annotations (TRs without one are left out).

The ridge decoder (:func:`ridge_decoder`) is the standard baseline: the brain reduced by a PCA fitted
on the fit TRs, then per-output ridge (alpha by time-blocked CV) to each modality's descriptor.
"""

from __future__ import annotations

import numpy as np

from giblet.data.manifest import Manifest
from giblet.evaluate.metrics import identification
from giblet.evaluate.ridge_features import code_features, frame_features, text_features
from giblet.splits import Split, blocked_cv

N_BRAIN_COMPONENTS = 256
ALPHAS = np.logspace(-1, 6, 15)


def stimulus_descriptors(stimulus: dict, codebook_size: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """True stimulus (``frames`` uint8 (N, F, H, W, 3), ``frame_features`` (N, F, d), ``codes`` (N, n_q, Fa),
    ``text`` (N, k, d) and ``text_mask`` (N, k)) -> {modality: (descriptors (N, p), valid (N,) bool)}."""
    out = {}
    if "frames" in stimulus:
        frames = np.asarray(stimulus["frames"])
        out["frames"] = (frame_features(frames), np.ones(len(frames), bool))
    if "frame_features" in stimulus:
        embeddings = np.asarray(stimulus["frame_features"])
        out["frame_features"] = (text_features(embeddings)[0], np.ones(len(embeddings), bool))
    if "codes" in stimulus:
        codes = np.asarray(stimulus["codes"])
        out["audio"] = (code_features(codes, codebook_size or int(codes.max()) + 1), np.ones(len(codes), bool))
    if "text" in stimulus:
        mask = np.asarray(stimulus.get("text_mask", np.ones(np.shape(stimulus["text"])[:2], bool)), bool)
        mean, no_text = text_features(stimulus["text"], mask)
        out["text"] = (mean, no_text[:, 0] == 0)
    return out


def decoded_descriptors(decoded: dict, text_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model's decoder outputs in the descriptor space of :func:`stimulus_descriptors`.

    ``frames`` (N, F, H, W, 3) in [0, 1]; ``frame_features`` (N, F, d): the mean over the frames;
    ``code_logits`` (N, n_q, Fa, C): softmax, averaged over the code frames, square-rooted (the expected
    code frequencies); ``text`` (N, k, d): the mean over the slots ``text_mask`` marks (all slots without
    one).
    """
    out = {}
    if "frames" in decoded:
        out["frames"] = frame_features(np.asarray(decoded["frames"], np.float32) * 255.0)
    if "frame_features" in decoded:
        out["frame_features"] = text_features(np.asarray(decoded["frame_features"], np.float32))[0]
    if "code_logits" in decoded:
        logits = np.asarray(decoded["code_logits"], np.float64)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        out["audio"] = np.sqrt(probabilities.mean(axis=2)).reshape(len(logits), -1).astype(np.float32)
    if "text" in decoded:
        text = np.asarray(decoded["text"], np.float32)
        mask = np.ones(text.shape[:2], bool) if text_mask is None else np.asarray(text_mask, bool)
        out["text"] = text_features(text, mask)[0]
    return out


# The colour grid decoded frames are scored on (rows, columns): finer than the descriptor's, so a
# disk's place counts, coarse enough that a frame drawn a few pixels off still matches.
FRAME_GRID = (9, 16)


def mean_frame_grid(frames: np.ndarray, grid: tuple[int, int] = FRAME_GRID) -> np.ndarray:
    """Each TR's mean frame as a colour grid: ``(N, F, H, W, 3)`` (uint8, or float in [0, 1]) -> ``(N, rows * cols * 3)``
    float64 in [0, 1], each cell the mean of its pixels (``np.array_split`` bounds when H, W do not divide)."""
    frames = np.asarray(frames)
    mean = frames.mean(axis=1, dtype=np.float64) / (255.0 if frames.dtype == np.uint8 else 1.0)   # (N, H, W, 3)
    rows = [band.mean(axis=1) for band in np.array_split(mean, grid[0], axis=1)]                   # (N, W, 3) each
    cells = [[cell.mean(axis=1) for cell in np.array_split(row, grid[1], axis=1)] for row in rows]
    return np.stack([np.stack(row, axis=1) for row in cells], axis=1).reshape(len(frames), -1)


def frame_grid_identification(decoded: np.ndarray, true: np.ndarray, grid: tuple[int, int] = FRAME_GRID) -> dict:
    """Which test TR do decoded frames identify? Both sides as :func:`mean_frame_grid`, each cell centred
    over the TRs, Pearson r across cells, the true TR must rank first (ties count against): ``top1``,
    ``top5`` and their chance levels (:func:`giblet.evaluate.metrics.identification`)."""
    scores = identification(mean_frame_grid(decoded, grid), mean_frame_grid(true, grid))
    return {k: scores[k] for k in ("top1", "top5", "chance_top1", "chance_top5")} | {"grid": list(grid),
                                                                                     "n": int(len(decoded))}


def identification_scores(predicted: dict, true: dict) -> dict:
    """{modality: identification of each valid test TR among the valid test TRs} (top-1/top-5, chance).

    Candidates whose true descriptor equals the right one's are the same stimulus (consecutive TRs
    inside one annotation have one text descriptor) and are not counted against a decoding: a TR is
    identified among the *distinct* stimuli of the test block (:func:`distinct_identification`).
    """
    out = {}
    for modality, (descriptors, valid) in true.items():
        if modality not in predicted or valid.sum() < 2:
            continue
        scores = distinct_identification(np.asarray(predicted[modality])[valid], descriptors[valid])
        out[modality] = {k: scores[k] for k in ("top1", "top5", "chance_top1", "chance_top5")}
        out[modality]["n"] = int(valid.sum())
        out[modality]["n_distinct"] = scores["n_distinct"]
    return out


def distinct_identification(pred: np.ndarray, true: np.ndarray) -> dict:
    """:func:`giblet.evaluate.metrics.identification` (each column centred over the rows, Pearson r
    across columns, ties count against), except that a candidate whose true row is identical to the
    right one is not a rival: ``rank`` counts only candidates showing another stimulus, and chance is
    1 (5) over the right TR and those candidates, averaged over the rows. With every true row distinct
    this is ``identification`` exactly."""
    from giblet.evaluate.metrics import center_rows

    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    n = len(true)
    p, t = center_rows(pred - pred.mean(axis=0)), center_rows(true - true.mean(axis=0))
    scores = p @ t.T
    correct = np.diag(scores)[:, None]
    same = (true[:, None, :] == true[None, :, :]).all(axis=2)
    rank = ((scores >= correct) & ~same).sum(axis=1)
    rivals = n - same.sum(axis=1) + 1                     # distinct candidates, the right one included
    return {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)),
            "chance_top1": float(np.mean(1.0 / rivals)), "chance_top5": float(np.mean(np.minimum(5, rivals) / rivals)),
            "n_distinct": int(len(np.unique(true, axis=0)))}


def decode_delay(manifest: Manifest) -> int:
    """TRs between a decoded stimulus TR and the end of its window: the model's ``decode_delay_trs``."""
    from giblet.timing import decode_delay_trs

    return decode_delay_trs(manifest.tr, manifest.lag_trs)


def decoded_stimulus_trs(split: Split, targets, delay: int) -> np.ndarray:
    """The stimulus TR each target's brain is decoded into: its window's end minus ``delay``."""
    return np.array([split.window(int(t))[1] - 1 - delay for t in targets], dtype=np.int64)


def _load_stimulus(manifest: Manifest, trs: np.ndarray) -> dict:
    """The manifest's stimulus arrays at stimulus TRs ``trs``, under the sample keys the model's batches use."""
    from giblet.data.samples import ROLES

    arrays = manifest.arrays
    return {key: np.asarray(np.load(arrays[role].path, mmap_mode="r")[trs])
            for role, (key, _) in ROLES.items() if role in arrays}


def brain_components(fmri: np.ndarray, fit, test, n_components: int = N_BRAIN_COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """The brain rows ``fit`` and ``test`` of ``fmri (T, V)`` on the fit rows' first ``n_components``
    principal components (centred on the fit rows): ``(len(fit), c)``, ``(len(test), c)``."""
    brain_fit, brain_test = np.asarray(fmri[fit], np.float64), np.asarray(fmri[test], np.float64)
    mean = brain_fit.mean(axis=0)
    _, _, vt = np.linalg.svd(brain_fit - mean, full_matrices=False)
    basis = vt[:min(n_components, len(fit) - 1)].T                                  # (V, c)
    return (brain_fit - mean) @ basis, (brain_test - mean) @ basis


def ridge_decoder(manifest: Manifest, fmri: np.ndarray, fit_blocks=("train", "val"), test_block: str = "test",
                  n_components: int = N_BRAIN_COMPONENTS, n_folds: int = 5) -> dict:
    """The ridge decoder baseline's identification scores on ``test_block`` (see the module docstring).

    The brain rows of the fit targets give the PCA (centred on them) and the ridge fits; the
    descriptors are those of the stimulus TR the model decodes (:func:`decoded_stimulus_trs`). Each
    descriptor dimension gets its own alpha among ``ALPHAS``.
    """
    from giblet.evaluate.ridge_solvers import ridge_cv_predict

    split = manifest.split
    delay = decode_delay(manifest)
    fit = np.concatenate([np.asarray(split.targets(b)) for b in fit_blocks if b in split.ranges])
    test = np.asarray(split.targets(test_block))
    X_fit, X_test = brain_components(fmri, fit, test, n_components)
    codebook = manifest.modalities["audio"]["codebook_size"] if "audio" in manifest.modalities else None
    true_fit = stimulus_descriptors(_load_stimulus(manifest, decoded_stimulus_trs(split, fit, delay)), codebook)
    true_test = stimulus_descriptors(_load_stimulus(manifest, decoded_stimulus_trs(split, test, delay)), codebook)
    predicted = {}
    for modality, (Y, valid) in true_fit.items():
        cv = blocked_cv(fit[valid], n_folds, split.lag_trs)
        predicted[modality], _, _ = ridge_cv_predict(X_fit[valid], Y[valid], X_test, ALPHAS, cv, solver="primal")
    return identification_scores(predicted, true_test)
