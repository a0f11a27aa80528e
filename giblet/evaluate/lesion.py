"""Virtual lesions (the ``lesion`` stage): zero one region's voxels of the TRUE brain and decode.

For every region, the test split is decoded three ways: intact, with the region's voxels set to 0
(``BrainAutoencoder.lesion``; 0 is each voxel's mean, the fMRI being z-scored), and, as a control,
with as many voxels drawn at random from OUTSIDE the region set to 0 (``n_controls`` draws). How much
each enabled modality's decoding degrades is measured against the intact brain:

- frames: ``frames_r`` (pixel correlation per TR, averaged; higher is better) and ``frames_mse``;
- frame features: ``frame_features_cosine`` (decoded vs true CLIP image embedding, mean over frames);
- codes: ``codes_accuracy`` (argmax of the logits == the true code);
- text: ``text_cosine`` (decoded vs true embedding at the filled slots).

These are decoding_metrics.frame_metrics' ``pixel_r_mean`` and ``mse``, decoding_metrics.code_metrics'
``accuracy_mean`` and decoding_metrics.text_metrics' ``cosine_mean``, against the true stimulus at the
TR the decoders reconstruct (the window's ``model.decode_index``, as in ``giblet.evaluate.load.predict``).

A region the decoder depends on degrades a modality more than its random control does.

Regions come from the demo's ``truth.npz`` (manifest array role ``truth``: ``region`` (V,) indexes
``region_names``; ``null`` is skipped) or, for real data, from ``regions = {name: mask.nii.gz}``, masks
on exactly the grid of the manifest's fMRI mask (same shape and affine: no resampling).
Writes ``out_json`` and ``out_png`` together or not at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from giblet.data.manifest import Manifest
from giblet.errors import InputError
from giblet.evaluate.decoding_metrics import code_metrics, frame_metrics, text_metrics
from giblet.evaluate.evaluate import load_checked
from giblet.evaluate.figures import new_figure, save_figure
from giblet.evaluate.load import predict
from giblet.files import jsonable, write_json
from giblet.fmri.nifti import load_mask, read_mask_nifti

log = logging.getLogger(__name__)

# metric -> (modality, label, higher is better)
METRICS = {"frames_r": ("frames", "frames: pixel r", True), "frames_mse": ("frames", "frames: MSE", False),
           "frame_features_cosine": ("frame_features", "frame features: cosine", True),
           "codes_accuracy": ("audio", "codes: accuracy", True), "text_cosine": ("text", "text: cosine", True)}
PLOTTED = ("frames_r", "frame_features_cosine", "codes_accuracy", "text_cosine")  # one panel each, all "higher is better"


# ---------------------------------------------------------------------------------------------
# Regions


def regions_from_truth(manifest: Manifest, manifest_path: str | Path) -> dict[str, np.ndarray]:
    """{name: bool (V,)} from the demo's truth.npz, without the ``null`` region."""
    entry = manifest.arrays.get("truth")
    if entry is None:
        raise InputError(manifest_path, "has no 'truth' array (only the demo has one): give the regions as "
                                        "{name: mask.nii.gz} on the grid of the manifest's mask")
    path = entry.path
    try:
        with np.load(path) as truth:
            region, names = np.asarray(truth["region"]), truth["region_names"].astype(str)
    except Exception as error:
        raise InputError(path, f"cannot read the region labels ({type(error).__name__}: {error})") from None
    if region.shape != (manifest.n_voxels,) or region.min() < 0 or region.max() >= len(names):
        raise InputError(path, f"region labels {region.shape} do not index {len(names)} region names for "
                               f"{manifest.n_voxels} voxels")
    return {str(name): region == i for i, name in enumerate(names) if name != "null" and (region == i).any()}


def regions_from_masks(manifest: Manifest, regions: dict[str, str | Path]) -> dict[str, np.ndarray]:
    """{name: bool (V,)} from NIfTI masks on the manifest mask's grid (InputError naming a file that is not)."""
    mask_path = manifest.arrays["mask"].path
    if not mask_path.is_file():
        raise InputError(mask_path, "the dataset's fMRI mask is missing")
    mask, mask_image = load_mask(mask_path)
    if int(mask.sum()) != manifest.n_voxels:
        raise InputError(mask_path, f"holds {int(mask.sum())} voxels, the manifest {manifest.n_voxels}")
    out = {}
    for name, path in regions.items():
        path = Path(path)
        data, image = read_mask_nifti(path, f"region mask '{name}' not found")
        if data.shape != mask.shape or not np.allclose(image.affine, mask_image.affine, atol=1e-4):
            raise InputError(path, f"region mask '{name}' has grid {data.shape} and affine "
                                   f"{np.round(image.affine, 3).tolist()}, the data mask {mask_path} has "
                                   f"{mask.shape} and {np.round(mask_image.affine, 3).tolist()}: resample the region "
                                   f"to the data mask's grid first")
        voxels = (data > 0)[mask]  # the mask's voxel order (C order), as the fMRI columns
        if not voxels.any():
            raise InputError(path, f"region mask '{name}' has no voxels inside the data mask {mask_path}")
        out[str(name)] = voxels
    if not out:
        raise ValueError("regions is empty")
    return out


