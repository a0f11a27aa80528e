"""What the decoder half makes of the TRUE brain on the test split (the ``plot_reconstructions`` stage).

The decoders reconstruct each window's stimulus TR at ``model.decode_index`` (the hemodynamic peak:
``target + shift_trs + 1 + decode_index``, ``predict().stimulus``); every true stimulus, library lookup,
TR label and time stamp here is of that TR. Written into one folder, for the enabled modalities only:

- ``video.png``   true frame vs the frame decoded from the brain, for evenly spaced test TRs;
- ``audio.png``   true vs decoded argmax EnCodec codes of consecutive test TRs, and both as spectrograms;
- ``decoded.wav`` those decoded codes as 24 kHz audio, decoded by the SAME EnCodec weights the codes'
  sidecar records (skipped, with a warning and a note in the result, when they cannot be rebuilt here);
- ``text.png``    true annotation vs the 3 library annotations nearest to the decoded embedding;
- ``decoded_test.npz`` every test row's decoded stimulus (:func:`write_decoded`), to score without the model;
- ``fmri.png``    the encoder half: predicted vs true time courses of the 4 best voxels, and predicted vs
  true values of all reliable voxels (noise ceiling >= ``reliable_ceiling``).

Every number a caption may quote comes back in the returned dict: giblet.evaluate.metrics' and
decoding_metrics' scores plus two only these figures need (frame identification on raw pixels,
retrieval from the text library).
The files appear together, or not at all (giblet.files.atomic_output_dir).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from giblet.data.manifest import Manifest
from giblet.errors import InputError
from giblet.evaluate import metrics as M
from giblet.evaluate.decoded_file import DECODED_NAME, write_decoded
from giblet.evaluate.decoding_identification import frame_grid_identification
from giblet.evaluate.decoding_metrics import code_metrics, frame_metrics, text_metrics, unit_rows
from giblet.evaluate.ceiling import load_ceiling
from giblet.evaluate.evaluate import load_checked
from giblet.evaluate.figures import evenly_spaced, new_figure, save_figure, table_figure, wrap_lines
from giblet.files import atomic_output_dir, jsonable

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("video.png", "audio.png", "decoded.wav", "text.png", "fmri.png", "decoded_test.npz")
# ---------------------------------------------------------------------------------------------
# Video


def frame_identification(decoded: np.ndarray, true_uint8: np.ndarray) -> dict:
    """Decoded frames (N, F, H, W, 3) in [0, 1] vs the true uint8 frames, TR by TR on raw pixels.

    Kept here, not metrics.identification: that one centers each pixel over the TRs in float64, too
    large for frames, and the figure quotes the raw pixel r of each TR. ``per_tr_r`` (N,): each
    TR's pixel r (as in decoding_metrics.frame_metrics); ``pixel_r_other_trs``: the mean r against the OTHER
    TRs' frames (what the shared background alone gives); ``identification``: fraction of TRs whose
    decoded frames correlate best with their own true frames (``identification_chance`` = 1/N).
    """
    n = len(decoded)
    rows = lambda x: M.center_rows(x.reshape(n, -1).astype(np.float32))  # noqa: E731 (float32: frames are large)
    r = (rows(decoded) @ rows(true_uint8).T).astype(np.float64)  # (N, N): r[i, j] = pixel r(decoded i, true j)
    return {"per_tr_r": np.diag(r),
            "pixel_r_other_trs": (r.sum() - np.trace(r)) / (n * (n - 1)) if n > 1 else float("nan"),
            "identification": float(np.mean(np.argmax(r, axis=1) == np.arange(n))), "identification_chance": 1.0 / n}


def _plot_video(frames, true, picks, stim_trs, tr: float, metrics: dict, note: str, path: Path) -> None:
    n_frames, height, width = frames.shape[1:4]
    middle = n_frames // 2
    panel_w = 2.4
    fig = new_figure(max(6.0, panel_w * len(picks)), 2 * panel_w * height / width + 1.3)
    axes = fig.subplots(2, len(picks), squeeze=False)
    for col, j in enumerate(picks):
        for ax, image, label in ((axes[0, col], true[j, middle], "true frame"),
                                 (axes[1, col], frames[j, middle], "decoded from brain")):
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=10)
        axes[0, col].set_title(f"TR {stim_trs[j]} ({stim_trs[j] * tr:.0f} s)", fontsize=9)
        axes[1, col].set_xlabel(f"pixel r = {metrics['per_tr_r'][j]:.2f}", fontsize=9)
    fig.suptitle(f"Video: frame {middle + 1} of {n_frames} per TR, true vs decoded from the true brain (test split, "
                 f"{note})\nmean pixel r {metrics['pixel_r_mean']:.3f} (the mean frame's "
                 f"{metrics['r_mean_baseline_mean_frame']:.3f}, other TRs' frames {metrics['pixel_r_other_trs']:.3f}); "
                 f"identification on pixels {metrics['identification']:.0%}, on a "
                 f"{'x'.join(map(str, metrics['grid_identification']['grid']))} colour grid "
                 f"{metrics['grid_identification']['top1']:.0%} (chance {metrics['identification_chance']:.0%})",
                 fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Audio


def _decode_wavs(manifest: Manifest, true_codes: np.ndarray, decoded_codes: np.ndarray, device: str):
    """(wav from decoded codes, wav from true codes, weights id) or (None, None, reason)."""
    from giblet.stimulus.audio import decode, encodec_from_sidecar

    codes_npy = manifest.arrays["audio_codes"].path
    try:
        model, weights_id = encodec_from_sidecar(codes_npy, device)
    except Exception as error:  # any failure to rebuild the weights: no wav, but the figures still come
        reason = f"EnCodec weights for {codes_npy} could not be rebuilt: {type(error).__name__}: {error}"
        log.warning("skipping decoded.wav: %s", reason)
        return None, None, reason
    return decode(model, decoded_codes, device), decode(model, true_codes, device), weights_id


def _plot_audio(true_codes, decoded_codes, wav, wav_true, sample_rate: int, first_tr: int, tr: float,
                metrics: dict, wav_note: str, note: str, path: Path) -> None:
    n_trs, n_q, fa = true_codes.shape
    frame_rate = 75.0
    seconds = n_trs * fa / frame_rate
    n_specs = 2 if wav is not None else 0
    fig = new_figure(11, 1.9 * (2 + n_specs) + 0.9 + 1.2)
    axes = fig.subplots(3 + n_specs, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [2, 2, 0.9] + [2] * n_specs})[:, 0]
    vmax = max(int(true_codes.max()), int(decoded_codes.max()), 1)
    image = None
    flat = lambda codes: codes.transpose(1, 0, 2).reshape(n_q, n_trs * fa)  # noqa: E731 (n_q, time)
    for ax, codes, label in ((axes[0], true_codes, "true codes"), (axes[1], decoded_codes, "decoded argmax codes")):
        image = ax.imshow(flat(codes), aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=vmax,
                          extent=(0, seconds, n_q - 0.5, -0.5))
        ax.set_title(label, fontsize=10, loc="left")
    fig.colorbar(image, ax=list(axes[:2]), label="code index", shrink=0.9)
    hits = flat(true_codes) == flat(decoded_codes)
    axes[2].imshow(hits, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1,
                   extent=(0, seconds, n_q - 0.5, -0.5))
    axes[2].set_title(f"decoded == true (black): {hits.mean():.1%} of these frames", fontsize=10, loc="left")
    for ax in axes[:3]:
        ax.set_yticks(range(n_q), [str(q + 1) for q in range(n_q)], fontsize=8 if n_q > 8 else 10)
        ax.set_ylabel("codebook")
    if wav is not None:
        for ax, w, label in ((axes[3], wav_true, "spectrogram: true codes decoded by EnCodec"),
                             (axes[4], wav, "spectrogram: decoded.wav (codes decoded from the brain)")):
            _, _, _, spec = ax.specgram(w, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma",
                                        scale="dB", mode="magnitude")
            ax.set_ylabel("frequency (Hz)")
            ax.set_title(label, fontsize=10, loc="left")
        fig.colorbar(spec, ax=list(axes[3:]), label="magnitude (dB)", shrink=0.9)
    for ax in axes:
        for k in range(1, n_trs):
            ax.axvline(k * fa / frame_rate, color="white", lw=0.6, alpha=0.6)
    axes[-1].set_xlabel(f"time (s) from stimulus TR {first_tr} ({first_tr * tr:.1f} s); "
                        f"lines: TR boundaries ({fa} code frames per TR)")
    per_q = ", ".join(f"{a:.1%}" for a in metrics["accuracy_per_codebook"])
    fig.suptitle(f"Audio: EnCodec codes, true vs decoded from the true brain, {n_trs} consecutive test TRs ({note})\n"
                 f"test accuracy {metrics['accuracy_mean']:.1%} (per codebook {per_q}; most-frequent-code baseline "
                 f"{np.mean(metrics['chance_most_frequent']):.1%}, chance {metrics['chance_uniform']:.2%}){wav_note}",
                 fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Text


def text_library(manifest: Manifest) -> tuple[Path, dict]:
    """The annotation library next to the manifest's text array (``text_annotations.npz``)."""
    from giblet.stimulus.text import output_paths

    path = output_paths(manifest.arrays["text"].path)["annotations"]
    if not path.is_file():
        raise InputError(path, "text annotation library not found (the embed_text stage writes it next to text.npy)")
    try:
        with np.load(path) as data:
            library = {key: data[key] for key in ("texts", "embeddings", "index")}
    except Exception as error:
        raise InputError(path, f"cannot be read as a text annotation library ({type(error).__name__}: {error})") \
            from None
    return path, library


