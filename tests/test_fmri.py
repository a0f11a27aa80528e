"""fMRI stages: input checks, the shared mask, streamed z-scoring (against nilearn and numpy), the
group mean and its ISC noise ceiling (against the demo's exact ceiling), and brain-space round trips.
Bad input fails with an InputError naming the file, and leaves no partial output."""

import json

import nibabel as nib
import numpy as np
import pytest

from giblet.errors import InputError
from giblet.fmri.group import average_subjects
from giblet.fmri.inputs import check_bold_inputs
from giblet.fmri.mask import build_mask, prepare_fmri
from giblet.fmri.nifti import from_nifti, to_nifti
from giblet.fmri.normalize import normalize_subject

SHAPE, TR = (10, 12, 8), 1.5
AFFINE = np.array([[3.0, 0, 0, -15], [0, 3, 0, -18], [0, 0, 3, 0], [0, 0, 0, 1]])
PARAMS = {"mask": "intersection", "majority_fraction": 0.5, "short_subjects": "error"}


def brain_region() -> np.ndarray:
    """An ellipsoid of 'brain' inside the 10x12x8 grid; the rest is zeros, as in real data."""
    i, j, k = np.indices(SHAPE)
    return ((i - 4.5) / 4.2) ** 2 + ((j - 5.5) / 5.2) ** 2 + ((k - 3.5) / 3.4) ** 2 <= 1


def bold_data(n_trs: int, seed: int) -> np.ndarray:
    """(x, y, z, T) float32: baseline ~1000 + shared slow signal + noise in the brain, 0 outside."""
    rng = np.random.default_rng(seed)
    brain = brain_region()
    shared = np.sin(np.arange(n_trs) / 3.0)[None, None, None, :] * rng.uniform(5, 20, SHAPE)[..., None]
    data = 1000 + 300 * rng.random(SHAPE)[..., None] + shared + 10 * rng.standard_normal(SHAPE + (n_trs,))
    return (data * brain[..., None]).astype(np.float32)


def write_bold(path, data, affine=AFFINE, tr=TR):
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + ((tr,) if np.ndim(data) == 4 else ()))
    image.to_filename(path)
    return path


