"""The pre-flight check (``giblet check``, rule ``check_inputs``) and the input defects it was built
against, on copies of the fMRIPrep-like data set (tests/fmriprep_like.py: 3 subjects x 2 runs of
70 and 80 kept volumes after 3 dummies, confounds, brain masks):

- each run is placed on the movie's clock from every subject's lengths, so a short run or an extra
  volume is judged run by run: the error names the file at fault, and one extra volume is allowed
  in every subject, the first included;
- fMRIPrep inputs without brain masks are an error unless ``fmri.allow_data_mask`` is set;
- a confounds column one table lacks names that file and the runs whose tables have it;
- ``giblet check`` passes a good set, and lists every problem of a bad one in one run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from giblet import paths, rules, stages
from giblet.config import apply_overrides, validate_config
from giblet.errors import InputError
from giblet.fmri.inputs import check_run_inputs
from giblet.fmri.mask import prepare_fmri
from giblet.preflight import check_inputs, format_report
from tests.fmriprep_like import giblet_config, write_fmriprep_like

PIXELS_ONLY = ["stimulus.audio.enabled=false", "stimulus.text.enabled=false", "stimulus.frames.features=pixels"]
KEPT = (70, 80)  # the fixture's kept volumes per run
DUMMIES = 3


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return write_fmriprep_like(tmp_path_factory.mktemp("check") / "study")


@pytest.fixture
def study(original, tmp_path):
    """This test's own copy of the data set (the fixture's paths, moved under ``tmp_path``)."""
    shutil.copytree(original.root, tmp_path / "study")
    return _moved(original, original.root, tmp_path / "study")


def _moved(fixture, old: Path, new: Path):
    import dataclasses

    changes = {}
    for field in dataclasses.fields(fixture):
        value = getattr(fixture, field.name)
        if isinstance(value, Path) and str(value).startswith(str(old)):
            changes[field.name] = new / value.relative_to(old)
        elif isinstance(value, str) and value.startswith(str(old)):
            changes[field.name] = str(new) + value[len(str(old)):]
    return dataclasses.replace(fixture, **changes)


def config_of(fixture, results: Path, *overrides: str, contiguous: bool = False) -> dict:
    """The data set's config; ``contiguous``: run 2 starts where run 1's volumes end (no start_s)."""
    raw = giblet_config(fixture, str(results))
    if contiguous:
        raw["inputs"]["runs"][1]["start_s"] = None
    return validate_config(apply_overrides(raw, PIXELS_ONLY + list(overrides)))


def change_length(fixture, subject: str, run: str, delta: int) -> Path:
    """Give one run ``delta`` volumes more (a copy of its last) or fewer, with its confounds rows to match."""
    bold = Path(fixture.path("bold", subject, run))
    image = nib.load(bold)
    data = np.asarray(image.dataobj)
    data = np.concatenate([data, np.repeat(data[..., -1:], delta, axis=3)], axis=3) if delta > 0 else data[..., :delta]
    nib.Nifti1Image(data, image.affine, image.header).to_filename(bold)
    confounds = Path(fixture.path("confounds", subject, run))
    table = pd.read_csv(confounds, sep="\t", na_values="n/a")
    table = pd.concat([table, table.iloc[[-1] * delta]]) if delta > 0 else table.iloc[:delta]
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    return bold


def timeline_of(config: dict, movie: Path) -> dict:
    from giblet.stimulus.media import probe_movie

    return check_run_inputs(paths.runs(config), config["tr"], probe_movie(movie).duration_s,
                            rules.confound_columns(config))


# ---- the timeline, subject by subject ------------------------------------------------------------

@pytest.mark.parametrize("subject", ["01", "02"])
def test_one_extra_volume_is_allowed_in_any_subject_and_left_unused(study, tmp_path, subject):
    change_length(study, subject, "1", +1)
    info = timeline_of(config_of(study, tmp_path / "results", contiguous=True), study.movie)
    assert [run["n_volumes"] for run in info["runs"]] == list(KEPT)  # the extra volume moves nothing
    assert info["runs"][1]["stimulus"] == [KEPT[0], sum(KEPT)]
    facts = info["per_subject"][subject]["runs"][0]
    assert facts["n_volumes_in_file"] == DUMMIES + KEPT[0] + 1


@pytest.mark.parametrize("subject", ["01", "02"])
def test_a_short_run_is_blamed_on_its_own_file(study, tmp_path, subject):
    short = change_length(study, subject, "1", -2)
    with pytest.raises(InputError) as err:
        timeline_of(config_of(study, tmp_path / "results", contiguous=True), study.movie)
    assert err.value.path == short
    assert f"{KEPT[0] - 2} after its {DUMMIES} dummy volumes" in err.value.problem
    assert f"lasts {KEPT[0]} TRs" in err.value.problem


def test_the_segment_length_is_the_one_most_subjects_fit():
    from giblet.fmri.runs import segment_length

    assert segment_length([70, 70, 71]) == 70  # one extra volume
    assert segment_length([71, 70, 70]) == 70  # in the first subject too
    assert segment_length([68, 70, 70]) == 70  # one short run
    assert segment_length([68, 70]) == 70  # a tie: the longer, so the short run is the one blamed
    assert segment_length([70, 71]) == 70  # 70 fits both
    assert segment_length([72]) == 72


# ---- brain masks ------------------------------------------------------------------------------

def test_fmriprep_inputs_without_brain_masks_are_an_error_unless_allowed(study, tmp_path):
    config = config_of(study, tmp_path / "results")
    config["inputs"]["brain_mask"] = None
    arguments = stages.arguments("fmri_mask", config)
    with pytest.raises(InputError) as err:
        stages.STAGES["fmri_mask"](**arguments)
    assert err.value.path == Path(study.path("bold", "01", "1"))
    assert "no brain masks" in err.value.problem and "fmri.allow_data_mask: true" in err.value.problem
    assert not Path(paths.fmri(config)["info"]).exists()

    report = check_inputs(config)
    assert not report["ok"]
    assert any(p["where"] == "mask" and "no brain masks" in p["message"] for p in report["problems"])

    config["fmri"]["allow_data_mask"] = True
    out = paths.fmri(config)
    Path(out["info"]).parent.mkdir(parents=True)
    info = stages.STAGES["fmri_mask"](**stages.arguments("fmri_mask", config))
    with_masks = prepare_fmri(paths.runs(config_of(study, tmp_path / "masked")), study.tr,
                              rules.params("fmri_mask", config_of(study, tmp_path / "masked"))["fmri"],
                              tmp_path / "m.nii.gz", tmp_path / "i.json", movie=study.movie)
    # Accepted: every valid voxel, out-of-brain ones included, so more than the brain masks keep.
    assert info["mask"]["n_voxels"] > with_masks["mask"]["n_voxels"]

    config["fmri"]["allow_data_mask"], config["fmri"]["mask"] = False, "mni"  # a real brain mask: fine
    assert not any(p["where"] == "mask" for p in check_inputs(config)["problems"])


# ---- the confounds column message -------------------------------------------------------------

def test_a_column_one_table_lacks_names_that_file_and_the_runs_that_have_it(study, tmp_path):
    odd = Path(study.path("confounds", "02", "2"))
    table = pd.read_csv(odd, sep="\t", na_values="n/a")
    table.drop(columns=["a_comp_cor_01"]).to_csv(odd, sep="\t", index=False, na_rep="n/a")
    config = config_of(study, tmp_path / "results", "fmri.confounds=[trans_x, a_comp_cor_01]")
    with pytest.raises(InputError) as err:
        stages.STAGES["fmri_mask"](**stages.arguments("fmri_mask", config))
    assert err.value.path == odd
    message = err.value.problem
    assert "'a_comp_cor_01'" in message and "differs from the others" in message
    for label in ("sub-01 run-1", "sub-01 run-2", "sub-02 run-1", "sub-03 run-1", "sub-03 run-2"):
        assert label in message
    assert "sub-02 run-2" not in message and "Fix fmri.confounds" not in message

    # A column no table has is the config's fault: the closest name, and fmri.confounds to fix.
    config = config_of(study, tmp_path / "typo", "fmri.confounds=[trans_x, white_matter_typo]")
    with pytest.raises(InputError) as err:
        stages.STAGES["fmri_mask"](**stages.arguments("fmri_mask", config))
    assert "nor does any other run's table" in err.value.problem and "Fix fmri.confounds" in err.value.problem
    assert "white_matter" in err.value.problem


# ---- giblet check ---------------------------------------------------------------------------

def test_giblet_check_passes_a_good_set_and_writes_its_report(study, tmp_path, capsys):
    from giblet.cli import main

    config_file = tmp_path / "study.yaml"
    raw = giblet_config(study, str(tmp_path / "results"))
    config_file.write_text(json.dumps(raw))  # JSON is YAML
    assert main(["check", "--config", str(config_file), *sum((["--set", o] for o in PIXELS_ONLY), [])]) == 0
    report_path = tmp_path / "results" / "check" / "inputs.json"
    assert capsys.readouterr().out.strip() == str(report_path)
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["errors"] == 0 and report["warnings"] == 0
    assert [row["run"] for row in report["runs"]] == [f"sub-{s} run-{r}" for s in study.subjects for r in "12"]
    assert all(row["status"] == "ok" and row["dummies"] == DUMMIES for row in report["runs"])
    assert [row["kept"] for row in report["runs"][:2]] == list(KEPT)
    assert report["runs"][1]["segment_s"] == [KEPT[0] * study.tr, sum(KEPT) * study.tr]
    assert report["split"]["targets"]["train"] > 0


def test_giblet_check_reports_every_problem_of_a_bad_set_in_one_run(study, tmp_path):
    tr_wrong = Path(study.path("bold", "03", "1"))
    image = nib.load(tr_wrong)
    header = image.header.copy()
    header.set_zooms(header.get_zooms()[:3] + (2.0,))
    nib.Nifti1Image(np.asarray(image.dataobj), image.affine, header).to_filename(tr_wrong)
    short = change_length(study, "02", "1", -2)
    gap = Path(study.path("confounds", "01", "2"))
    table = pd.read_csv(gap, sep="\t", na_values="n/a")
    table.loc[30, "trans_x"] = np.nan
    table.to_csv(gap, sep="\t", index=False, na_rep="n/a")
    lacking = Path(study.path("confounds", "03", "2"))
    pd.read_csv(lacking, sep="\t", na_values="n/a").drop(columns=["a_comp_cor_00"]).to_csv(
        lacking, sep="\t", index=False, na_rep="n/a")
    unsteady = Path(study.path("confounds", "01", "1"))  # fMRIPrep flagged a 4th volume; 3 are dropped
    table = pd.read_csv(unsteady, sep="\t", na_values="n/a")
    table["non_steady_state_outlier03"] = (np.arange(len(table)) == DUMMIES).astype(int)
    table.to_csv(unsteady, sep="\t", index=False, na_rep="n/a")
    annotations = pd.read_csv(study.annotations, sep="\t")
    late = annotations.iloc[[-1]].assign(onset=10_000.0, offset=10_010.0)
    pd.concat([annotations, late]).to_csv(study.annotations, sep="\t", index=False)
    config = config_of(study, tmp_path / "results", "stimulus.text.enabled=true",
                       f"stimulus.text.pretrained={tmp_path / 'clip.safetensors'}", contiguous=True)
    config["inputs"]["brain_mask"] = None

    out = paths.check(config)
    with pytest.raises(InputError) as err:
        stages.STAGES["check_inputs"](**stages.arguments("check_inputs", config))
    failed = out.with_name("inputs.failed.json")
    assert err.value.path == failed and not out.exists()
    report = json.loads(failed.read_text())
    found = {(p["severity"], p["where"], p["path"]) for p in report["problems"]}
    assert ("error", "sub-03 run-1", str(tr_wrong)) in found  # header TR 2 s, not 1.5
    assert ("error", "sub-02 run-1", str(short)) in found  # 2 volumes short: its own file
    assert ("error", "sub-01 run-2", str(gap)) in found  # n/a in the middle of a column
    assert ("error", "sub-03 run-2", str(lacking)) in found  # a column the other tables have
    assert ("error", "mask", str(study.path("bold", "01", "1"))) in found  # no brain masks
    assert ("warning", "annotations", str(study.annotations)) in found
    assert ("warning", "sub-01 run-1", str(unsteady)) in found
    assert f"volume(s) [{DUMMIES}]" in next(p["message"] for p in report["problems"] if p["path"] == str(unsteady))
    assert report["errors"] == 5 and report["warnings"] == 2, format_report(report)  # only those
    status = {row["run"]: row["status"] for row in report["runs"]}
    assert status["sub-01 run-1"] == "warning" and status["sub-02 run-2"] == "ok"
    assert status["sub-02 run-1"] == status["sub-03 run-1"] == "error"
    lacking_message = next(p["message"] for p in report["problems"] if p["path"] == str(lacking))
    assert "sub-01 run-1" in lacking_message  # the runs whose tables have the column
    text = format_report(report)
    assert "5 error(s)" in text and str(short) in text and "sub-03 run-2" in text


def test_a_binary_table_and_unflagged_dummies_are_reported_and_the_check_goes_on(study, tmp_path):
    garbage = Path(study.path("confounds", "02", "2"))
    garbage.write_bytes(bytes(range(256)) * 40)  # not text at all
    unflagged = Path(study.path("confounds", "03", "1"))  # fMRIPrep found no non-steady-state volume
    table = pd.read_csv(unflagged, sep="\t", na_values="n/a")
    table.drop(columns=[c for c in table if c.startswith("non_steady_state")]).to_csv(
        unflagged, sep="\t", index=False, na_rep="n/a")
    report = check_inputs(config_of(study, tmp_path / "results"))
    problems = {p["where"]: p for p in report["problems"]}
    assert report["errors"] == 1 and problems["sub-02 run-2"]["severity"] == "error"
    assert "sub-02 run-2" in format_report(report)
    assert problems["sub-03 run-1"]["severity"] == "warning"
    assert "already discarded its dummies" in problems["sub-03 run-1"]["message"]
    assert {row["run"]: row["status"] for row in report["runs"]}["sub-01 run-1"] == "ok"
    assert report["split"] is not None  # the rest was still checked
