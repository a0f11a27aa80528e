"""What the decoder half makes of the TRUE brain on the test split (the ``plot_reconstructions`` stage).

``plot_reconstructions`` writes into one folder, for the enabled modalities only:

- ``video.png``   true frame vs the frame decoded from the brain, for evenly spaced test TRs;
- ``audio.png``   true EnCodec codes vs the decoded argmax codes for a stretch of consecutive test
  TRs, and spectrograms of both decoded to sound;
- ``decoded.wav`` the decoded argmax codes of that stretch as 24 kHz audio, decoded by the SAME EnCodec
  weights the codes' sidecar records (skipped, with a warning and a note in the result, when those
  weights cannot be rebuilt here);
- ``text.png``    true annotation vs the 3 library annotations nearest to the decoded embedding;
- ``fmri.png``    the encoder half: predicted vs true time courses of the 4 best voxels and predicted vs
  true values of all reliable voxels (noise ceiling >= ``reliable_ceiling``).

Every number a caption may quote comes back in the returned dict. The files appear together, or
not at all (giblet.files.atomic_output_dir). The helpers here (loading, correlations, figure saving)
are shared with giblet.evaluate.lesion.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np

from giblet.errors import InputError
from giblet.files import atomic_output_dir, read_sidecar, sha256_file

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("video.png", "audio.png", "decoded.wav", "text.png", "fmri.png")
DPI = 110


# ---------------------------------------------------------------------------------------------
# Shared helpers


def load_manifest_checked(manifest_path: str | Path) -> dict:
    """The manifest as a dict; InputError naming it when it is missing or not JSON."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise InputError(manifest_path, "no such manifest: run the assemble_dataset stage first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(manifest_path, f"cannot be read as a dataset manifest ({error})") from None
    if not isinstance(manifest, dict) or "arrays" not in manifest or "split" not in manifest:
        raise InputError(manifest_path, "is not a giblet dataset manifest (no 'arrays' or 'split')")
    return manifest


def load_model_and_manifest(model_path: str | Path, manifest_path: str | Path, device: str = "cpu",
                            split: str = "test"):
    """(model in eval mode, model.pt's metadata, manifest), checked against each other.

    Raises InputError naming the model file when it was trained on a dataset of other shapes, and
    naming the manifest when it has no ``split`` block.
    """
    from giblet.devices import resolve_device
    from giblet.evaluate.load import load_model

    manifest = load_manifest_checked(manifest_path)
    model, info = load_model(model_path, resolve_device(device))
    if model.n_voxels != manifest.get("n_voxels") or model.modalities != manifest.get("modalities"):
        raise InputError(model_path, f"was trained on another dataset ({model.n_voxels} voxels, modalities "
                                     f"{model.modalities}) than {manifest_path} ({manifest.get('n_voxels')} "
                                     f"voxels, modalities {manifest.get('modalities')})")
    if split not in manifest["split"].get("ranges", {}):
        raise InputError(manifest_path, f"has no '{split}' split block")
    return model, info, manifest


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``a`` with the same column of ``b`` (N, V) -> (V,); 0 where constant."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, np.float64) - np.mean(b, axis=0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / denom
    return np.where(denom > 0, r, 0.0)