def make_subjects(folder, n=3, n_trs=60, ext="nii.gz", edit=None):
    """Write n subjects; ``edit(sub_index, data) -> data`` plants defects. Returns {id: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    bold = {}
    for s in range(n):
        data = bold_data(n_trs, seed=s)
        if edit is not None:
            data = edit(s, data)
        bold[f"{s + 1:02d}"] = write_bold(folder / f"sub-{s + 1:02d}_bold.{ext}", data)
    return bold


def masked(path, mask_path) -> np.ndarray:
    """(T, V) float64 reference: the file's data at the mask's voxels, C order."""
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)[mask].T


def single_runs(bold: dict) -> dict:
    """One run per subject, as giblet.paths.runs gives without inputs.runs."""
    return {sub: [{"run": None, "session": None, "start_s": 0.0, "dummy_volumes": 0, "bold": path,
                   "confounds": None, "brain_mask": None}] for sub, path in bold.items()}


def prepared(tmp_path, bold, params=PARAMS):
    out = tmp_path / "fmri"
    info = prepare_fmri(single_runs(bold), TR, params, out / "mask.nii.gz", out / "info.json")
    return info, out / "mask.nii.gz"


# ---------------------------------------------------------------- z-scoring


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_zscores_equal_nilearn_when_fit_on_all_trs(tmp_path, ext):
    from nilearn.maskers import NiftiMasker

    bold = make_subjects(tmp_path / "in", n=2, n_trs=50, ext=ext)
    info, mask = prepared(tmp_path, bold)
    out = tmp_path / "fmri" / "sub-01_z.npy"
    normalize_subject(bold["01"], mask, info["n_trs"], (0, info["n_trs"]), out, out.with_name("sub-01_stats.npz"),
                      chunk_trs=16, progress=False)
    z = np.load(out)
    # nilearn computes in the image's dtype; on float32 BOLD near 1000 that alone costs ~3e-5, so it
    # gets the same values as float64 (giblet accumulates in float64 from the float32 file)
    image = nib.load(bold["01"])
    image = nib.Nifti1Image(image.get_fdata(dtype=np.float64), image.affine, image.header)
    expected = NiftiMasker(mask_img=str(mask), standardize="zscore_sample").fit().transform(image)
    assert z.dtype == np.float32 and z.shape == expected.shape == (50, info["mask"]["n_voxels"])
    np.testing.assert_allclose(z, expected, atol=1e-5)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["shape"] == [50, z.shape[1]] and sidecar["parameters"]["ddof"] == 1
    assert set(sidecar["sources"]) == {"bold", "mask"}


def test_zscores_fit_on_a_sub_range_equal_numpy(tmp_path):
    def edit(s, data):
        data[5, 6, 4, 10:40] = 1234.0  # constant over the fit TRs only
        return data

    bold = make_subjects(tmp_path / "in", n=2, n_trs=70, edit=edit)
    info, mask = prepared(tmp_path, bold)
    out = tmp_path / "fmri" / "sub-01_z.npy"
    stats_path = out.with_name("sub-01_stats.npz")
    n_trs, fit = 64, (10, 40)  # fewer than the file holds: only the first 64 are written
    normalize_subject(bold["01"], mask, n_trs, fit, out, stats_path, chunk_trs=7, progress=False)

    x = masked(bold["01"], mask)[:n_trs]
    mean, std = x[fit[0]:fit[1]].mean(0), x[fit[0]:fit[1]].std(0, ddof=1)
    constant = std == 0
    expected = np.where(constant, 0.0, (x - mean) / np.where(constant, 1, std))
    z, stats = np.load(out), np.load(stats_path)
    assert z.shape == (n_trs, x.shape[1])
    np.testing.assert_allclose(z, expected, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-5)
    assert constant.sum() == 1 and int(stats["n_constant_in_fit"]) == 1
    assert not z[:, constant].any()  # z = 0 at every TR, also outside the fit range
    assert list(stats["fit_trs"]) == [10, 40] and int(stats["ddof"]) == 1 and int(stats["n_trs"]) == n_trs


def test_scaled_integer_bold_is_read_like_nibabel(tmp_path):
    """int16 data with scl_slope/scl_inter (common in scanner output) go through the scaling path."""
    bold = {}
    for s in range(2):
        data = np.round((bold_data(30, seed=s) - 1000) * 10).astype(np.int16)
        image = nib.Nifti1Image(data, AFFINE)
        image.header.set_slope_inter(0.1, 1000.0)
        image.header.set_zooms((3.0, 3.0, 3.0, TR))
        image.header.set_xyzt_units("mm", "sec")
        bold[f"{s + 1:02d}"] = tmp_path / f"sub-{s + 1:02d}_bold.nii.gz"
        image.to_filename(bold[f"{s + 1:02d}"])
    info, mask = prepared(tmp_path, bold)
    out = tmp_path / "fmri" / "sub-02_z.npy"
    normalize_subject(bold["02"], mask, 30, (0, 30), out, out.with_name("sub-02_stats.npz"), chunk_trs=8,
                      progress=False)
    x = masked(bold["02"], mask)  # nibabel applies the scaling
    expected = (x - x.mean(0)) / x.std(0, ddof=1)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(out.with_name("sub-02_stats.npz"))["mean"], x.mean(0), rtol=1e-6)


def test_normalize_bad_mask_leaves_nothing(tmp_path):
    bold = make_subjects(tmp_path / "in", n=2, n_trs=20)
    wrong = tmp_path / "wrong_mask.nii.gz"
    nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE).to_filename(wrong)
    out_dir = tmp_path / "fmri"
    out_dir.mkdir()
    with pytest.raises(InputError) as err:
        normalize_subject(bold["01"], wrong, 20, (0, 20), out_dir / "sub-01_z.npy", out_dir / "sub-01_stats.npz",
                          progress=False)
    assert err.value.path == wrong and "shape" in err.value.problem
    assert list(tmp_path.joinpath("fmri").iterdir()) == [] and not list(tmp_path.glob(".fmri.tmp-*"))


# ---------------------------------------------------------------- group mean and ceiling


def normalized_all(tmp_path, bold, info, mask):
    paths = []
    for sub in info["subjects"]:
        out = tmp_path / "fmri" / f"sub-{sub}_z.npy"
        normalize_subject(bold[sub], mask, info["n_trs"], (0, info["n_trs"]), out,
                          out.with_name(f"sub-{sub}_stats.npz"), progress=False)
        paths.append(out)
    return paths


def test_group_mean_and_isc_equal_numpy(tmp_path, monkeypatch):
    import giblet.fmri.group as group_module

    monkeypatch.setattr(group_module, "BLOCK_BYTES", 8 * 3 * 40 * 37)  # 37-voxel blocks: several, uneven
    bold = make_subjects(tmp_path / "in", n=3, n_trs=40)
    info, mask = prepared(tmp_path, bold)
    z_paths = normalized_all(tmp_path, bold, info, mask)
    out = tmp_path / "fmri"
    summary = average_subjects(z_paths, out / "group.npy", out / "ceiling.npz", progress=False)

    subjects = np.stack([np.load(p) for p in z_paths]).astype(np.float64)
    group = np.load(out / "group.npy")
    assert group.dtype == np.float32 and group.shape == subjects.shape[1:]
    np.testing.assert_allclose(group, subjects.mean(0), atol=1e-6)

    rho = np.array([np.mean([np.corrcoef(subjects[a, :, v], subjects[b, :, v])[0, 1]
                             for a, b in [(0, 1), (0, 2), (1, 2)]]) for v in range(group.shape[1])])
    ceiling = np.load(out / "ceiling.npz")
    np.testing.assert_allclose(ceiling["isc"], rho, atol=1e-5)
    np.testing.assert_allclose(ceiling["single"], np.sqrt(np.maximum(rho, 0)), atol=1e-5)
    expected_group = np.sqrt(np.maximum(3 * rho / (1 + 2 * rho), 0) * (rho > 0))
    np.testing.assert_allclose(ceiling["group"], expected_group, atol=1e-5)
    assert int(ceiling["n_subjects"]) == 3 and summary["n_voxels"] == group.shape[1]
    assert json.loads((out / "group.json").read_text())["shape"] == list(group.shape)


def test_isc_is_computed_on_the_given_trs_only(tmp_path):
    """Reliability chosen on the training block never sees the test block: the ISC over TRs [10, 30)
    equals numpy's on those TRs, and the group mean still covers every TR."""
    bold = make_subjects(tmp_path / "in", n=3, n_trs=40)
    info, mask = prepared(tmp_path, bold)
    z_paths = normalized_all(tmp_path, bold, info, mask)
    out = tmp_path / "fmri"
    average_subjects(z_paths, out / "group.npy", out / "ceiling.npz", progress=False, isc_trs=(10, 30))
    subjects = np.stack([np.load(p) for p in z_paths]).astype(np.float64)[:, 10:30]
    rho = np.array([np.mean([np.corrcoef(subjects[a, :, v], subjects[b, :, v])[0, 1]
                             for a, b in [(0, 1), (0, 2), (1, 2)]]) for v in range(subjects.shape[2])])
    ceiling = np.load(out / "ceiling.npz")
    np.testing.assert_allclose(ceiling["isc"], rho, atol=1e-5)
    assert ceiling["isc_trs"].tolist() == [10, 30] and np.load(out / "group.npy").shape[0] == 40
    with pytest.raises(ValueError, match="do not lie inside"):
        average_subjects(z_paths, out / "group.npy", out / "ceiling.npz", progress=False, isc_trs=(30, 50))