# ---------------------------------------------------------------------------------------------
# Decoding and its metrics


def scores(decoded: dict, stimulus: dict) -> dict:
    """The lesion metrics (module doc) of decoded outputs against the true stimulus, via
    giblet.evaluate.decoding_metrics.

    ``decoded``: ``BrainAutoencoder.decode``'s outputs as numpy arrays; ``stimulus``: the true stimulus
    at the decoded TR (``predict().stimulus``). A modality with nothing to score gives NaN (None in the JSON).
    """
    out = {}
    if "frames" in decoded:
        frames = frame_metrics(decoded["frames"], stimulus["frames"])
        out.update(frames_r=frames["pixel_r_mean"], frames_mse=frames["mse"])
    if "frame_features" in decoded:
        out["frame_features_cosine"] = text_metrics(decoded["frame_features"],
                                                    stimulus["frame_features"])["cosine_mean"]
    if "code_logits" in decoded:
        out["codes_accuracy"] = code_metrics(decoded["code_logits"], stimulus["codes"])["accuracy_mean"]
    if "text" in decoded:
        out["text_cosine"] = text_metrics(decoded["text"], stimulus["text"], stimulus["text_mask"])["cosine_mean"]
    return {k: np.nan if v is None else v for k, v in out.items()}  # NaN: the lesion arithmetic stays defined


@torch.no_grad()
def decode_metrics(model, fmri: np.ndarray, stimulus: dict, voxel_mask: np.ndarray | None,
                   batch_size: int = 32) -> dict:
    """Decode the test brain ``fmri`` (N, V), or (N, W, V) windows for latent decoding, with the ``voxel_mask`` voxels zeroed (none if None) and
    :func:`scores` it against ``stimulus`` (the true stimulus at the decoded TR)."""
    device = next(model.parameters()).device
    mask = None if voxel_mask is None else torch.from_numpy(np.asarray(voxel_mask, bool)).to(device)
    decoded: dict[str, list] = {}
    for start in range(0, len(fmri), batch_size):
        batch = torch.from_numpy(np.asarray(fmri[start:start + batch_size], np.float32)).to(device)
        for key, value in (model.decode(batch) if mask is None else model.lesion(batch, mask)).items():
            decoded.setdefault(key, []).append(value.float().cpu().numpy())
    return scores({k: np.concatenate(v) for k, v in decoded.items()}, stimulus)


# ---------------------------------------------------------------------------------------------
# The figure


def _get(d: dict, *keys):
    for key in keys:
        d = d[key]
    return d


def _plot(result: dict, path: Path) -> None:
    metrics = [m for m in PLOTTED if result["intact"].get(m) is not None]  # None: not measurable (no data)
    names = list(result["regions"])
    if not metrics:
        raise ValueError("no decodable modality to plot")
    fig = new_figure(max(4.2 * len(metrics), 6.0), 4.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    x = np.arange(len(names))
    width = 0.38
    for ax, metric in zip(axes, metrics):
        value = lambda n, *keys: np.nan if (v := _get(result["regions"][n], *keys, metric)) is None else v  # noqa: E731
        lesioned = [value(n, "change") for n in names]
        control = [value(n, "control_change") for n in names]
        spread = [value(n, "control", "sd") for n in names]
        bars = ax.bar(x - width / 2, lesioned, width, color="tab:red", label="region zeroed")
        ax.bar(x + width / 2, control, width, yerr=spread, capsize=3, color="0.65",
               label=f"random voxels outside it (mean ± sd, {result['n_controls']} draws)")
        for bar, value in zip(bars, lesioned):
            ax.annotate(f"{value:+.2g}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                        va="top" if value < 0 else "bottom", fontsize=8, xytext=(0, -2 if value < 0 else 2),
                        textcoords="offset points")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, [f"{n}\n({result['regions'][n]['n_voxels']} vox)" for n in names], fontsize=9)
        ax.set_ylabel(f"change in {METRICS[metric][1].split(': ')[1]} (lesioned − intact)")
        ax.set_title(f"{METRICS[metric][1]} (intact {result['intact'][metric]:.3f})", fontsize=10)
        ax.margins(y=0.15)
        if not names:  # real data without evaluate.lesion_regions: nothing was lesioned
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no regions given\n(evaluate.lesion_regions)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(f"Virtual lesions: decoding from the true brain with one region's voxels set to 0 "
                 f"(test split, {result['n_samples']} TRs)\nbelow 0 = worse than intact; the grey bar is the same "
                 f"number of random voxels from outside the region", fontsize=10)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The stage


