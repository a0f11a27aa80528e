"""The assembled dataset: manifest contents, windows, and the direction of time."""

import json
import re

import nibabel as nib
import numpy as np
import pytest

from giblet.config import load_config
from giblet.data.assemble import assemble_dataset
from giblet.data.manifest import read_manifest, write_manifest
from giblet.data.samples import WindowDataset
from giblet.errors import InputError
from giblet.files import write_json
from giblet.splits import plan_split
from giblet.timing import convolve_hrf, sample_at_volumes

TR, N_TRS, IMPULSE_TR = 1.5, 80, 30


def impulse_bundle(tmp_path, shift_trs=0, lag_trs=10, fractions="{train: 1.0, val: 0, test: 0}",
                   declared_shift=None):
    """A stimulus impulse at TR 30 and the BOLD response the demo generator would give it, with the
    fMRI pre-shifted by ``shift_trs`` and declared as ``declared_shift`` (default: the truth)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    frames = np.zeros((N_TRS, 1, 2, 2, 3), np.uint8)
    frames[IMPULSE_TR] = 255
    dt = TR / 15
    fine = np.zeros(N_TRS * 15)
    fine[IMPULSE_TR * 15:(IMPULSE_TR + 1) * 15] = 1.0
    response = sample_at_volumes(convolve_hrf(fine, dt), dt, TR, N_TRS)
    fmri = np.stack([response, np.zeros(N_TRS)], axis=1).astype(np.float32)[shift_trs:]  # pre-shifted data
    np.save(tmp_path / "frames.npy", frames)
    np.save(tmp_path / "group.npy", fmri)
    mask = np.zeros((2, 1, 1), np.uint8)
    mask[:] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "mask.nii.gz")
    params = load_config(None, [f"split.lag_trs={lag_trs}", f"split.fractions={fractions}"])["split"]
    split = plan_split(len(fmri), N_TRS, params, shift_trs if declared_shift is None else declared_shift)
    write_json(tmp_path / "split.json", split.to_dict())
    assemble_dataset({"frames": tmp_path / "frames.npy"}, tmp_path / "group.npy", tmp_path / "mask.nii.gz",
                     tmp_path / "split.json", tmp_path / "manifest.json", tr=TR)
    return tmp_path / "manifest.json"


def test_impulse_response_is_causal_in_the_assembled_pairs(tmp_path):
    dataset = WindowDataset(impulse_bundle(tmp_path), "train")
    responding = [item["target"] for item in dataset if item["fmri"][0] > 1e-9]
    assert min(responding) >= IMPULSE_TR  # the brain never responds before the stimulus
    peak = max(dataset, key=lambda item: float(item["fmri"][0]))
    assert abs((peak["target"] - IMPULSE_TR) * TR - 5.0) <= TR  # ~5 s later
    assert peak["frames"].max() == 255  # the window that predicts the peak contains the stimulus
    for item in dataset:
        if item["frames"].max() == 255:
            lag = item["target"] - IMPULSE_TR
            assert 0 <= lag < 10  # impulse inside the causal window only for targets after it


def test_pre_shifted_fmri_gives_the_same_pairs(tmp_path):
    """Data shifted by 3 TRs and declared with shift_trs: 3 give exactly the unshifted pairs."""
    def pairs(manifest):
        return {(item["frames"].numpy().tobytes(), float(item["fmri"][0])) for item in WindowDataset(manifest, "train")}

    plain = pairs(impulse_bundle(tmp_path / "plain"))
    shifted = pairs(impulse_bundle(tmp_path / "shifted", shift_trs=3))
    assert shifted <= plain and len(plain) - len(shifted) <= 3
    # The comparison can fail: shifted data declared unshifted pair each volume with the wrong stimulus.
    undeclared = pairs(impulse_bundle(tmp_path / "undeclared", shift_trs=3, declared_shift=0))
    assert not undeclared <= plain


def test_manifest_describes_every_array(tmp_path):
    manifest_path = impulse_bundle(tmp_path, fractions="{train: 0.6, val: 0.2, test: 0.2}")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["tr"] == TR and manifest["n_voxels"] == 2 and manifest["lag_trs"] == 10
    frames = manifest["arrays"]["frames"]
    assert frames["shape"] == [N_TRS, 1, 2, 2, 3] and frames["dtype"] == "uint8" and len(frames["sha256"]) == 64
    assert manifest["modalities"]["frames"] == {"frames_per_tr": 1, "height": 2, "width": 2}
    assert set(manifest["n_targets"]) == {"train", "val", "test"}
    assert frames["unused_trs"] == N_TRS - (manifest["split"]["ranges"]["test"][1])
    sizes = [len(WindowDataset(manifest_path, name)) for name in ("train", "val", "test")]
    assert sizes == [manifest["n_targets"][n] for n in ("train", "val", "test")]
    item = WindowDataset(manifest_path, "val")[0]
    assert item["frames"].shape == (10, 1, 2, 2, 3) and item["fmri"].shape == (2,)


def test_dataset_on_a_device_matches_the_memory_maps(tmp_path):
    manifest = impulse_bundle(tmp_path)
    on_disk, in_memory = WindowDataset(manifest, "train"), WindowDataset(manifest, "train", device="cpu")
    for j in (0, 5, len(on_disk) - 1):
        for key in ("frames", "fmri"):
            assert np.array_equal(on_disk[j][key].numpy(), in_memory[j][key].numpy())


def test_short_arrays_and_mask_mismatch_are_errors(tmp_path):
    manifest = impulse_bundle(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((20, 1, 2, 2, 3), np.uint8))
    with pytest.raises(InputError, match=r"short.npy: frames has 20 TRs but the split needs"):
        assemble_dataset({"frames": tmp_path / "short.npy"}, tmp_path / "group.npy", tmp_path / "mask.nii.gz",
                         tmp_path / "split.json", tmp_path / "m2.json", tr=TR)
    nib.save(nib.Nifti1Image(np.ones((3, 1, 1), np.uint8), np.eye(4)), tmp_path / "mask3.nii.gz")
    with pytest.raises(InputError, match=r"mask3.nii.gz: holds 3 voxels but .*group.npy has 2"):
        assemble_dataset({"frames": tmp_path / "frames.npy"}, tmp_path / "group.npy", tmp_path / "mask3.nii.gz",
                         tmp_path / "split.json", tmp_path / "m3.json", tr=TR)
    assert not (tmp_path / "m2.json").exists() and not (tmp_path / "m3.json").exists()
    with pytest.raises(KeyError, match="'val' is not in the manifest"):
        WindowDataset(manifest, "val")


def test_the_manifest_reader_round_trips_the_file_and_refuses_a_missing_key(tmp_path):
    manifest_path = impulse_bundle(tmp_path, shift_trs=3, fractions="{train: 0.6, val: 0.2, test: 0.2}")
    data = json.loads(manifest_path.read_text())
    manifest = read_manifest(manifest_path)
    assert manifest.to_dict() == data  # the typed form holds exactly the file's contents
    assert manifest.shift_trs == manifest.split.shift_trs == 3 and manifest.path == manifest_path
    assert manifest.arrays["frames"].shape == (N_TRS, 1, 2, 2, 3) and manifest.array_path("fmri").name == "group.npy"
    write_manifest(manifest, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == manifest_path.read_bytes()  # same bytes, same sha256

    # A key no reader may default: pre-shifted data read as unshifted would pair the wrong TRs.
    for drop, name in ((lambda d: d["split"].pop("shift_trs"), "split.shift_trs"),
                       (lambda d: d.pop("tr"), "tr"), (lambda d: d["arrays"]["fmri"].pop("path"), "arrays.fmri.path")):
        broken = json.loads(manifest_path.read_text())
        drop(broken)
        write_json(tmp_path / "broken.json", broken)
        with pytest.raises(InputError, match=rf"broken.json: missing key '{re.escape(name)}'"):
            read_manifest(tmp_path / "broken.json")
        with pytest.raises(InputError, match=r"broken.json: missing key"):
            WindowDataset(tmp_path / "broken.json", "train")
    with pytest.raises(InputError, match=r"nowhere.json: no such manifest"):
        read_manifest(tmp_path / "nowhere.json")