def pearson_rows_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of every row of ``a`` (N, P) with every row of ``b`` (M, P): (N, M); 0 for constant rows."""
    def z(x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        x = x - x.mean(1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return (z(a).astype(np.float64) @ z(b).astype(np.float64).T)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot state, so safe in any process)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, path: Path) -> None:
    """Save ``fig`` as PNG to ``path`` (the caller decides whether ``path`` is a temporary name)."""
    fig.savefig(path, format="png", dpi=DPI)


def save_figure_atomic(fig, path: str | Path) -> Path:
    """Save ``fig`` to a temporary name next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_figure(fig, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _round(x, digits: int = 4):
    """Plain floats for JSON (nan -> None)."""
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else round(float(x), digits)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------------------
# Video


def frame_metrics(decoded: np.ndarray, true_uint8: np.ndarray) -> dict:
    """Decoded frames (N, F, H, W, 3) in [0, 1] vs the true uint8 frames.

    ``pixel_r``: mean over TRs of the correlation over all pixels of the TR's frames;
    ``pixel_r_other_trs``: the same against the OTHER test TRs' frames (what a decoder that ignores
    the brain gets, from the shared background); ``identification``: fraction of TRs whose decoded
    frames correlate best with their own true frames (chance 1/N); ``mse`` on [0, 1].
    """
    true = true_uint8.astype(np.float32) / 255.0
    r = pearson_rows_matrix(decoded, true)
    n = len(r)
    off = (r.sum() - np.trace(r)) / (n * (n - 1)) if n > 1 else float("nan")
    return {"pixel_r": float(np.mean(np.diag(r))), "pixel_r_other_trs": float(off),
            "identification": float(np.mean(np.argmax(r, axis=1) == np.arange(n))),
            "identification_chance": 1.0 / n, "mse": float(np.mean((decoded - true) ** 2)),
            "per_tr_r": np.diag(r)}


def _plot_video(pred, picks: np.ndarray, tr: float, shift: int, metrics: dict, path: Path) -> None:
    frames, true = pred.decoded["frames"], pred.stimulus["frames"]
    n_frames, height, width = frames.shape[1:4]
    middle = n_frames // 2
    n = len(picks)
    panel_w = 2.4
    fig = new_figure(max(6.0, panel_w * n), 2 * panel_w * height / width + 1.3)
    axes = fig.subplots(2, n, squeeze=False)
    for col, j in enumerate(picks):
        stim_tr = int(pred.targets[j]) + shift
        for row, (image, label) in enumerate(((true[j, middle], "true frame"),
                                              (frames[j, middle], "decoded from brain"))):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=10)
        axes[0, col].set_title(f"TR {stim_tr} ({stim_tr * tr:.0f} s)", fontsize=9)
        axes[1, col].set_xlabel(f"pixel r = {metrics['per_tr_r'][j]:.2f}", fontsize=9)
    fig.suptitle(f"Video: frame {middle + 1} of {n_frames} per TR, true vs decoded from the true brain (test split)\n"
                 f"mean pixel r {metrics['pixel_r']:.3f} (vs other TRs' frames {metrics['pixel_r_other_trs']:.3f}); "
                 f"identification {metrics['identification']:.0%} (chance {metrics['identification_chance']:.0%})",
                 fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Audio


def code_metrics(logits: np.ndarray, codes: np.ndarray) -> dict:
    """Argmax accuracy of code logits (N, n_q, Fa, C) against the true codes (N, n_q, Fa).

    ``majority_accuracy``: predicting each codebook's most frequent code in these true codes (an
    optimistic baseline that ignores the brain); ``chance``: 1 / C.
    """
    hits = logits.argmax(-1) == codes
    per_codebook = hits.mean(axis=(0, 2))
    majority = [np.mean(codes[:, q] == np.bincount(codes[:, q].ravel()).argmax()) for q in range(codes.shape[1])]
    return {"accuracy": float(hits.mean()), "accuracy_per_codebook": per_codebook.tolist(),
            "majority_accuracy": float(np.mean(majority)), "chance": 1.0 / logits.shape[-1]}


def _encodec_for(codes_npy: Path, device: str):
    """Rebuild the EnCodec model that made ``codes_npy`` from its sidecar. Raises on any problem."""
    from giblet.stimulus.audio import load_audio, load_encodec

    sidecar = read_sidecar(codes_npy)
    record, params = sidecar["models"]["encodec"], sidecar.get("parameters", {})
    for key in ("weights", "bandwidth", "seed", "weights_id"):
        if key not in record:
            raise InputError(codes_npy.with_suffix(".json"), f"sidecar lacks models.encodec.{key}")
    seeding_audio = None
    if record["weights"] == "demo-random":
        movie = Path(sidecar["sources"]["movie"]["path"])
        if not movie.is_file() or sha256_file(movie) != sidecar["sources"]["movie"]["sha256"]:
            raise InputError(movie, f"the demo-random codebooks of {codes_npy} are seeded from this movie, "
                                    "which is missing or changed since encoding")
        seeding_audio = load_audio(movie)
    model, weights_id = load_encodec(record["weights"], record["bandwidth"], device, record["seed"],
                                     seeding_audio, weights_sha256=params.get("weights_sha256"))
    if weights_id != record["weights_id"]:
        raise InputError(codes_npy, f"was encoded with EnCodec weights {record['weights_id']!r} "
                                    f"but the weights now load as {weights_id!r}")
    return model, weights_id


def _decode_wavs(manifest: dict, true_codes: np.ndarray, decoded_codes: np.ndarray, device: str):
    """(wav from decoded codes, wav from true codes, weights id) or (None, None, reason)."""
    from giblet.stimulus.audio import decode

    codes_npy = Path(manifest["arrays"]["audio_codes"]["path"])
    try:
        model, weights_id = _encodec_for(codes_npy, device)
    except Exception as error:  # any failure to rebuild the weights: no wav, but the figures still come
        reason = f"EnCodec weights for {codes_npy} could not be rebuilt: {type(error).__name__}: {error}"
        log.warning("skipping decoded.wav: %s", reason)
        return None, None, reason
    return decode(model, decoded_codes, device), decode(model, true_codes, device), weights_id


def _plot_audio(true_codes, decoded_codes, wav, wav_true, sample_rate: int, first_tr: int, tr: float,
                metrics: dict, wav_note: str, path: Path) -> None:
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
    fig.suptitle(f"Audio: EnCodec codes, true vs decoded from the true brain, {n_trs} consecutive test TRs\n"
                 f"test accuracy {metrics['accuracy']:.1%} (per codebook {per_q}; most-frequent-code baseline "
                 f"{metrics['majority_accuracy']:.1%}, chance {metrics['chance']:.2%}){wav_note}", fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Text


def text_library(manifest: dict) -> tuple[Path, dict]:
    """The annotation library next to the manifest's text array (``text_annotations.npz``)."""
    from giblet.stimulus.text import output_paths

    path = output_paths(manifest["arrays"]["text"]["path"])["annotations"]
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
    scores = unit_rows(queries) @ unit_rows(library["embeddings"]).T  # (M, A)
    best = np.full((len(texts), len(queries)), -np.inf)
    np.maximum.at(best, inverse, scores.T)
    return best.T, texts


def text_metrics(decoded: np.ndarray, true: np.ndarray, mask: np.ndarray, stim_trs: np.ndarray,
                 library: dict) -> dict:
    """Decoded text embeddings (N, k, d) vs the true ones at the filled slots (``mask``).

    ``cosine``: mean cosine to the true embedding of the same slot; ``cosine_other_trs``: to the
    filled slots of the other TRs; ``top1``/``top3``: fraction of filled slots whose true text is among
    the 1/3 distinct library texts nearest to the decoded embedding (``top1_chance`` = 1/distinct texts).
    """
    n_idx, slot = np.nonzero(mask)
    if len(n_idx) == 0:
        return {"n_slots": 0, "cosine": float("nan"), "cosine_other_trs": float("nan"), "top1": float("nan"),
                "top3": float("nan"), "top1_chance": float("nan")}
    q, t = unit_rows(decoded[n_idx, slot]), unit_rows(true[n_idx, slot])
    cos = q @ t.T
    other = n_idx[:, None] != n_idx[None, :]
    scores, texts = _text_scores(decoded[n_idx, slot], library)
    rows = library["index"][stim_trs[n_idx], slot]
    true_text = library["texts"].astype(str)[rows]
    true_u = np.searchsorted(texts, true_text)
    rank = (scores > scores[np.arange(len(true_u)), true_u][:, None]).sum(1)  # 0 = best
    return {"n_slots": int(len(n_idx)), "cosine": float(np.mean(np.diag(cos))),
            "cosine_other_trs": float(cos[other].mean()) if other.any() else float("nan"),
            "top1": float(np.mean(rank < 1)), "top3": float(np.mean(rank < 3)), "top1_chance": 1.0 / len(texts)}


def _wrap(text: str, width: int, max_lines: int = 4) -> list[str]:
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    return lines


def _plot_text(pred, library: dict, picks: np.ndarray, shift: int, tr: float, metrics: dict, path: Path) -> None:
    from matplotlib.patches import Rectangle

    decoded, mask = pred.decoded["text"], pred.stimulus["text_mask"]
    texts = library["texts"].astype(str)
    header = ["stimulus TR", "true annotation", "retrieved #1", "retrieved #2", "retrieved #3"]
    widths_in = [1.0, 3.6, 3.0, 3.0, 3.0]
    wrap_chars = [12, 50, 42, 42, 42]
    rows, colors = [], []
    for j in picks:
        stim_tr = int(pred.targets[j]) + shift
        slots = np.nonzero(mask[j])[0]
        true_texts = [texts[library["index"][stim_tr, s]] for s in slots]
        scores, distinct = _text_scores(decoded[j, slots], library)
        best = scores.max(0)
        order = np.argsort(-best, kind="stable")[:3]
        cells = [[f"{stim_tr}", f"({stim_tr * tr:.0f} s)"], _wrap(" | ".join(true_texts), wrap_chars[1])]
        row_colors = ["white", "#f2f2f2"]
        for c, u in enumerate(order):
            cells.append(_wrap(str(distinct[u]), wrap_chars[2 + c]) + [f"cosine {best[u]:.2f}"])
            row_colors.append("#c8e6c9" if distinct[u] in true_texts else "white")
        rows.append(cells)
        colors.append(row_colors)
    line_h, pad = 0.19, 0.14
    heights = [line_h + pad] + [max(len(c) for c in r) * line_h + pad for r in rows]
    total_w, table_h = sum(widths_in), sum(heights)
    title_h, note_h = 0.75, 0.35
    fig = new_figure(total_w + 0.3, table_h + title_h + note_h)
    fig.set_layout_engine(None)
    ax = fig.add_axes((0.15 / (total_w + 0.3), note_h / (table_h + title_h + note_h),
                       total_w / (total_w + 0.3), table_h / (table_h + title_h + note_h)))
    ax.set_xlim(0, total_w)
    ax.set_ylim(table_h, 0)
    ax.axis("off")
    y = 0.0
    for r, (cells, h) in enumerate(zip([[[h] for h in header]] + rows, heights)):
        x = 0.0
        for c, (lines, w) in enumerate(zip(cells, widths_in)):
            face = "#d0d7e5" if r == 0 else colors[r - 1][c]
            ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor="#888888", lw=0.6, clip_on=False))
            ax.text(x + 0.06, y + pad / 2, "\n".join(lines), va="top", ha="left", fontsize=9,
                    fontweight="bold" if r == 0 else "normal", linespacing=1.15)
            x += w
        y += h
    fig.suptitle(f"Text: true annotation vs the 3 nearest library annotations to the embedding decoded from "
                 f"the true brain (test split)\nall {metrics['n_slots']} filled test slots: top-1 "
                 f"{metrics['top1']:.0%}, top-3 {metrics['top3']:.0%} (chance top-1 {metrics['top1_chance']:.1%}); "
                 f"cosine to the true embedding {metrics['cosine']:.3f} (to other TRs' {metrics['cosine_other_trs']:.3f})",
                 fontsize=10, y=1 - 0.08 / (table_h + title_h + note_h))
    fig.text(0.01, 0.1 * note_h / (table_h + title_h + note_h),
             "green: the retrieved text is one of the TR's true annotations; several true annotations are separated "
             "by '|' and retrieval takes the best of their decoded slots", fontsize=8, color="#444444")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# fMRI