def lesion(model_path: str | Path, manifest_path: str | Path, out_json: str | Path, out_png: str | Path,
           regions: dict[str, str | Path] | None = None, n_controls: int = 5, seed: int = 0,
           device: str = "cpu", batch_size: int = 32, regions_required: bool = True) -> dict:
    """Lesion each region in turn and measure how each modality's decoding degrades on the test split.

    Args:
        model_path, manifest_path: ``model.pt`` and the manifest it was trained on.
        out_json, out_png: the results (see the module doc) and their grouped bar chart.
        regions: ``{name: NIfTI mask}`` on the manifest mask's grid; None takes the demo's truth.npz.
        regions_required: without truth.npz and ``regions`` (real data and no masks), raise an
            InputError (True) or lesion nothing and report the intact decoding only (False).
        n_controls: random control lesions per region (equal size, voxels outside the region).
        seed: of the control draws.

    Returns the dict written to ``out_json``: ``intact`` metrics, and per region ``n_voxels``,
    ``lesion`` metrics, ``control`` (``mean``/``sd`` over the draws), ``change`` (lesion − intact),
    ``control_change`` (control mean − intact) and ``excess`` (change − control_change).
    Raises InputError naming the file on bad input; then neither output is written.
    """
    from giblet.devices import resolve_device

    if n_controls < 1:
        raise ValueError("n_controls must be at least 1")
    out_json, out_png, device = Path(out_json), Path(out_png), resolve_device(device)
    model, _, manifest, _ = load_checked(model_path, manifest_path, device)
    if regions is None and "truth" not in manifest.arrays and not regions_required:
        log.warning("no lesion regions (set evaluate.lesion_regions to {name: mask.nii.gz}): only the intact "
                    "decoding is reported")
        masks, source = {}, None
    elif regions is None:
        masks, source = regions_from_truth(manifest, manifest_path), "truth.npz"
    else:
        masks, source = regions_from_masks(manifest, regions), {k: str(v) for k, v in regions.items()}
    # The true stimulus at the TR the decoders reconstruct (model.decode_index), and the intact decoding.
    pred = predict(model, manifest, "test", batch_size=batch_size, device=device)
    n_voxels = manifest.n_voxels
    rng = np.random.default_rng(seed)

    intact = scores(pred.decoded, pred.stimulus)
    result = {"split": "test", "n_samples": int(len(pred.targets)), "model": str(model_path),
              "manifest": str(manifest_path), "decode_index": model.decode_index,
              "region_source": source, "n_controls": n_controls, "seed": seed,
              "metrics": {k: {"modality": v[0], "higher_is_better": v[2]} for k, v in METRICS.items()
                          if k in intact},
              "intact": intact, "regions": {}}
    for name, voxels in masks.items():
        outside = np.flatnonzero(~voxels)
        size = int(voxels.sum())
        control_size = min(size, len(outside))
        lesioned = decode_metrics(model, pred.brain, pred.stimulus, voxels, batch_size)
        draws = []
        for _ in range(n_controls):
            control = np.zeros(n_voxels, bool)
            control[rng.choice(outside, control_size, replace=False)] = True
            draws.append(decode_metrics(model, pred.brain, pred.stimulus, control, batch_size))
        mean = {k: float(np.mean([d[k] for d in draws])) for k in intact}
        sd = {k: float(np.std([d[k] for d in draws])) for k in intact}
        change = {k: lesioned[k] - intact[k] for k in intact}
        control_change = {k: mean[k] - intact[k] for k in intact}
        result["regions"][name] = {
            "n_voxels": size, "control_n_voxels": control_size, "lesion": lesioned,
            "control": {"mean": mean, "sd": sd}, "change": change, "control_change": control_change,
            "excess": {k: change[k] - control_change[k] for k in intact}}
        log.info("lesion %s (%d voxels): %s", name, size,
                 ", ".join(f"{k} {change[k]:+.4f} (control {control_change[k]:+.4f})" for k in intact))
    result = jsonable(result, 6)

    tmp_json = out_json.with_name(f".{out_json.name}.tmp-{os.getpid()}")
    tmp_png = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}")
    try:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        _plot(result, tmp_png)
        write_json(tmp_json, result)
        os.replace(tmp_png, out_png)
        os.replace(tmp_json, out_json)
    finally:
        tmp_png.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    log.info("wrote %s and %s", out_json, out_png)
    return result


__all__ = ["lesion", "decode_metrics", "scores", "regions_from_masks", "regions_from_truth"]
