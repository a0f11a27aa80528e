"""giblet.fmri.bids: discovery of an fMRIPrep derivatives folder on trees of empty files: subjects
and runs in natural order, one pattern per kind of file that reproduces every file found, and an
error naming the folder or file for each way a folder can be wrong."""

import json
import logging
from pathlib import Path

import pytest

from giblet.errors import ConfigError, InputError
from giblet.fmri.bids import describe, discover
from giblet.fmri.bids_names import natural_key, parse_name

TASK, SPACE = "movie", "MNI152NLin2009cAsym"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def fmriprep_tree(root: Path, subjects=("01", "02", "03"), runs=("1", "2"), session=None, task=TASK,
                  space=SPACE, confounds="timeseries", masks=True, extra="", description=True) -> Path:
    """Empty files named as fMRIPrep names them; ``extra`` (e.g. ``"_acq-x"``) goes after the task."""
    if description:
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    for sub in subjects:
        folder = root / f"sub-{sub}" / (f"ses-{session}" if session else "") / "func"
        touch(root / f"sub-{sub}.html")  # fMRIPrep's report, beside the subject folder
        touch(root / f"sub-{sub}" / "anat" / f"sub-{sub}_space-{space}_desc-brain_mask.nii.gz")
        for run in runs or [None]:
            stem = (f"sub-{sub}" + (f"_ses-{session}" if session else "") + f"_task-{task}{extra}"
                    + (f"_run-{run}" if run else ""))
            touch(folder / f"{stem}_space-{space}_desc-preproc_bold.nii.gz")
            touch(folder / f"{stem}_space-{space}_desc-preproc_bold.json")
            touch(folder / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")  # another space, ignored
            if confounds:
                touch(folder / f"{stem}_desc-confounds_{confounds}.tsv")
            if masks:
                touch(folder / f"{stem}_space-{space}_desc-brain_mask.nii.gz")
    return root


def assert_patterns_reproduce(found):
    """Formatting each pattern with each (subject, run) gives exactly the file found."""
    assert set(found.files) == {(s, r) for s in found.subjects for r in found.runs or [""]}
    for (s, r), files in found.files.items():
        for kind in ("bold", "confounds", "brain_mask"):
            pattern = getattr(found, kind)
            if pattern is None:
                assert kind not in files
            else:
                assert Path(pattern.format(subject=s, run=r)) == files[kind]
                assert files[kind].is_file()


def test_three_subjects_two_runs(tmp_path):
    root = fmriprep_tree(tmp_path / "fmriprep")
    found = discover(root, TASK, SPACE)
    assert found.subjects == ["01", "02", "03"] and found.runs == ["1", "2"]
    assert (found.root, found.task, found.space, found.session) == (root, TASK, SPACE, None)
    assert found.bold == str(root / "sub-{subject}" / "func"
                             / f"sub-{{subject}}_task-{TASK}_run-{{run}}_space-{SPACE}_desc-preproc_bold.nii.gz")
    assert found.confounds.endswith("sub-{subject}_task-movie_run-{run}_desc-confounds_timeseries.tsv")
    assert found.brain_mask.endswith(f"run-{{run}}_space-{SPACE}_desc-brain_mask.nii.gz")
    assert found.files[("02", "1")]["bold"] == (
        root / "sub-02" / "func" / f"sub-02_task-movie_run-1_space-{SPACE}_desc-preproc_bold.nii.gz")
    assert list(found.files) == [(s, r) for s in ("01", "02", "03") for r in ("1", "2")]
    assert_patterns_reproduce(found)


def test_sessions_are_substituted(tmp_path):
    root = fmriprep_tree(tmp_path / "fmriprep", session="pre")
    fmriprep_tree(root, session="post")
    found = discover(root, TASK, SPACE, session="post")
    assert found.session == "post" and found.runs == ["1", "2"]
    assert "ses-post" + "/func/sub-{subject}_ses-post_task-movie_run-{run}" in found.bold.replace("\\", "/")
    assert "{session}" not in found.bold and "ses-pre" not in found.confounds
    assert_patterns_reproduce(found)
    # Two sessions and no session chosen: several files per subject and run, and the fix is named.
    with pytest.raises(InputError, match=r"differ in ses- values post, pre; set inputs.bids.session"):
        discover(root, TASK, SPACE)
    # A single session needs no choice: it is written into the patterns.
    one = discover(fmriprep_tree(tmp_path / "one", session="1"), TASK, SPACE)
    assert "ses-1" in one.bold
    assert_patterns_reproduce(one)


def test_without_runs(tmp_path):
    found = discover(fmriprep_tree(tmp_path / "d", runs=()), TASK, SPACE)
    assert found.runs == [] and "{run}" not in found.bold and "run-" not in found.confounds
    assert list(found.files) == [("01", ""), ("02", ""), ("03", "")]
    assert_patterns_reproduce(found)


def test_natural_order_and_zero_padded_runs(tmp_path):
    found = discover(fmriprep_tree(tmp_path / "d", subjects=("10", "2", "1"), runs=("10", "02", "01")), TASK, SPACE)
    assert found.subjects == ["1", "2", "10"]
    assert found.runs == ["01", "02", "10"]  # labels kept as written
    assert found.files[("2", "01")]["bold"].name.startswith("sub-2_task-movie_run-01_")
    assert_patterns_reproduce(found)
    assert sorted(["a10", "a2", "A1", "b"], key=natural_key) == ["A1", "a2", "a10", "b"]


def test_parse_name():
    assert parse_name(f"sub-01_task-movie_run-1_space-{SPACE}_res-2_desc-preproc_bold.nii.gz") == (
        (("sub", "01"), ("task", "movie"), ("run", "1"), ("space", SPACE), ("res", "2"), ("desc", "preproc")),
        "bold", ".nii.gz")
    assert parse_name("sub-01.html") is None
    assert parse_name("sub-01_task-a_task-b_bold.nii.gz") is None  # an entity twice
    assert parse_name("sub-01_task-movie bold.nii.gz") is None


def test_older_confounds_name_and_no_confounds_or_masks(tmp_path, caplog):
    old = discover(fmriprep_tree(tmp_path / "old", confounds="regressors"), TASK, SPACE)
    assert old.confounds.endswith("_desc-confounds_regressors.tsv")
    assert_patterns_reproduce(old)
    both = fmriprep_tree(tmp_path / "both", confounds="regressors")
    fmriprep_tree(both)  # adds the newer name beside the older one: preferred
    assert discover(both, TASK, SPACE).confounds.endswith("_desc-confounds_timeseries.tsv")
    with caplog.at_level(logging.WARNING, logger="giblet.fmri.bids"):
        bare = discover(fmriprep_tree(tmp_path / "bare", confounds=None, masks=False), TASK, SPACE)
    assert bare.confounds is None and bare.brain_mask is None
    assert all(set(files) == {"bold"} for files in bare.files.values())
    assert "no confounds" in caplog.text
    assert_patterns_reproduce(bare)


def test_task_or_space_typo_lists_what_was_found(tmp_path):
    root = fmriprep_tree(tmp_path / "d")
    fmriprep_tree(root, task="rest")
    with pytest.raises(InputError, match=r"found tasks: movie, rest \(did you mean 'movie'\?\)") as err:
        discover(root, "moive", SPACE)
    assert str(err.value).startswith(str(root)) and "spaces: MNI152NLin2009cAsym, T1w" in str(err.value)
    with pytest.raises(InputError, match=r"spaces: MNI152NLin2009cAsym, T1w \(did you mean 'MNI152NLin2009cAsym'"):
        discover(root, TASK, "MNI152NLin2009Asym")
    with pytest.raises(InputError, match=r"sessions: none"):
        discover(root, TASK, SPACE, session="1")


def test_root_errors(tmp_path, caplog):
    with pytest.raises(InputError, match="fMRIPrep derivatives folder not found"):
        discover(tmp_path / "nowhere", TASK, SPACE)
    raw = tmp_path / "raw"
    touch(raw / "sub-01" / "func" / "sub-01_task-movie_bold.nii.gz")
    with caplog.at_level(logging.WARNING, logger="giblet.fmri.bids"):
        with pytest.raises(InputError, match="looks like a raw BIDS dataset"):
            discover(raw, TASK, SPACE)
    assert "no dataset_description.json" in caplog.text
    # Without dataset_description.json it is only a warning.
    assert discover(fmriprep_tree(tmp_path / "nodesc", description=False), TASK, SPACE).subjects == ["01", "02", "03"]


def test_config_mistakes_are_config_errors(tmp_path):
    root = fmriprep_tree(tmp_path / "d")
    with pytest.raises(ConfigError, match="inputs.bids.task"):
        discover(root, "task-movie", SPACE)
    with pytest.raises(ConfigError, match="inputs.bids.session"):
        discover(root, TASK, SPACE, session="")
    with pytest.raises(ConfigError, match="cannot select on entity 'space'"):
        discover(root, TASK, SPACE, select={"space": "T1w"})


def test_missing_run_names_subject_run_and_path(tmp_path):
    root = fmriprep_tree(tmp_path / "d")
    bold = root / "sub-02" / "func" / f"sub-02_task-movie_run-2_space-{SPACE}_desc-preproc_bold.nii.gz"
    bold.unlink()
    with pytest.raises(InputError, match=r"subject 02 has no run 2, which subject\(s\) 01, 03 have") as err:
        discover(root, TASK, SPACE)
    assert err.value.path == bold


def test_run_labels_written_differently(tmp_path):
    root = fmriprep_tree(tmp_path / "d", subjects=("01", "02"))
    fmriprep_tree(root, subjects=("03",), runs=("01", "02"))
    with pytest.raises(InputError, match=r"run-1 and run-01 are different labels"):
        discover(root, TASK, SPACE)


@pytest.mark.parametrize("kind, name", [
    ("confounds", "sub-03_task-movie_run-1_desc-confounds_timeseries.tsv"),
    ("brain mask", f"sub-03_task-movie_run-1_space-{SPACE}_desc-brain_mask.nii.gz"),
])
def test_missing_confounds_or_mask_names_the_expected_path(tmp_path, kind, name):
    root = fmriprep_tree(tmp_path / "d")
    missing = root / "sub-03" / "func" / name
    missing.unlink()
    with pytest.raises(InputError, match=rf"subject 03 run 1 has no {kind} file, but 5 of the 6") as err:
        discover(root, TASK, SPACE)
    assert err.value.path == missing


def test_mixed_confounds_versions_name_the_older_file(tmp_path):
    root = fmriprep_tree(tmp_path / "d", subjects=("01", "02"))
    fmriprep_tree(root, subjects=("03",), confounds="regressors")
    with pytest.raises(InputError, match="found the older regressors.tsv name there instead") as err:
        discover(root, TASK, SPACE)
    assert err.value.path.name == "sub-03_task-movie_run-1_desc-confounds_timeseries.tsv"


def test_names_that_do_not_fit_one_pattern(tmp_path):
    root = fmriprep_tree(tmp_path / "d", subjects=("01", "02"))
    fmriprep_tree(root, subjects=("03",), extra="_acq-x")
    with pytest.raises(InputError, match=r"do not fit one pattern: they differ in acq- \(absent vs x\)") as err:
        discover(root, TASK, SPACE)
    message = str(err.value)
    assert "sub-01_task-movie_run-1_space" in message and "sub-03_task-movie_acq-x_run-1_space" in message


def test_several_files_per_run_name_the_entity_and_select_picks_one(tmp_path):
    root = fmriprep_tree(tmp_path / "d")
    for sub in ("01", "02", "03"):
        for run in ("1", "2"):
            stem = root / "sub-{0}/func/sub-{0}_task-movie_run-{1}_space-{2}".format(sub, run, SPACE)
            touch(Path(f"{stem}_res-2_desc-preproc_bold.nii.gz"))
            touch(Path(f"{stem}_res-2_desc-brain_mask.nii.gz"))
    with pytest.raises(InputError, match=r"subject 01 run 1 has 2 matching preprocessed BOLD files, which differ in "
                                         r"res- values 2, absent; .*inputs.bids.select \(e.g. \{res: 2\}\)"):
        discover(root, TASK, SPACE)
    found = discover(root, TASK, SPACE, select={"res": "2"})
    assert "_res-2_desc-preproc_bold" in found.bold and "_res-2_desc-brain_mask" in found.brain_mask
    assert "res" not in found.confounds  # the confounds carry no resolution
    assert_patterns_reproduce(found)


def test_subject_without_matching_files_is_left_out_with_a_warning(tmp_path, caplog):
    root = fmriprep_tree(tmp_path / "d")
    fmriprep_tree(root, subjects=("04",), task="rest", description=False)
    with caplog.at_level(logging.WARNING, logger="giblet.fmri.bids"):
        found = discover(root, TASK, SPACE)
    assert found.subjects == ["01", "02", "03"] and "subject folder(s) 04" in caplog.text


def test_braces_in_root_are_escaped(tmp_path):
    found = discover(fmriprep_tree(tmp_path / "odd{name}"), TASK, SPACE)
    assert_patterns_reproduce(found)


def test_describe_mentions_counts_and_patterns(tmp_path):
    found = discover(fmriprep_tree(tmp_path / "d", masks=False), TASK, SPACE)
    text = describe(found)
    assert str(found.root) in text and "task movie, space MNI152NLin2009cAsym" in text
    assert "3 subject(s): 01, 02, 03" in text and "2 run(s) each: 1, 2" in text
    assert "6 preprocessed BOLD, 6 confounds, 0 brain mask" in text
    assert found.bold in text and found.confounds in text and "brain_mask: (none found)" in text
    norun = describe(discover(fmriprep_tree(tmp_path / "n", runs=(), session="a"), TASK, SPACE, "a"))
    assert "no run entity" in norun and "session a" in norun