def test_isc_ceiling_matches_demo_truth(tmp_path, small_demo):
    """3 subjects, 100 TRs, 8 mm: mean over signal voxels within 0.03 of the exact ceilings."""
    bold = {f"{k + 1:02d}": p for k, p in enumerate(small_demo["bold"])}
    info, mask = prepared(tmp_path, bold)
    truth = np.load(small_demo["truth"])
    mask_ijk = np.argwhere(np.asarray(nib.load(mask).dataobj) > 0)  # C order, like the demo's voxels
    assert np.array_equal(mask_ijk, truth["voxel_ijk"])  # every demo voxel survives the mask, same order
    out = tmp_path / "fmri"
    average_subjects(normalized_all(tmp_path, bold, info, mask), out / "group.npy", out / "ceiling.npz",
                     progress=False)
    ceiling, signal = np.load(out / "ceiling.npz"), truth["region"] > 0
    # the ISC itself is unbiased (expected rho = c^2); the ceilings, concave functions of a noisy
    # rho, sit a little low at 100 TRs (about -0.008 single, -0.02 group; half that at 300 TRs)
    isc_error = ceiling["isc"][signal].mean() - (truth["ceiling_single"][signal] ** 2).mean()
    assert abs(isc_error) < 0.01, isc_error
    single_error = ceiling["single"][signal].mean() - truth["ceiling_single"][signal].mean()
    group_error = ceiling["group"][signal].mean() - truth["ceiling_group"][signal].mean()
    print(f"ISC ceiling error vs truth: single {single_error:+.4f}, group {group_error:+.4f}")
    assert abs(single_error) < 0.03 and abs(group_error) < 0.03, (single_error, group_error)
    assert ceiling["single"][~signal].mean() < 0.2  # null voxels: only chance correlation


