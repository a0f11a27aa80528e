"""The dataset manifest (``dataset/manifest.json``): its one reader, its one writer, and its type.

:func:`giblet.data.assemble.assemble_dataset` builds a :class:`Manifest` and writes it with
:func:`write_manifest`; training, the evaluation stages and the benchmarks read it with
:func:`read_manifest` (or :func:`as_manifest`, for code that takes a path or a Manifest). Nothing
else parses the file, so nothing can fill in a missing key with a default of its own: a manifest
without a key is refused with an :class:`~giblet.errors.InputError` naming the file and the key
(a silent ``shift_trs = 0``, for example, would misalign data whose fMRI was already shifted).

The JSON layout is unchanged by this module (the trainer and ``verify`` hash the file's bytes,
``manifest_sha256``, and other code and tests read the JSON): :meth:`Manifest.to_dict` gives exactly
the dict that is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from giblet.errors import InputError
from giblet.files import write_json
from giblet.splits import Split

# Top-level keys, in the order the fields are documented. Every one is required.
KEYS = ("tr", "split", "lag_trs", "shift_trs", "n_voxels", "affine", "n_targets", "modalities", "arrays")
SPLIT_KEYS = ("ranges", "lag_trs", "shift_trs", "buffer_trs")
# What names a manifest that was not read from a file (in error messages).
IN_MEMORY = Path("<manifest>")


@dataclass(frozen=True)
class ArrayFile:
    """One file the manifest lists (an entry of ``manifest.json["arrays"]``).

    Attributes
    ----------
    path : Path
        The file, as written by the dataset stage (relative paths resolve from the directory the
        workflow runs in).
    sha256 : str
        Hex SHA-256 of the file's bytes when the manifest was assembled.
    shape : tuple of int or None
        The array's shape: ``.npy`` arrays and the mask (its 3-D grid); None for ``.npz``/JSON files
        (``ceiling``, ``fmri_info``, ``truth``).
    dtype : str or None
        numpy dtype name of a ``.npy`` array; None otherwise.
    unused_trs : int or None
        TRs at the end of a time-series array (stimulus or fMRI) that no sample of the split reads;
        None for files that are not time series.
    """

    path: Path
    sha256: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    unused_trs: int | None = None

    @classmethod
    def from_dict(cls, data: dict, source: Path, role: str) -> "ArrayFile":
        if not isinstance(data, dict):
            raise InputError(source, f"arrays.{role} is not an object")
        for key in ("path", "sha256"):
            if key not in data:
                raise InputError(source, f"missing key 'arrays.{role}.{key}'")
        shape = data.get("shape")
        return cls(Path(data["path"]), str(data["sha256"]), tuple(int(n) for n in shape) if shape is not None else None,
                   data.get("dtype"), data.get("unused_trs"))

    def to_dict(self) -> dict:
        """The JSON entry: ``path`` and ``sha256``, plus ``shape``/``dtype``/``unused_trs`` when set."""
        out: dict = {"path": str(self.path), "sha256": self.sha256}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.unused_trs is not None:
            out["unused_trs"] = self.unused_trs
        return out


@dataclass(frozen=True)
class Manifest:
    """Everything training and evaluation know about the data set (every model dimension comes from here).

    Attributes
    ----------
    tr : float
        Repetition time, seconds per fMRI volume (also seconds per stimulus TR).
    split : Split
        The train/val/test blocks of target fMRI TRs, the lag window and ``shift_trs``
        (see :mod:`giblet.splits`); ``split.window(t)`` gives the stimulus TRs of target ``t``.
    lag_trs : int
        TRs of stimulus in each sample's causal window (equals ``split.lag_trs``).
    shift_trs : int
        TRs by which the fMRI was already shifted back against the stimulus (``fmri.shift_trs``;
        equals ``split.shift_trs``).
    n_voxels : int
        V, voxels inside the brain mask: the width of every fMRI array.
    affine : list of list of float
        4 x 4 voxel -> scanner (mm) affine of the mask's grid.
    n_targets : dict of str to int
        Samples (target fMRI TRs) per split block.
    modalities : dict of str to dict
        The enabled stimulus modalities and their dimensions: ``frames`` {``frames_per_tr``,
        ``height``, ``width``} (pixels), ``frame_features`` {``frames_per_tr``, ``dim``} (CLIP image
        embeddings of the same frames), ``audio`` {``n_q`` codebooks, ``frames_per_tr`` codec
        frames, ``codebook_size``}, ``text`` {``k`` annotations per TR, ``dim`` embedding width}.
    arrays : dict of str to ArrayFile
        The files, by role: ``fmri`` (T, V) float32 group fMRI; ``mask`` (the NIfTI mask);
        per modality ``frames`` (T, F, H, W, 3) uint8, ``frame_features`` (T, F, d) float16,
        ``audio_codes`` (T, n_q, Fa) int,
        ``text`` (T, k, d) float32 and ``text_mask`` (T, k) bool; optionally ``ceiling``
        (``ceiling.npz``), ``fmri_info`` (``fmri.json``) and ``truth`` (the demo's ``truth.npz``).
    path : Path
        The file it was read from (``<manifest>`` when built in memory); not part of the JSON.
    """

    tr: float
    split: Split
    lag_trs: int
    shift_trs: int
    n_voxels: int
    affine: list
    n_targets: dict
    modalities: dict
    arrays: dict
    path: Path = field(default=IN_MEMORY, compare=False)

    def array_path(self, role: str) -> Path:
        """The path of the ``role`` array; InputError naming the manifest when it lists none."""
        if role not in self.arrays:
            raise InputError(self.path, f"lists no '{role}' array (has {sorted(self.arrays)})")
        return self.arrays[role].path

    @classmethod
    def from_dict(cls, data: dict, path: str | Path = IN_MEMORY) -> "Manifest":
        """Check and type the JSON dict ``data`` read from ``path``.

        Raises
        ------
        InputError
            Naming ``path`` and the first missing key (``split.shift_trs``, ``arrays.fmri.path`` ...),
            or what else makes it no manifest.
        """
        path = Path(path)
        if not isinstance(data, dict):
            raise InputError(path, "is not a giblet dataset manifest (not a JSON object)")
        for key in KEYS:
            if key not in data:
                raise InputError(path, f"missing key '{key}': rebuild it with the dataset stage")
        if not isinstance(data["split"], dict):
            raise InputError(path, "split is not an object")
        for key in SPLIT_KEYS:
            if key not in data["split"]:
                raise InputError(path, f"missing key 'split.{key}': rebuild it with the dataset stage")
        split = Split.from_dict(data["split"])
        if (split.lag_trs, split.shift_trs) != (data["lag_trs"], data["shift_trs"]):
            raise InputError(path, f"lag_trs/shift_trs {data['lag_trs']}/{data['shift_trs']} differ from the "
                                   f"split's {split.lag_trs}/{split.shift_trs}")
        if not isinstance(data["arrays"], dict):
            raise InputError(path, "arrays is not an object")
        for role in ("fmri", "mask"):
            if role not in data["arrays"]:
                raise InputError(path, f"missing key 'arrays.{role}'")
        arrays = {role: ArrayFile.from_dict(entry, path, role) for role, entry in data["arrays"].items()}
        return cls(float(data["tr"]), split, int(data["lag_trs"]), int(data["shift_trs"]), int(data["n_voxels"]),
                   data["affine"], {k: int(v) for k, v in data["n_targets"].items()}, data["modalities"], arrays, path)

    def to_dict(self) -> dict:
        """The JSON dict (the layout of ``manifest.json``)."""
        return {"tr": self.tr, "split": self.split.to_dict(), "lag_trs": self.lag_trs, "shift_trs": self.shift_trs,
                "n_voxels": self.n_voxels, "affine": self.affine, "n_targets": dict(self.n_targets),
                "modalities": self.modalities, "arrays": {role: a.to_dict() for role, a in self.arrays.items()}}


def read_manifest(path: str | Path) -> Manifest:
    """The manifest at ``path``.

    Raises
    ------
    InputError
        Naming ``path``: the file is missing, is not JSON, or lacks a key (named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such manifest: run the dataset stage first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot be read as a JSON manifest ({type(error).__name__}: {error})") from error
    return Manifest.from_dict(data, path)


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write ``manifest`` to ``path`` atomically (sorted keys, indented: the file others hash)."""
    write_json(path, manifest.to_dict())


def as_manifest(manifest: str | Path | Manifest) -> Manifest:
    """``manifest`` itself, or the manifest read from a path."""
    return manifest if isinstance(manifest, Manifest) else read_manifest(manifest)


__all__ = ["ArrayFile", "Manifest", "as_manifest", "read_manifest", "write_manifest"]
