"""The ``evaluate`` stage: score a trained model on the held-out TEST block only.

Writes into ``out_dir`` (atomically: all files or none):

- ``metrics.json``: encoding (stimulus -> brain) accuracy as per-voxel Pearson r over time
  (mean over all and over reliable voxels), the fraction of the noise ceiling (the exact one from
  the demo's ``truth.npz`` when the manifest has it, else the ISC estimate from ``ceiling.npz``),
  timepoint identification with its chance levels, a circular-shift null with a p-value; decoding
  (brain -> stimulus) per modality; and what was evaluated (model, manifest, split range);
- ``r_map.nii.gz`` (or ``r_map_name``: the pipeline names it BIDS-style,
  ``space-<label>_desc-modelr_stat.nii.gz``): the per-voxel r on the mask's grid;
- ``r_map.png``: a glass-brain picture of it, thresholded at the null's 95th percentile.

See :mod:`giblet.evaluate.metrics` (encoding) and :mod:`giblet.evaluate.decoding_metrics` (decoding)
for every definition.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.data.manifest import Manifest, read_manifest
from giblet.errors import InputError
from giblet.evaluate import metrics as M
from giblet.evaluate.brain_maps import plot_r_map, r_map_image
from giblet.evaluate.ceiling import by_region, load_ceiling, realised_ceiling
from giblet.evaluate.decoding_identification import decoded_descriptors, identification_scores, stimulus_descriptors
from giblet.evaluate.decoding_metrics import code_metrics, frame_metrics, text_metrics
from giblet.evaluate.load import predict
from giblet.evaluate.oracle import oracle_predict
from giblet.files import atomic_output_dir, jsonable, sha256_file, write_json
from giblet.model.model_file import load_model

log = logging.getLogger(__name__)

METRICS_FORMAT = "giblet.evaluate/1"
SPLIT = "test"


def _test_range(manifest: Manifest, path: Path) -> tuple[int, int]:
    ranges = manifest.split.ranges
    if SPLIT not in ranges or ranges[SPLIT][1] - ranges[SPLIT][0] < 1:
        raise InputError(path, f"has no test block (split blocks: {sorted(ranges)}); evaluation uses only the "
                               "held-out test block: set split.fractions.test > 0 (or split.ranges.test) and rerun")
    start, stop = ranges[SPLIT]
    return int(start), int(stop)


def _check_model(saved: dict, manifest: Manifest, model_path: Path, manifest_path: Path) -> None:
    config = saved["model_config"]
    if int(config["n_voxels"]) != int(manifest.n_voxels):
        raise InputError(model_path, f"the model has {config['n_voxels']} voxels but {manifest_path} has "
                                     f"{manifest.n_voxels}: it was trained on other data")
    if config["modalities"] != manifest.modalities:
        raise InputError(model_path, f"the model's modalities {config['modalities']} differ from those of "
                                     f"{manifest_path} ({manifest.modalities})")
    if int(config["lag_trs"]) < int(manifest.lag_trs):
        raise InputError(model_path, f"the model's lag window ({config['lag_trs']} TRs) is shorter than "
                                     f"{manifest_path}'s ({manifest.lag_trs} TRs)")


def load_checked(model_path: str | Path, manifest_path: str | Path, device: str = "cpu"):
    """What every evaluation stage starts from: (model in eval mode, model.pt's metadata, manifest,
    the test block's [start, stop) fMRI TRs), checked against each other.

    Raises InputError naming the file: the manifest is missing, unreadable or has no test block; the
    model file is missing, corrupt or not a giblet model; the model does not fit the manifest (number
    of voxels, modalities, lag).
    """
    model_path, manifest_path = Path(model_path), Path(manifest_path)
    manifest = read_manifest(manifest_path)
    test_range = _test_range(manifest, manifest_path)
    model, saved = load_model(model_path, device)
    _check_model(saved, manifest, model_path, manifest_path)
    return model, saved, manifest, test_range


def oracle_metrics(manifest: Manifest, ceiling: np.ndarray | None, reliable: np.ndarray | None,
                   model_fmri: dict) -> dict | None:
    """Demo only: the oracle's test metrics (ridge on the true regressors, giblet.evaluate.oracle) and
    the model's ``fraction_of_oracle`` (its reliable-voxel mean r over the oracle's). None on real data."""
    fmri = np.load(manifest.arrays["fmri"].path, mmap_mode="r")
    predicted = oracle_predict(manifest, fmri)
    if predicted is None:
        return None
    scores = M.fmri_metrics(*predicted, ceiling, reliable, n_null=0)
    r = M.pearson_columns(*predicted)
    ours, best = model_fmri["r_mean_reliable"], scores["r_mean_reliable"]
    return {"method": "ridge on truth.npz's true regressors (design_*), fit on train+val, one alpha per voxel",
            "fmri": scores, "by_region": by_region(manifest, r, ceiling),
            "fraction_of_oracle": ours / best if ours is not None and best else None}


def _training_block(manifest: Manifest, role: str) -> tuple[np.ndarray, int, int] | None:
    """A manifest array (memory-mapped) and the rows of the training block's targets' TRs, or None."""
    ranges = manifest.split.ranges
    if "train" not in ranges or role not in manifest.arrays:
        return None
    shift = manifest.split.shift_trs
    start, stop = ranges["train"]
    return np.load(manifest.arrays[role].path, mmap_mode="r"), start + shift, stop + shift


def _train_mean_frame(manifest: Manifest) -> np.ndarray | None:
    """Mean (in [0, 1]) of the training block's frames (its targets' TRs; the decoded TRs lie a few TRs earlier,
    which moves a mean over hundreds of TRs negligibly)."""
    block = _training_block(manifest, "frames")
    if block is None:
        return None
    frames, start, stop = block
    total = np.zeros(frames.shape[1:], dtype=np.float64)
    for a in range(start, stop, 64):
        total += np.asarray(frames[a:min(a + 64, stop)], dtype=np.float64).sum(axis=0)
    return total / (stop - start) / 255.0


def _train_codes(manifest: Manifest) -> np.ndarray | None:
    """The training block's EnCodec codes (its targets' TRs, like :func:`_train_mean_frame`), or None."""
    block = _training_block(manifest, "audio_codes")
    return None if block is None else np.asarray(block[0][block[1]:block[2]])


def model_decoding_identification(predictions, manifest: Manifest) -> dict:
    """Per modality, how well the decoders' output identifies the test TR's stimulus
    (giblet.evaluate.decoding_identification; the ridge decoder in ridge.json is scored alike)."""
    codebook = manifest.modalities["audio"]["codebook_size"] if "audio" in manifest.modalities else None
    true = stimulus_descriptors(predictions.stimulus, codebook)
    return identification_scores(decoded_descriptors(predictions.decoded, predictions.stimulus.get("text_mask")), true)


def decoding_metrics(decoded: dict, stimulus: dict, manifest: Manifest) -> dict:
    """Brain -> stimulus scores per enabled modality (see giblet.evaluate.decoding_metrics)."""
    out = {}
    if "frames" in decoded and "frames" in stimulus:
        out["frames"] = {**frame_metrics(decoded["frames"], stimulus["frames"], _train_mean_frame(manifest)),
                         "baseline": "the training block's mean frame"}
    if "frame_features" in decoded and "frame_features" in stimulus:
        # Retrieval of each frame's CLIP embedding among the block's, as text_metrics does for annotations.
        out["frame_features"] = text_metrics(decoded["frame_features"], stimulus["frame_features"])
    if "code_logits" in decoded and "codes" in stimulus:
        out["audio_codes"] = {**code_metrics(decoded["code_logits"], stimulus["codes"], _train_codes(manifest)),
                              "baseline": "the training block's most frequent code per codebook"}
    if "text" in decoded and "text" in stimulus:
        mask = stimulus.get("text_mask", np.ones(stimulus["text"].shape[:2], dtype=bool))
        out["text"] = text_metrics(decoded["text"], stimulus["text"], mask)
    return out


def evaluate(model_path: str | Path, manifest_path: str | Path, out_dir: str | Path, *,
             reliable_threshold: float = M.RELIABLE_THRESHOLD, n_null: int = 100, seed: int = 0,
             batch_size: int = 32, device: str = "cpu", r_map_name: str = "r_map.nii.gz") -> dict:
    """Score ``model_path`` on the test block of ``manifest_path``; write metrics.json, the r map
    (``r_map_name``), r_map.png.

    Array paths inside the manifest are read as written there (relative ones from the current
    directory, as in training). Nothing is written unless everything succeeds.

    Parameters
    ----------
    model_path : path of ``model.pt`` (the train stage's output)
    manifest_path : path of the dataset manifest
    out_dir : directory that receives the three files
    reliable_threshold : float
        Reliable voxels have a noise ceiling >= this (see :func:`giblet.evaluate.metrics.reliable_voxels`).
    n_null, seed : the circular-shift null (shifts at least ``lag_trs`` from 0 and N)
    batch_size, device : for running the model
    r_map_name : the r map's file name in ``out_dir``

    Returns
    -------
    dict, the content of metrics.json.

    Raises
    ------
    InputError naming the file: the manifest is missing/unreadable or has no test block; the model
    file is missing, corrupt or not a giblet model; the model does not fit the manifest (number of
    voxels, modalities, lag); a ceiling/truth/mask file it lists is missing or malformed.
    """
    model_path, manifest_path, out_dir = Path(model_path), Path(manifest_path), Path(out_dir)
    model, saved, manifest, test_range = load_checked(model_path, manifest_path, device)
    mask_path = Path(manifest.arrays["mask"].path)
    if not mask_path.exists():
        raise InputError(mask_path, "the manifest's brain mask is missing: rerun the fMRI stages")
    ceiling, ceiling_source, ceiling_path = load_ceiling(manifest)

    predictions = predict(model, manifest, SPLIT, batch_size=batch_size, device=device)
    n_test = len(predictions.targets)
    reliable = M.reliable_voxels(ceiling, reliable_threshold) if ceiling is not None else None
    fmri = M.fmri_metrics(predictions.fmri_pred, predictions.fmri_true, ceiling, reliable, n_null=n_null, seed=seed,
                          min_shift=int(manifest.lag_trs))
    r = M.pearson_columns(predictions.fmri_pred, predictions.fmri_true)
    oracle = oracle_metrics(manifest, ceiling, reliable, fmri)
    manifest_sha256 = sha256_file(manifest_path)
    results = {
        "format": METRICS_FORMAT,
        "split": SPLIT, "test_range": list(test_range), "n_test": n_test, "tr": manifest.tr,
        "model": {"path": str(model_path), "sha256": sha256_file(model_path),
                  "config_hash": saved.get("config_hash"), "steps": saved.get("steps"), "epochs": saved.get("epochs"),
                  "weights": saved.get("weights"), "best_val_loss": saved.get("best_val_loss"),
                  "preset": saved["model_config"].get("preset"), "giblet_version": saved.get("giblet_version"),
                  "trained_on_this_manifest": saved.get("manifest_sha256") == manifest_sha256},
        "manifest": {"path": str(manifest_path), "sha256": manifest_sha256},
        "ceiling": {"source": ceiling_source, "path": ceiling_path,
                    "reliable_rule": (f"ceiling >= {reliable_threshold}" if ceiling is not None
                                      else "all voxels (no ceiling in the manifest)"),
                    "reliable_threshold": reliable_threshold if ceiling is not None else None,
                    "test_block": realised_ceiling(manifest, predictions.targets, predictions.fmri_true, ceiling,
                                                   reliable)},
        "fmri": fmri,
        "by_region": by_region(manifest, r, ceiling),
        "oracle": oracle,
        "decoding": decoding_metrics(predictions.decoded, predictions.stimulus, manifest),
        "decoding_identification": model_decoding_identification(predictions, manifest),
    }
    null = fmri.get("null")
    threshold = max(null["voxel_r_p95"], 0.01) if null else 0.1
    results["r_map"] = {"nifti": r_map_name, "png": "r_map.png", "plot_threshold": threshold,
                        "plot_threshold_rule": ("95th percentile of single-voxel r under the circular-shift null"
                                                if null else "fixed 0.1 (no null)")}
    results = jsonable(results)

    with atomic_output_dir(out_dir) as tmp:
        nib.save(r_map_image(r, mask_path), tmp / r_map_name)
        plot_r_map(tmp / r_map_name, tmp / "r_map.png",
                   f"Per-voxel r over time, test TRs {test_range[0]}-{test_range[1] - 1} (N={n_test})", threshold)
        write_json(tmp / "metrics.json", results)
    log.info("evaluated %s on %d test TRs: r_mean %.3f, r_mean_reliable %s, identification top-1 %.3f "
             "(chance %.3f), null p %s -> %s", model_path, n_test, fmri["r_mean"], fmri["r_mean_reliable"],
             fmri["identification"]["top1"], fmri["identification"]["chance_top1"],
             null["p_value"] if null else None, out_dir)
    return results