# ---------------------------------------------------------------- brain space


def test_mask_round_trip_keeps_values_and_affine(tmp_path):
    from nilearn.masking import apply_mask

    bold = make_subjects(tmp_path / "in", n=2, n_trs=12)
    _, mask = prepared(tmp_path, bold)
    n_voxels = int((np.asarray(nib.load(mask).dataobj) > 0).sum())
    values = np.random.default_rng(0).standard_normal((7, n_voxels)).astype(np.float32)
    image = to_nifti(values, mask)
    image.to_filename(tmp_path / "map.nii.gz")
    back = from_nifti(tmp_path / "map.nii.gz", mask)
    assert back.dtype == np.float32 and np.array_equal(back, values)
    assert np.allclose(nib.load(tmp_path / "map.nii.gz").affine, AFFINE)
    assert np.allclose(nib.load(tmp_path / "map.nii.gz").header.get_zooms()[:3], (3, 3, 3))
    np.testing.assert_array_equal(apply_mask(str(tmp_path / "map.nii.gz"), str(mask)), values)  # nilearn order
    one = to_nifti(values[3], mask)
    assert one.shape == SHAPE and np.array_equal(from_nifti(one, mask), values[3])


# ---------------------------------------------------------------- the mask


def test_mask_criteria_are_counted(tmp_path):
    brain = brain_region()
    inside = np.argwhere(brain)
    nan_voxel, inf_voxel, flat_voxel = map(tuple, inside[[10, 20, 30]])

    def edit(s, data):
        if s == 0:
            data[nan_voxel + (5,)] = np.nan
        if s == 1:
            data[inf_voxel + (7,)] = np.inf
        if s == 2:
            data[flat_voxel] = 500.0
        return data

    bold = make_subjects(tmp_path / "in", n=3, n_trs=30, edit=edit)
    info = check_bold_inputs(bold, TR)
    report = build_mask(info, "intersection", 0.5, tmp_path / "mask.nii.gz")
    outside = int((~brain).sum())
    assert report["removed"] == {"non_finite": 2, "constant": outside + 1}
    assert report["n_voxels"] == brain.sum() - 3
    assert report["per_subject"]["01"] == {"non_finite_voxels": 1, "constant_voxels": outside}
    assert report["per_subject"]["03"] == {"non_finite_voxels": 0, "constant_voxels": outside + 1}
    mask = np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj)
    assert mask.dtype == np.uint8 and not mask[nan_voxel] and not mask[flat_voxel]
    assert np.allclose(nib.load(tmp_path / "mask.nii.gz").affine, AFFINE)

    # majority (2 of 3): each planted voxel is valid in 2 subjects, so it stays ...
    report = build_mask(info, "majority", 0.5, tmp_path / "majority.nii.gz")
    assert report["n_voxels"] == brain.sum() and report["n_voxels_invalid_in_some_subjects"] == 3
    assert report["removed"] == {"non_finite": 0, "constant": outside} and report["min_subjects_valid"] == 2
    # ... and normalize writes z = 0 there, and counts it
    out = tmp_path / "z" / "sub-01_z.npy"
    normalize_subject(bold["01"], tmp_path / "majority.nii.gz", 30, (0, 30), out, out.with_name("s.npz"),
                      progress=False)
    column = np.flatnonzero(np.all(np.argwhere(brain) == nan_voxel, axis=1))[0]  # C order of the mask
    z, stats = np.load(out), np.load(out.with_name("s.npz"))
    assert not z[:, column].any() and np.isfinite(z).all() and int(stats["n_non_finite"]) == 1
    # all three must be valid: the planted voxels are gone
    report = build_mask(info, "majority", 1.0, tmp_path / "all.nii.gz")
    assert report["n_voxels"] == brain.sum() - 3 and report["removed"]["non_finite"] == 2