def _text_scores(queries: np.ndarray, library: dict) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each query (M, d) with each DISTINCT library text: (M, U) scores and the U texts."""
    texts, inverse = np.unique(library["texts"].astype(str), return_inverse=True)
    unit = lambda x: unit_rows(np.asarray(x, np.float32))  # noqa: E731
    scores = unit(queries) @ unit(library["embeddings"]).T  # (M, A)
    best = np.full((len(texts), len(queries)), -np.inf)
    np.maximum.at(best, inverse.reshape(-1), scores.T)
    return best.T, texts


def library_retrieval(decoded: np.ndarray, mask: np.ndarray, stim_trs: np.ndarray, library: dict) -> dict:
    """Top-k retrieval of each filled slot's true text among ALL distinct texts of the annotation library.

    Kept here, not decoding_metrics.text_metrics: that one ranks among the block's own true embeddings, while
    the figure shows the nearest texts of the whole library. ``stim_trs`` (N,): the stimulus TR each
    row decodes (the library's index is by stimulus TR). Ties count against the model.
    """
    n_idx, slot = np.nonzero(mask)
    if len(n_idx) == 0:
        return {"library_top1": None, "library_top3": None, "library_chance_top1": None, "n_library_texts": 0}
    scores, texts = _text_scores(decoded[n_idx, slot], library)
    true_u = np.searchsorted(texts, library["texts"].astype(str)[library["index"][stim_trs[n_idx], slot]])
    rank = (scores >= scores[np.arange(len(true_u)), true_u][:, None]).sum(1) - 1  # texts as good as the true one
    return {"library_top1": float(np.mean(rank < 1)), "library_top3": float(np.mean(rank < 3)),
            "library_chance_top1": 1.0 / len(texts), "n_library_texts": int(len(texts))}


def _plot_text(decoded, mask, library: dict, picks, stim_trs, tr: float, metrics: dict, note: str, path: Path) -> None:
    texts = library["texts"].astype(str)
    rows, colors = [], []
    for j in picks:
        slots = np.nonzero(mask[j])[0]
        true_texts = [texts[library["index"][stim_trs[j], s]] for s in slots]
        scores, distinct = _text_scores(decoded[j, slots], library)
        best = scores.max(0)
        cells = [[f"{stim_trs[j]}", f"({stim_trs[j] * tr:.0f} s)"], wrap_lines(" | ".join(true_texts), 50)]
        row_colors = ["white", "#f2f2f2"]
        for u in np.argsort(-best, kind="stable")[:3]:
            cells.append(wrap_lines(str(distinct[u]), 42) + [f"cosine {best[u]:.2f}"])
            row_colors.append("#c8e6c9" if distinct[u] in true_texts else "white")
        rows.append(cells)
        colors.append(row_colors)
    title = (f"Text: true annotation vs the 3 library annotations nearest to the embedding decoded from the true "
             f"brain (test split, {note})\nall {metrics['n_queries']} filled test slots: library top-1 "
             f"{metrics['library_top1']:.0%}, top-3 {metrics['library_top3']:.0%} (chance top-1 "
             f"{metrics['library_chance_top1']:.1%}); among the block's {metrics['n_candidates']} annotations top-1 "
             f"{metrics['top1']:.0%} (chance {metrics['chance_top1']:.1%}); cosine {metrics['cosine_mean']:.3f}")
    fig = table_figure(["stimulus TR", "true annotation", "retrieved #1", "retrieved #2", "retrieved #3"], rows,
                       [1.0, 3.6, 3.0, 3.0, 3.0], colors, title,
                       "green: the retrieved text is one of the TR's true annotations; several true annotations are "
                       "separated by '|' and retrieval takes the best of their decoded slots")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# fMRI


def _region_labels(manifest: Manifest) -> np.ndarray | None:
    entry = manifest.arrays.get("truth")
    if entry is None or not entry.path.is_file():
        return None
    with np.load(entry.path) as truth:
        if "region" not in truth.files or "region_names" not in truth.files:
            return None
        return truth["region_names"].astype(str)[truth["region"]]


def _fmri_summary(pred, reliable: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-voxel r over time (M.pearson_columns) and what the fMRI figure quotes of it."""
    r = M.pearson_columns(pred.fmri_pred, pred.fmri_true)
    best = [int(v) for v in np.argsort(-r, kind="stable")[: min(4, len(r))]]
    pooled = M.pearson_columns(pred.fmri_pred[:, reliable].reshape(-1, 1), pred.fmri_true[:, reliable].reshape(-1, 1))
    return r, {"r_mean": float(r.mean()), "r_median": float(np.median(r)),
               "r_mean_reliable": float(r[reliable].mean()) if reliable.any() else None,
               "pooled_r_reliable": float(pooled[0]) if reliable.any() else None,
               "n_reliable": int(reliable.sum()), "best_voxels": best, "best_r": [float(r[v]) for v in best]}


def _plot_fmri(pred, r, reliable, reliable_note: str, labels, tr: float, metrics: dict, path: Path) -> None:
    from matplotlib.colors import LogNorm

    best = metrics["best_voxels"]
    fig = new_figure(13, 7.5)
    grid = fig.add_gridspec(len(best), 2, width_ratios=(1.7, 1))
    seconds = pred.targets * tr
    for row, v in enumerate(best):
        ax = fig.add_subplot(grid[row, 0])
        ax.plot(seconds, pred.fmri_true[:, v], color="black", lw=1.2, label="true")
        ax.plot(seconds, pred.fmri_pred[:, v], color="tab:red", lw=1.2, label="predicted")
        region = f", {labels[v]}" if labels is not None else ""
        ax.set_title(f"voxel {v}{region}: r = {r[v]:.2f}", fontsize=9, loc="left")
        ax.set_ylabel("z")
        if row == 0:
            ax.legend(fontsize=8, loc="upper right", ncols=2)
        if row == len(best) - 1:
            ax.set_xlabel("time of the target fMRI TR (s)")
        else:
            ax.tick_params(labelbottom=False)
    ax = fig.add_subplot(grid[:, 1])
    x, y = pred.fmri_true[:, reliable].ravel(), pred.fmri_pred[:, reliable].ravel()
    if x.size:
        hb = ax.hexbin(x, y, gridsize=60, norm=LogNorm(), cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="values per bin")
        lo, hi = np.percentile(np.concatenate([x, y]), [0.1, 99.9])
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"{metrics['n_reliable']} reliable voxels ({reliable_note}) x {len(pred.targets)} test TRs\n"
                     f"pooled r = {metrics['pooled_r_reliable']:.3f}, mean voxel r = {metrics['r_mean_reliable']:.3f}",
                     fontsize=9)
    else:
        ax.set_title(f"no reliable voxels ({reliable_note})", fontsize=9)
    ax.set_xlabel("true fMRI (z)")
    ax.set_ylabel("predicted fMRI (z)")
    fig.suptitle(f"fMRI: predicted (stimulus -> brain) vs true over the test block; left: the 4 voxels with the "
                 f"highest test r (chosen on the test data)\nmean r over all {pred.fmri_true.shape[1]} voxels "
                 f"{metrics['r_mean']:.3f}, median {metrics['r_median']:.3f}", fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The stage


def plot_reconstructions(model_path: str | Path, manifest_path: str | Path, out_dir: str | Path,
                         n_examples: int = 6, audio_trs: int = 8, reliable_ceiling: float = M.RELIABLE_THRESHOLD,
                         device: str = "cpu", batch_size: int = 32) -> dict:
    """Plot what the model decodes from the true brain (and predicts of it) on the TEST split.

    Args:
        model_path: ``model.pt`` from the train stage.
        manifest_path: the dataset manifest it was trained on.
        out_dir: folder for ``video.png``, ``audio.png``, ``decoded.wav``, ``text.png``, ``fmri.png``
            (enabled modalities only; stale files of those names from an earlier run are removed).
        n_examples: test TRs shown in the video and text figures (evenly spaced).
        audio_trs: consecutive test TRs in the audio figure and ``decoded.wav`` (from the middle of the block).
        reliable_ceiling: voxels with a noise ceiling (evaluate.load_ceiling) at or above this are
            "reliable" (fmri scatter).

    Returns a dict of what was written and measured (``files``, ``video``, ``audio``, ``text``, ``fmri``;
    ``shown_trs`` are stimulus TRs, the decoded ones). Raises InputError naming the file when an input
    is missing or unusable; then nothing is written.
    """
    from giblet.devices import resolve_device
    from giblet.evaluate.load import predict
    from giblet.stimulus.audio import ENCODEC_SAMPLE_RATE, write_wav

    if n_examples < 1 or audio_trs < 1:
        raise ValueError("n_examples and audio_trs must be at least 1")
    out_dir, device = Path(out_dir), resolve_device(device)
    model, _, manifest, _ = load_checked(model_path, manifest_path, device)
    tr, shift = manifest.tr, manifest.split.shift_trs
    pred = predict(model, manifest, "test", batch_size=batch_size, device=device)  # .stimulus: at decode_index
    n, decoded, stimulus = len(pred.targets), pred.decoded, pred.stimulus
    stim_trs = pred.targets + shift + 1 + model.decode_index  # the stimulus TR of pred.stimulus (window stop + index)
    delay = -1 - model.decode_index
    note = f"decoded: the stimulus {delay} TRs before each window's last" if delay else "decoded: each window's last TR"
    result: dict = {"split": "test", "n_test_trs": n, "model": str(model_path), "manifest": str(manifest_path),
                    "decode_index": model.decode_index, "files": []}
    picks = evenly_spaced(np.arange(n), n_examples)

    with atomic_output_dir(out_dir) as tmp:
        if "frames" in decoded:
            metrics = {**frame_metrics(decoded["frames"], stimulus["frames"]),
                       **frame_identification(decoded["frames"], stimulus["frames"]),
                       "grid_identification": frame_grid_identification(decoded["frames"], stimulus["frames"])}
            _plot_video(decoded["frames"], stimulus["frames"], picks, stim_trs, tr, metrics, note, tmp / "video.png")
            metrics.pop("per_tr_r")
            result["video"] = {**metrics, "shown_trs": [int(stim_trs[j]) for j in picks]}
            result["files"].append("video.png")

        if "code_logits" in decoded:
            metrics = code_metrics(decoded["code_logits"], stimulus["codes"])
            length = min(audio_trs, n)
            start = (n - length) // 2
            true_codes = stimulus["codes"][start:start + length]
            decoded_codes = decoded["code_logits"][start:start + length].argmax(-1)
            wav, wav_true, wav_id = _decode_wavs(manifest, true_codes, decoded_codes, device)
            if wav is not None:
                write_wav(tmp / "decoded.wav", wav, ENCODEC_SAMPLE_RATE)
                result["files"].append("decoded.wav")
                audio_info = {"wav": "decoded.wav", "wav_seconds": len(wav) / ENCODEC_SAMPLE_RATE,
                              "wav_first_tr": int(stim_trs[start]), "wav_start_s": float(stim_trs[start] * tr),
                              "encodec_weights_id": wav_id}
                wav_note = (f"\nEnCodec {wav_id}: DEMO ONLY, a random decoder, so the sound carries no meaning"
                            if wav_id.startswith("demo-random") else f"\nEnCodec {wav_id}")
            else:
                audio_info = {"wav": None, "wav_skipped": wav_id}
                wav_note = "\n(no decoded.wav: the EnCodec weights of the codes could not be rebuilt here)"
            _plot_audio(true_codes, decoded_codes, wav, wav_true, ENCODEC_SAMPLE_RATE, int(stim_trs[start]), tr,
                        metrics, wav_note, note, tmp / "audio.png")
            result["audio"] = {**metrics, **audio_info,
                               "shown_trs": [int(stim_trs[start]), int(stim_trs[start + length - 1])]}
            result["files"].append("audio.png")

        if "text" in decoded:
            library_path, library = text_library(manifest)
            if library["index"].shape[0] <= int(stim_trs.max()):
                raise InputError(library_path, f"indexes {library['index'].shape[0]} TRs but the test split "
                                               f"needs stimulus TR {int(stim_trs.max())}")
            mask = stimulus["text_mask"]
            metrics = {**text_metrics(decoded["text"], stimulus["text"], mask),
                       **library_retrieval(decoded["text"], mask, stim_trs, library)}
            text_picks = evenly_spaced(np.nonzero(mask.any(1))[0], n_examples)
            _plot_text(decoded["text"], mask, library, text_picks, stim_trs, tr, metrics, note, tmp / "text.png")
            result["text"] = {**metrics, "library": str(library_path),
                              "shown_trs": [int(stim_trs[j]) for j in text_picks]}
            result["files"].append("text.png")

        result["decoded_test"] = {"file": DECODED_NAME, "keys": write_decoded(tmp / DECODED_NAME, stim_trs, decoded)}
        result["files"].append(DECODED_NAME)

        ceiling, source, _ = load_ceiling(manifest)
        reliable = np.ones(manifest.n_voxels, bool) if ceiling is None else M.reliable_voxels(ceiling, reliable_ceiling)
        reliable_note = "no noise ceiling: all voxels" if ceiling is None else f"{source} ceiling >= {reliable_ceiling:g}"
        r, metrics = _fmri_summary(pred, reliable)
        _plot_fmri(pred, r, reliable, reliable_note, _region_labels(manifest), tr, metrics, tmp / "fmri.png")
        result["fmri"] = {**metrics, "reliable": reliable_note}
        result["files"].append("fmri.png")

    for name in OUTPUT_NAMES:  # an earlier run's file that this run did not write would mislead
        if name not in result["files"] and (out_dir / name).exists():
            log.info("removing %s from an earlier run", out_dir / name)
            (out_dir / name).unlink()
    result = jsonable(result, 4)
    log.info("wrote %s to %s", ", ".join(result["files"]), out_dir)
    return result


__all__ = ["plot_reconstructions", "frame_identification", "library_retrieval", "text_library"]
