"""Assemble the dataset manifest: the one file training and evaluation read.

The manifest (:class:`giblet.data.manifest.Manifest`, written and read only by that module) lists every array (path, shape, dtype, SHA-256), the TR, the split, the lag window and
``fmri.shift_trs``, and how many TRs each array has beyond what the split uses (arrays are
truncated to a common length, never time-warped). Every model dimension comes from here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from giblet.data.manifest import ArrayFile, Manifest, write_manifest
from giblet.errors import InputError
from giblet.files import read_sidecar, sha256_file
from giblet.splits import Split

log = logging.getLogger(__name__)

# Stimulus arrays, by role, and the sidecar that describes each (text_mask shares text's sidecar).
STIMULUS_ROLES = ("frames", "frame_features", "audio_codes", "text", "text_mask", "frame_latents", "audio_latents")
# The pretrained autoencoders (files, not arrays), and the latents each one made.
AUTOENCODER_ROLES = {"frame_autoencoder": "frame_latents", "audio_autoencoder": "audio_latents"}


def _describe(path: Path) -> dict:
    array = np.load(path, mmap_mode="r")
    return {"path": str(path), "shape": list(array.shape), "dtype": str(array.dtype), "sha256": sha256_file(path)}


def _check_length(role: str, path: Path, n_trs: int, needed: int) -> None:
    if n_trs < needed:
        raise InputError(path, f"{role} has {n_trs} TRs but the split needs {needed}: rerun its stage "
                               "(it is shorter than the headers promised)")


def assemble_dataset(stimulus: dict[str, Path], fmri_group: Path, mask: Path, split_json: Path,
                     out_manifest: Path, tr: float, ceiling: Path | None = None, fmri_info: Path | None = None,
                     truth: Path | None = None) -> dict:
    """Check the stage outputs against each other and the split, and write ``out_manifest``.

    ``stimulus`` maps roles (``frames``, ``frame_features``, ``audio_codes``, ``text``, ``text_mask``) to ``.npy``
    paths; absent roles are disabled modalities. Raises InputError naming the file when an array is
    shorter than the split needs or disagrees with the mask. Returns the manifest's JSON dict
    (:meth:`Manifest.to_dict`); read the file back with :func:`giblet.data.manifest.read_manifest`.
    """
    split = Split.from_dict(json.loads(Path(split_json).read_text()))
    last_target = max(split.targets(name)[-1] for name in split.ranges)
    stimulus_needed = max(split.window(split.targets(name)[-1])[1] for name in split.ranges)
    arrays, modalities = {}, {}
    for role in STIMULUS_ROLES:
        if role not in stimulus:
            continue
        path = Path(stimulus[role])
        arrays[role] = _describe(path)
        _check_length(role, path, arrays[role]["shape"][0], stimulus_needed)
        arrays[role]["unused_trs"] = arrays[role]["shape"][0] - stimulus_needed
    if "frames" in arrays:
        _, slots, height, width, _ = arrays["frames"]["shape"]
        modalities["frames"] = {"frames_per_tr": slots, "height": height, "width": width}
    if "frame_features" in arrays:
        _, slots, dim = arrays["frame_features"]["shape"]
        modalities["frame_features"] = {"frames_per_tr": slots, "dim": dim}
    if "audio_codes" in arrays:
        sidecar = read_sidecar(stimulus["audio_codes"])
        modalities["audio"] = {"n_q": arrays["audio_codes"]["shape"][1],
                               "frames_per_tr": arrays["audio_codes"]["shape"][2],
                               "codebook_size": sidecar.get("models", {}).get("encodec", {}).get("codebook_size", 1024)}
    for role in ("frame_latents", "audio_latents"):
        if role in arrays:
            _, slots, dim = arrays[role]["shape"]
            modalities[role] = {"slots": slots, "dim": dim}
    for role, latents in AUTOENCODER_ROLES.items():
        if (role in stimulus) != (latents in stimulus):
            raise InputError(stimulus.get(role) or stimulus[latents], f"{role} and {latents} come together")
        if role in stimulus:
            arrays[role] = {"path": str(stimulus[role]), "sha256": sha256_file(stimulus[role])}
    if "text" in arrays:
        if "text_mask" not in arrays or arrays["text_mask"]["shape"] != arrays["text"]["shape"][:2]:
            raise InputError(stimulus["text"], "text and text_mask disagree in shape")
        modalities["text"] = {"k": arrays["text"]["shape"][1], "dim": arrays["text"]["shape"][2]}

    arrays["fmri"] = _describe(Path(fmri_group))
    n_fmri, n_voxels = arrays["fmri"]["shape"]
    _check_length("fmri", Path(fmri_group), n_fmri, last_target + 1)
    arrays["fmri"]["unused_trs"] = n_fmri - (last_target + 1)
    import nibabel as nib

    mask_img = nib.load(mask)
    if int(np.count_nonzero(np.asarray(mask_img.dataobj))) != n_voxels:
        raise InputError(mask, f"holds {int(np.count_nonzero(np.asarray(mask_img.dataobj)))} voxels but "
                               f"{fmri_group} has {n_voxels}")
    arrays["mask"] = {"path": str(mask), "sha256": sha256_file(mask), "shape": list(mask_img.shape)}
    for role, path in (("ceiling", ceiling), ("fmri_info", fmri_info), ("truth", truth)):
        if path is not None:
            arrays[role] = {"path": str(path), "sha256": sha256_file(path)}

    manifest = Manifest(
        tr=tr, split=split, lag_trs=split.lag_trs, shift_trs=split.shift_trs, n_voxels=n_voxels,
        affine=mask_img.affine.tolist(),
        n_targets={name: len(split.targets(name)) for name in split.ranges},
        modalities=modalities, arrays={role: ArrayFile.from_dict(entry, Path(out_manifest), role)
                                       for role, entry in arrays.items()},
        path=Path(out_manifest))
    write_manifest(manifest, out_manifest)
    log.info("manifest %s: %d voxels, modalities %s, targets %s", out_manifest, n_voxels, sorted(modalities),
             manifest.n_targets)
    return manifest.to_dict()