def test_given_and_mni_masks_are_resampled_and_intersected(tmp_path):
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_to_img

    bold = make_subjects(tmp_path / "in", n=2, n_trs=20)
    info = check_bold_inputs(bold, TR)
    brain = brain_region()
    # a mask on a 1.5 mm grid covering the same space: the lower half (k < 4) of the data grid
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 0.75  # voxel centres of the fine grid nest inside the coarse voxels
    fine = np.zeros((20, 24, 16), np.uint8)
    fine[:, :, :8] = 1
    nib.Nifti1Image(fine, fine_affine).to_filename(tmp_path / "given.nii.gz")
    report = build_mask(info, str(tmp_path / "given.nii.gz"), 0.5, tmp_path / "mask.nii.gz")
    mask = np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj) > 0
    assert np.array_equal(mask[:, :, :4], brain[:, :, :4]) and not mask[:, :, 4:].any()
    assert report["removed"]["outside_mask"] == 10 * 12 * 4 and report["method"] == "path"

    # MNI: on a coarse 20 mm grid centred on the brain, some voxels fall outside it
    coarse = np.diag([20.0, 20, 20, 1])
    coarse[:3, 3] = [-90, -126, -72]
    bold20 = {s: write_bold(tmp_path / f"coarse-{s}.nii.gz", nib.load(p).get_fdata(), coarse)
              for s, p in bold.items()}
    info20 = check_bold_inputs(bold20, TR)
    report = build_mask(info20, "mni", 0.5, tmp_path / "mni.nii.gz")
    target = nib.Nifti1Image(np.zeros(SHAPE, np.uint8), coarse)
    mni = np.asarray(resample_to_img(load_mni152_brain_mask(resolution=20), target, interpolation="nearest",
                                     force_resample=True, copy_header=True).dataobj) > 0
    assert report["removed"]["outside_mask"] == (~mni).sum() > 0
    assert np.array_equal(np.asarray(nib.load(tmp_path / "mni.nii.gz").dataobj) > 0, mni & brain)


# ---------------------------------------------------------------- trailing padding and short subjects


def test_trailing_constant_volumes_are_detected(tmp_path):
    def edit(s, data):
        if s == 1:
            data[..., -5:] = data[..., -6:-5]  # the last real volume repeated 5 times
        if s == 2:
            data[..., -4:] = 0.0  # 4 volumes of a constant
        return data

    bold = make_subjects(tmp_path / "in", n=3, n_trs=40, edit=edit)
    with pytest.raises(InputError) as err:
        check_bold_inputs(bold, TR)
    assert err.value.path == bold["02"] and "35 usable TRs" in err.value.problem
    assert "fmri.short_subjects: truncate" in err.value.problem and "drop" in err.value.problem

    info = check_bold_inputs(bold, TR, "truncate")
    assert [info["per_subject"][s]["trailing_constant_trs"] for s in ("01", "02", "03")] == [0, 5, 4]
    assert [info["per_subject"][s]["usable_trs"] for s in ("01", "02", "03")] == [40, 35, 36]
    assert info["n_trs"] == 35 and info["truncated"] == {"01": 5, "03": 1} and info["dropped"] == []
    json.dumps(info)  # JSON-serialisable

    with pytest.raises(InputError, match="leaves 1 subject"):  # dropping both short ones leaves one
        check_bold_inputs(bold, TR, "drop")