def reliable_voxels(manifest: dict, threshold: float) -> tuple[np.ndarray | None, str]:
    """Bool (V,) of voxels whose group noise ceiling is >= ``threshold`` (None without a ceiling file)."""
    entry = manifest["arrays"].get("ceiling")
    if entry is None:
        return None, "no noise ceiling in the manifest: all voxels"
    path = Path(entry["path"])
    try:
        with np.load(path) as data:
            ceiling = np.asarray(data["group"], np.float64)
    except Exception as error:
        raise InputError(path, f"cannot be read as a noise-ceiling file ({type(error).__name__}: {error})") from None
    if ceiling.shape != (manifest["n_voxels"],):
        raise InputError(path, f"holds {ceiling.shape} ceilings for {manifest['n_voxels']} voxels")
    return ceiling >= threshold, f"group noise ceiling >= {threshold:g}"


def _region_labels(manifest: dict) -> np.ndarray | None:
    entry = manifest["arrays"].get("truth")
    if entry is None or not Path(entry["path"]).is_file():
        return None
    with np.load(entry["path"]) as truth:
        if "region" not in truth.files or "region_names" not in truth.files:
            return None
        return truth["region_names"].astype(str)[truth["region"]]


def _plot_fmri(pred, r: np.ndarray, reliable: np.ndarray, reliable_note: str, labels, tr: float,
               metrics: dict, path: Path) -> None:
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
    ax.set_xlabel("true fMRI (z)")
    ax.set_ylabel("predicted fMRI (z)")
    ax.set_title(f"{metrics['n_reliable']} reliable voxels ({reliable_note}) x {len(pred.targets)} test TRs\n"
                 f"pooled r = {metrics['pooled_r_reliable']:.3f}, mean voxel r = {metrics['r_mean_reliable']:.3f}",
                 fontsize=9)
    fig.suptitle(f"fMRI: predicted (stimulus -> brain) vs true over the test block; left: the 4 voxels with the "
                 f"highest test r (chosen on the test data)\nmean r over all {pred.fmri_true.shape[1]} voxels "
                 f"{metrics['r_mean']:.3f}, median {metrics['r_median']:.3f}", fontsize=10)
    save_figure(fig, path)


