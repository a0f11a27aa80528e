"""A small synthetic dataset bundle (all four modalities, 60 TRs) written through assemble_dataset.

Shared by the trainer, evaluation and weights/verify tests; each chooses the fMRI and extras.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from giblet.config import load_config
from giblet.data.assemble import assemble_dataset
from giblet.data.manifest import ArrayFile, Manifest
from giblet.files import write_json, write_sidecar
from giblet.splits import Split, plan_split

N_TRS = 60
FRACTIONS = "{train: 0.6, val: 0.2, test: 0.2}"


def in_memory_manifest(arrays: dict[str, str | Path], split: Split | None = None, *, n_voxels: int = 0,
                       tr: float = 1.5, modalities: dict | None = None) -> Manifest:
    """A :class:`Manifest` that was never written (for unit tests of functions that read a few of its
    fields): ``arrays`` {role: path} (no digests), ``split`` (an empty lag-1 one by default)."""
    split = split if split is not None else Split({}, 1, 0, 0)
    return Manifest(tr=tr, split=split, lag_trs=split.lag_trs, shift_trs=split.shift_trs, n_voxels=n_voxels,
                    affine=np.eye(4).tolist(),
                    n_targets={name: stop - start for name, (start, stop) in split.ranges.items()},
                    modalities=modalities or {}, arrays={role: ArrayFile(Path(p), "") for role, p in arrays.items()})


def random_fmri(rng: np.random.Generator, frames: np.ndarray, n_voxels: int) -> np.ndarray:
    """Standard-normal fMRI (T, V) unrelated to the stimulus."""
    return rng.standard_normal((len(frames), n_voxels))


def write_bundle(root: Path, n_voxels: int, make_fmri=random_fmri, *, zscore: bool = True,
                 fractions: str = FRACTIONS, affine: np.ndarray | None = None, **extra_arrays: Path | None) -> Path:
    """Write frames (T, 2, 18, 32, 3), codes (T, 4, 16) of 64, text (T, 2, 16) + mask, fMRI from
    ``make_fmri(rng, frames, n_voxels)`` (z-scored per voxel when ``zscore``), an all-ones mask of
    ``n_voxels`` with ``affine`` (identity by default) and a lag-4 split; return the manifest path.
    ``extra_arrays`` (``ceiling``, ``truth``, ...) go to assemble_dataset as they are."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    frames = rng.integers(0, 256, (N_TRS, 2, 18, 32, 3), dtype=np.uint8)
    codes = rng.integers(0, 64, (N_TRS, 4, 16)).astype(np.int16)
    text = rng.standard_normal((N_TRS, 2, 16)).astype(np.float32)
    mask = rng.random((N_TRS, 2)) > 0.3
    text[~mask] = 0
    fmri = make_fmri(rng, frames, n_voxels)
    if zscore:
        fmri = (fmri - fmri.mean(0)) / fmri.std(0)
    for name, array in (("frames", frames), ("audio_codes", codes), ("text", text), ("text_mask", mask),
                        ("group", fmri.astype(np.float32))):
        np.save(root / f"{name}.npy", array)
    write_sidecar(root / "audio_codes.npy", codes, {}, {}, models={"encodec": {"codebook_size": 64}})
    # embed_text's annotation library beside text.npy (the text reconstructions name their nearest one).
    index = np.full(mask.shape, -1, np.int32)
    index[mask] = np.arange(mask.sum())
    np.savez(root / "text_annotations.npz", texts=np.array([f"annotation {t}.{s}" for t, s in zip(*np.nonzero(mask))]),
             embeddings=text[mask], index=index, onset=np.zeros(mask.sum()), offset=np.ones(mask.sum()))
    affine = np.eye(4) if affine is None else affine
    nib.save(nib.Nifti1Image(np.ones((n_voxels, 1, 1), np.uint8), affine), root / "mask.nii.gz")
    split_params = load_config(None, ["split.lag_trs=4", f"split.fractions={fractions}"])["split"]
    write_json(root / "split.json", plan_split(N_TRS, N_TRS, split_params).to_dict())
    assemble_dataset({k: root / f"{k}.npy" for k in ("frames", "audio_codes", "text", "text_mask")},
                     root / "group.npy", root / "mask.nii.gz", root / "split.json", root / "manifest.json", tr=1.5,
                     **extra_arrays)
    return root / "manifest.json"
