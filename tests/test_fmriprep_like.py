"""The fMRIPrep-like fixture (tests/fmriprep_like.py) itself: BIDS names, volume counts and header TR,
the confounds TSV's shape and ``n/a`` cells, that the listed confounds were really added (and that
regressing them out gets the clean truth back), the flash in the movie and in the flash voxels."""

import re

import nibabel as nib
import numpy as np
import pytest

from giblet.config import validate_config
from giblet.stimulus.frames import extract_frames
from giblet.stimulus.media import probe_movie
from tests.fmriprep_like import (
    MOTION, SPACE, TASK, WALK_MAX_FD_MM, framewise_displacement, giblet_config, nuisance_design, read_confounds,
    regress_out, write_fmriprep_like,
)

TRS_PER_RUN = (70, 80)
DUMMIES = 3


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return write_fmriprep_like(tmp_path_factory.mktemp("fmriprep_like"), trs_per_run=TRS_PER_RUN,
                               dummy_volumes=DUMMIES)


@pytest.fixture(scope="module")
def truth(fixture):
    with np.load(fixture.truth) as npz:
        return dict(npz)


def _runs(fixture):
    return [(subject, run["run"]) for subject in fixture.subjects for run in fixture.runs]


def _kept_data(fixture, truth, subject, run) -> np.ndarray:
    """A run's kept volumes (dummies dropped) in the brain voxels: (n_kept, V) float64."""
    image = nib.load(fixture.path("bold", subject, run))
    return np.asarray(image.dataobj)[truth["brain"]].T[DUMMIES:].astype(np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation of two (n, V) arrays."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def test_the_files_have_fmriprep_names(fixture):
    assert fixture.subjects == ["01", "02", "03"] and fixture.task == TASK and fixture.space == SPACE
    assert fixture.runs == [{"run": "1", "start_s": 0.0, "dummy_volumes": DUMMIES},
                            {"run": "2", "start_s": 70 * 1.5, "dummy_volumes": DUMMIES}]
    assert fixture.derivatives == fixture.root / "derivatives" / "fmriprep"
    description = (fixture.derivatives / "dataset_description.json").read_text()
    assert '"DatasetType": "derivative"' in description and '"Name": "fMRIPrep"' in description
    assert (fixture.root / "dataset_description.json").is_file()
    assert fixture.movie.is_file() and fixture.annotations.is_file() and fixture.truth.is_file()
    names = {"bold": rf"_space-{SPACE}_desc-preproc_bold\.nii\.gz", "confounds": r"_desc-confounds_timeseries\.tsv",
             "brain_mask": rf"_space-{SPACE}_desc-brain_mask\.nii\.gz"}
    for kind, suffix in names.items():
        pattern = getattr(fixture, kind)
        assert pattern.startswith(str(fixture.derivatives)) and "{subject}" in pattern and "{run}" in pattern
        for subject, run in _runs(fixture):
            path = fixture.path(kind, subject, run)
            assert path.is_file(), path
            relative = path.relative_to(fixture.derivatives).as_posix()
            assert re.fullmatch(rf"sub-{subject}/func/sub-{subject}_task-movie_run-{run}{suffix}", relative)


def test_a_session_adds_its_folder_and_entity(tmp_path):
    small = write_fmriprep_like(tmp_path, n_subjects=1, trs_per_run=(40, 40), session="1", flash_volume=10)
    assert "/sub-{subject}/ses-{session}/func/sub-{subject}_ses-{session}_task-movie_run-{run}_" in small.bold
    assert all(run["session"] == "1" for run in small.runs)
    assert small.path("confounds", "01", "2") == (
        small.derivatives / "sub-01/ses-1/func/sub-01_ses-1_task-movie_run-2_desc-confounds_timeseries.tsv")
    for kind in ("bold", "confounds", "brain_mask"):
        assert small.path(kind, "01", "1").is_file()
    config = giblet_config(small, "results")
    assert config["inputs"]["runs"][1] == {"run": "2", "start_s": 60.0, "dummy_volumes": 3, "session": "1"}


def test_every_run_has_its_volumes_the_tr_and_a_mask(fixture, truth):
    brain = truth["brain"]
    assert 300 < brain.sum() == fixture.n_brain_voxels < 1200
    masks = []
    for subject, run in _runs(fixture):
        image = nib.load(fixture.path("bold", subject, run))
        n_kept = TRS_PER_RUN[int(run) - 1]
        assert image.shape == brain.shape + (n_kept + DUMMIES,) and image.get_data_dtype() == np.float32
        assert image.header.get_zooms()[3] == pytest.approx(fixture.tr)
        assert image.header.get_xyzt_units() == ("mm", "sec")
        data = np.asarray(image.dataobj)
        assert (data[~brain] == 0).all() and (data[brain] != 0).all()
        # The non-steady state: the dummies start bright and decay towards the kept volumes' level.
        level = data[brain].mean(0)
        assert level[0] > 1.3 * level[DUMMIES:].mean() and level[0] > level[1] > level[2]
        mask = np.asarray(nib.load(fixture.path("brain_mask", subject, run)).dataobj) > 0
        assert mask.shape == brain.shape and (mask <= brain).all() and 0 < (brain & ~mask).sum() < 10
        assert (mask == truth[f"sub-{subject}_run-{run}_mask"]).all()
        masks.append(mask)
    intersection = np.logical_and.reduce(masks)
    assert (intersection == truth["brain_intersection"]).all()
    assert all(intersection.sum() < mask.sum() for mask in masks)
    assert intersection[brain][truth["flash_voxels"]].all()  # the flash voxels are in every mask


def test_the_confounds_tsv_has_a_row_per_volume_and_fmriprep_columns(fixture):
    expected = ["global_signal", "csf", "white_matter"]
    for name in MOTION:
        expected += [name, f"{name}_derivative1", f"{name}_power2", f"{name}_derivative1_power2"]
    expected += ["framewise_displacement", *[f"a_comp_cor_{k:02d}" for k in range(6)], "cosine00", "cosine01",
                 *[f"non_steady_state_outlier{k:02d}" for k in range(DUMMIES)]]
    assert set(fixture.confound_columns) <= set(expected)
    for subject, run in _runs(fixture):
        path = fixture.path("confounds", subject, run)
        lines = path.read_text().splitlines()
        assert lines[0].split("\t") == expected
        n_file = TRS_PER_RUN[int(run) - 1] + DUMMIES
        assert len(lines) == 1 + n_file
        first = dict(zip(expected, lines[1].split("\t")))
        missing = {name for name, cell in first.items() if cell == "n/a"}
        assert missing == {name for name in expected if name.endswith("_derivative1") or "derivative1_" in name
                           or name == "framewise_displacement"}
        assert "n/a" not in "\t".join(lines[2:])
        table = read_confounds(path)
        assert table.shape == (n_file, len(expected))
        # Power's FD from the motion columns; two jumps over 0.9 mm, at the recorded kept volumes.
        fd = table["framewise_displacement"].to_numpy()
        np.testing.assert_allclose(fd[1:], framewise_displacement(table[list(MOTION)].to_numpy())[1:],
                                   rtol=1e-4, atol=1e-5)
        spikes = fixture.high_motion[subject][run]
        assert len(spikes) == 2 and list(np.flatnonzero(fd > 0.9)) == [DUMMIES + v for v in spikes]
        assert np.nanmax(np.delete(fd, [DUMMIES + v for v in spikes])) < WALK_MAX_FD_MM
        outliers = table[[f"non_steady_state_outlier{k:02d}" for k in range(DUMMIES)]].to_numpy()
        assert (outliers[:DUMMIES] == np.eye(DUMMIES)).all() and (outliers[DUMMIES:] == 0).all()


def test_the_listed_confounds_were_added_and_regressing_them_out_recovers_the_truth(fixture, truth):
    for subject, run in _runs(fixture):
        key = f"sub-{subject}_run-{run}"
        data, clean = _kept_data(fixture, truth, subject, run), truth[f"{key}_clean"].astype(np.float64)
        np.testing.assert_allclose(data, clean + truth[f"{key}_added"], atol=0.01)
        raw = np.median(_corr(data, clean))
        assert raw < 0.5, (key, raw)  # the added confounds dominate the raw data
        design = nuisance_design(read_confounds(fixture.path("confounds", subject, run)),
                                 fixture.confound_columns, DUMMIES)
        cleaned = regress_out(data, design)
        # All that was added lies in the TSV's columns' span: the cleaned data are the clean truth's
        # own residual (float32 rounding aside) ...
        assert _corr(cleaned, regress_out(clean, design)).min() > 0.999, key
        # ... which keeps most of the clean signal; the part inside the span (slow, like the confounds)
        # is lost to any regression: with 12 regressors on 70-80 volumes this is 0.68-0.87 (median
        # 0.78) over seeds 0-13, where the raw data's is at most 0.13.
        recovered = np.median(_corr(cleaned, clean))
        assert recovered > 0.6 and recovered > raw + 0.4, (key, recovered)
        # Without the aCompCor columns, the regression leaves much of the added signal in.
        partial = regress_out(data, design[:, :-3])
        assert np.median(_corr(partial, regress_out(clean, design[:, :-3]))) < 0.5, key


def test_the_flash_trs_frames_are_the_brightest(fixture, tmp_path):
    info = probe_movie(fixture.movie)
    assert info.has_video and info.has_audio and info.fps == pytest.approx(fixture.fps)
    assert fixture.n_trs * fixture.tr <= info.duration_s < (fixture.n_trs + 1) * fixture.tr
    flash_tr = int(round(fixture.flash_s / fixture.tr))
    assert flash_tr * fixture.tr == pytest.approx(fixture.flash_s)
    assert flash_tr == sum(TRS_PER_RUN[:fixture.flash_run - 1]) + fixture.flash_volume
    out = extract_frames(fixture.movie, tmp_path / "frames" / "frames.npy", fixture.tr,
                         {"width": 32, "height": 18, "frame_skip": 1}, progress=False)
    frames = np.load(out)
    assert len(frames) == fixture.n_trs
    brightness = frames.reshape(len(frames), -1).mean(1)
    assert np.argmax(brightness) == flash_tr and brightness[flash_tr] > 245
    assert frames[flash_tr].min() > 240 and np.delete(frames, flash_tr, axis=0).max() < 220
    assert brightness.std() > 10  # the rest of the movie varies


def test_the_flash_voxels_peak_about_5_s_after_the_flash(fixture, truth):
    key = f"sub-01_run-{fixture.flash_run}_clean"
    clean = truth[key].astype(np.float64)
    response = clean / clean.mean(0) - 1
    flash = response[:, truth["flash_voxels"]].mean(1)
    start_s = fixture.runs[fixture.flash_run - 1]["start_s"]
    peak_s = start_s + (np.argmax(flash) + 0.5) * fixture.tr  # a volume's time is its middle
    assert 4.0 <= peak_s - fixture.flash_s <= 7.0
    others = np.delete(response, truth["flash_voxels"], axis=1).mean(1)
    assert flash.max() > 0.03 and np.abs(others).max() < 0.01


def test_giblet_config_is_a_valid_files_config(fixture):
    config = giblet_config(fixture, "results_fmriprep")
    assert config["results_dir"] == "results_fmriprep" and config["dataset"] == "files"
    inputs = config["inputs"]
    assert inputs["bold"] == fixture.bold and inputs["confounds"] == fixture.confounds
    assert inputs["brain_mask"] == fixture.brain_mask and inputs["runs"] == fixture.runs
    assert config["fmri"]["confounds"] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                           "a_comp_cor_00", "a_comp_cor_01", "a_comp_cor_02"]
    # dataset 'files' refuses the demo's random weights: a test gives weights files.
    config["stimulus"]["audio"] = {"weights": "encodec_stand_in.th"}
    config["stimulus"]["text"]["pretrained"] = "clip_stand_in.safetensors"
    validated = validate_config(config)
    assert validated["fmri"]["motion"]["fd_threshold_mm"] == 0.5 and validated["stimulus"]["text"]["columns"] == "demo"