def fmri_metrics(pred, reliable: np.ndarray) -> tuple[np.ndarray, dict]:
    r = pearson_columns(pred.fmri_pred, pred.fmri_true)
    best = [int(v) for v in np.argsort(-r, kind="stable")[: min(4, len(r))]]
    pooled = pearson_columns(pred.fmri_pred[:, reliable].reshape(-1, 1), pred.fmri_true[:, reliable].reshape(-1, 1))
    return r, {"r_mean": float(r.mean()), "r_median": float(np.median(r)),
               "r_mean_reliable": float(r[reliable].mean()) if reliable.any() else float("nan"),
               "pooled_r_reliable": float(pooled[0]) if reliable.any() else float("nan"),
               "n_reliable": int(reliable.sum()), "best_voxels": best, "best_r": [float(r[v]) for v in best]}


# ---------------------------------------------------------------------------------------------
# The stage


def _evenly_spaced(candidates: np.ndarray, n: int) -> np.ndarray:
    if len(candidates) <= n:
        return np.asarray(candidates)
    return np.asarray(candidates)[np.round(np.linspace(0, len(candidates) - 1, n)).astype(int)]


def plot_reconstructions(model_path: str | Path, manifest_path: str | Path, out_dir: str | Path,
                         n_examples: int = 6, audio_trs: int = 8, reliable_ceiling: float = 0.3,
                         device: str = "cpu", batch_size: int = 32) -> dict:
    """Plot what the model decodes from the true brain (and predicts of it) on the TEST split.

    Args:
        model_path: ``model.pt`` from the train stage.
        manifest_path: the dataset manifest it was trained on.
        out_dir: folder for ``video.png``, ``audio.png``, ``decoded.wav``, ``text.png``, ``fmri.png``
            (enabled modalities only; stale files of those names from an earlier run are removed).
        n_examples: test TRs shown in the video and text figures (evenly spaced).
        audio_trs: consecutive test TRs in the audio figure and ``decoded.wav`` (from the middle of the block).
        reliable_ceiling: voxels with a group noise ceiling at or above this are "reliable" (fmri scatter).

    Returns a dict of what was written and measured (``files``, ``video``, ``audio``, ``text``, ``fmri``).
    Raises InputError naming the file when an input is missing or unusable; then nothing is written.
    """
    from giblet.evaluate.load import predict
    from giblet.stimulus.audio import ENCODEC_SAMPLE_RATE, write_wav

    if n_examples < 1 or audio_trs < 1:
        raise ValueError("n_examples and audio_trs must be at least 1")
    from giblet.devices import resolve_device

    out_dir, device = Path(out_dir), resolve_device(device)
    model, _, manifest = load_model_and_manifest(model_path, manifest_path, device)
    tr, shift = float(manifest["tr"]), int(manifest["split"].get("shift_trs", 0))
    pred = predict(model, manifest, "test", batch_size=batch_size, device=device)
    n = len(pred.targets)
    stim_trs = pred.targets + shift
    result: dict = {"split": "test", "n_test_trs": n, "model": str(model_path), "manifest": str(manifest_path),
                    "files": []}
    picks = _evenly_spaced(np.arange(n), n_examples)

    with atomic_output_dir(out_dir) as tmp:
        if "frames" in pred.decoded:
            metrics = frame_metrics(pred.decoded["frames"], pred.stimulus["frames"])
            _plot_video(pred, picks, tr, shift, metrics, tmp / "video.png")
            metrics.pop("per_tr_r")
            result["video"] = {**metrics, "shown_trs": [int(stim_trs[j]) for j in picks]}
            result["files"].append("video.png")

        if "code_logits" in pred.decoded:
            metrics = code_metrics(pred.decoded["code_logits"], pred.stimulus["codes"])
            length = min(audio_trs, n)
            start = (n - length) // 2
            true_codes = pred.stimulus["codes"][start:start + length]
            decoded_codes = pred.decoded["code_logits"][start:start + length].argmax(-1)
            wav, wav_true, note = _decode_wavs(manifest, true_codes, decoded_codes, device)
            if wav is not None:
                write_wav(tmp / "decoded.wav", wav, ENCODEC_SAMPLE_RATE)
                result["files"].append("decoded.wav")
                audio_info = {"wav": "decoded.wav", "wav_seconds": len(wav) / ENCODEC_SAMPLE_RATE,
                              "encodec_weights_id": note}
                wav_note = (f"\nEnCodec {note}: DEMO ONLY, a random decoder, so the sound carries no meaning"
                            if note.startswith("demo-random") else f"\nEnCodec {note}")
            else:
                audio_info = {"wav": None, "wav_skipped": note}
                wav_note = "\n(no decoded.wav: the EnCodec weights of the codes could not be rebuilt here)"
            _plot_audio(true_codes, decoded_codes, wav, wav_true, ENCODEC_SAMPLE_RATE, int(stim_trs[start]), tr,
                        metrics, wav_note, tmp / "audio.png")
            result["audio"] = {**metrics, **audio_info, "shown_trs": [int(stim_trs[start]),
                                                                      int(stim_trs[start + length - 1])]}
            result["files"].append("audio.png")

        if "text" in pred.decoded:
            library_path, library = text_library(manifest)
            if library["index"].shape[0] <= int(stim_trs.max()):
                raise InputError(library_path, f"indexes {library['index'].shape[0]} TRs but the test split "
                                               f"needs stimulus TR {int(stim_trs.max())}")
            mask = pred.stimulus["text_mask"]
            metrics = text_metrics(pred.decoded["text"], pred.stimulus["text"], mask, stim_trs, library)
            annotated = np.nonzero(mask.any(1))[0]
            text_picks = _evenly_spaced(annotated, n_examples)
            _plot_text(pred, library, text_picks, shift, tr, metrics, tmp / "text.png")
            result["text"] = {**metrics, "library": str(library_path),
                              "shown_trs": [int(stim_trs[j]) for j in text_picks]}
            result["files"].append("text.png")

        reliable, reliable_note = reliable_voxels(manifest, reliable_ceiling)
        if reliable is None:
            reliable = np.ones(pred.fmri_true.shape[1], bool)
        r, metrics = fmri_metrics(pred, reliable)
        _plot_fmri(pred, r, reliable, reliable_note, _region_labels(manifest), tr, metrics, tmp / "fmri.png")
        result["fmri"] = {**metrics, "reliable": reliable_note}
        result["files"].append("fmri.png")

    for name in OUTPUT_NAMES:  # an earlier run's file that this run did not write would mislead
        if name not in result["files"] and (out_dir / name).exists():
            log.info("removing %s from an earlier run", out_dir / name)
            (out_dir / name).unlink()
    result = _round(result)
    log.info("wrote %s to %s", ", ".join(result["files"]), out_dir)
    return result


__all__ = ["plot_reconstructions", "frame_metrics", "code_metrics", "text_metrics", "fmri_metrics",
           "load_model_and_manifest", "pearson_columns", "save_figure_atomic"]