def test_short_subjects_truncate_and_drop_are_recorded(tmp_path):
    folder = tmp_path / "in"
    bold = make_subjects(folder, n=3, n_trs=40)
    bold["04"] = write_bold(folder / "sub-04_bold.nii.gz", bold_data(30, seed=9))
    with pytest.raises(InputError) as err:
        prepared(tmp_path, bold)
    assert err.value.path == bold["04"] and "30 usable TRs" in err.value.problem
    assert not (tmp_path / "fmri").exists() or not any((tmp_path / "fmri").iterdir())

    info, _ = prepared(tmp_path, bold, {**PARAMS, "short_subjects": "truncate"})
    assert info["n_trs"] == 30 and info["truncated"] == {"01": 10, "02": 10, "03": 10}
    assert info["subjects"] == ["01", "02", "03", "04"]
    info, _ = prepared(tmp_path, bold, {**PARAMS, "short_subjects": "drop"})
    assert info["n_trs"] == 40 and info["dropped"] == ["04"] and info["subjects"] == ["01", "02", "03"]
    assert json.loads((tmp_path / "fmri" / "info.json").read_text())["dropped"] == ["04"]

    with pytest.raises(InputError, match="at least 2"):
        check_bold_inputs({"01": bold["01"], "04": bold["04"]}, TR, "drop")


# ---------------------------------------------------------------- bad input


BAD_INPUTS = {  # kind of defect in subject 03: words its error message must hold
    "affine": ["affine", "0.5"],
    "shape": ["(10, 12, 7)", "(10, 12, 8)"],
    "tr": ["2 s", "1.5 s", "pixdim[4]"],
    "short": ["25 usable TRs", "fmri.short_subjects: truncate"],
    "all_nan": ["no finite value"],
    "three_d": ["4-D", "(10, 12, 8)"],
    "missing": ["not found"],
    "corrupt": ["cannot read"],
}


def write_bad_subject(path, kind):
    data = bold_data(30, seed=7)
    if kind == "affine":
        affine = AFFINE.copy()
        affine[0, 3] += 0.5
        return write_bold(path, data, affine)
    if kind == "shape":
        return write_bold(path, data[:, :, :7])
    if kind == "tr":
        return write_bold(path, data, tr=2.0)
    if kind == "short":
        return write_bold(path, data[..., :25])
    if kind == "all_nan":
        return write_bold(path, np.full_like(data, np.nan))
    if kind == "three_d":
        return write_bold(path, data[..., 0])
    if kind == "corrupt":
        write_bold(path, data)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated gzip
        return path
    return path  # missing: never written


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, kind):
    folder = tmp_path / "in"
    bold = make_subjects(folder, n=2, n_trs=30)
    bold["03"] = write_bad_subject(folder / "sub-03_bold.nii.gz", kind)
    out = tmp_path / "fmri"
    out.mkdir()
    (out / "mask.nii.gz").write_bytes(b"an earlier run's output")
    with pytest.raises(InputError) as err:
        prepare_fmri(single_runs(bold), TR, PARAMS, out / "mask.nii.gz", out / "info.json")
    assert err.value.path == bold["03"]
    assert str(err.value).startswith(str(bold["03"]))
    for words in BAD_INPUTS[kind]:
        assert words in err.value.problem, (words, err.value.problem)
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz"]
    assert (out / "mask.nii.gz").read_bytes() == b"an earlier run's output"
    assert not list(tmp_path.glob(".fmri.tmp-*"))
