"""fMRIPrep runs: per-run cleaning against nilearn, the joined timeline, and config/fmriprep_example.yaml
end to end, on a data set shaped like fMRIPrep's output (tests/fmriprep_like.py)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from giblet import paths, rules, stages
from giblet.config import apply_overrides, load_config, validate_config
from giblet.errors import ConfigError, InputError
from giblet.splits import Split
from tests.conftest import QUICK_PRETRAIN
from tests.fmriprep_like import giblet_config, write_fmriprep_like

REPO = Path(__file__).resolve().parents[1]
# No pretrained weights offline: the fMRI side is what these tests are about.
PIXELS_ONLY = ["stimulus.audio.enabled=false", "stimulus.text.enabled=false", "stimulus.frames.features=pixels"]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return write_fmriprep_like(tmp_path_factory.mktemp("fmriprep") / "study")


def study_config(fixture, results: Path, *overrides: str) -> dict:
    return validate_config(apply_overrides(giblet_config(fixture, str(results)), PIXELS_ONLY + list(overrides)))


def run_stage(rule: str, config: dict, subject: str | None = None) -> None:
    """Run a stage as its rule would, output folders made first (Snakemake makes them)."""
    for output in rules.outputs(rule, config).values():
        for path in output if isinstance(output, list) else [output]:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    status = stages.run(rule, stages.arguments(rule, config, subject), progress=False)
    assert status == 0, f"{rule} failed"


@pytest.fixture(scope="module")
def cleaned(fixture, tmp_path_factory):
    """The fMRI stages run on the fixture: fmri_mask, plan_split, normalize_fmri per subject, average_fmri."""
    config = study_config(fixture, tmp_path_factory.mktemp("results"))
    run_stage("fmri_mask", config)
    run_stage("plan_split", config)
    for subject in fixture.subjects:
        run_stage("normalize_fmri", config, subject)
    run_stage("average_fmri", config)
    out = paths.fmri(config)
    return {"config": config, "info": json.loads(Path(out["info"]).read_text()), "out": out,
            "mask": np.asarray(nib.load(out["mask"]).dataobj) > 0,
            "split": Split.from_dict(json.loads(Path(paths.dataset(config)["split"]).read_text()))}


def nilearn_reference(fixture, subject: str, run: dict, mask: np.ndarray, columns: list[str]) -> tuple:
    """nilearn.signal.clean on one run read straight from the files: (cleaned kept volumes, kept indices, n)."""
    from nilearn.signal import clean, create_cosine_drift

    dummies = run["dummy_volumes"]
    data = np.asarray(nib.load(fixture.path("bold", subject, run["run"])).dataobj, dtype=np.float64)
    masked = data[mask].T[dummies:]
    table = pd.read_csv(fixture.path("confounds", subject, run["run"]), sep="\t", na_values="n/a")
    regressors = table[columns].fillna(0).to_numpy()[dummies:]
    displacement = table["framewise_displacement"].fillna(0).to_numpy()[dummies:]
    kept = np.flatnonzero(displacement <= 0.5)
    # The high-pass as nilearn's cosine drift terms in the same fit (its filter="cosine" would drop them
    # here: the fixture's slow motion correlates above 0.9 with a term; giblet.fmri.clean says why).
    drift = create_cosine_drift(0.01, np.arange(len(masked)) * fixture.tr)[:, :-1]
    assert drift.shape[1] >= 2
    with warnings.catch_warnings():  # nilearn's notices about its future defaults
        warnings.simplefilter("ignore")
        reference = clean(masked, detrend=True, confounds=np.hstack([regressors, drift]), standardize=False,
                          filter=False, t_r=fixture.tr, sample_mask=kept)
    return reference - reference.mean(axis=0), kept, len(masked)


def cleaned_values(cleaned, subject: str) -> np.ndarray:
    """A subject's cleaned data before z-scoring, from its z array and the statistics stored beside it."""
    z = np.load(str(cleaned["out"]["z"]).format(subject=subject))
    stats = np.load(str(cleaned["out"]["stats"]).format(subject=subject))
    return z.astype(np.float64) * stats["std"] + stats["mean"]


def test_runs_are_joined_in_movie_order_after_their_dummies(fixture, cleaned):
    info = cleaned["info"]
    assert [run["fmri"] for run in info["runs"]] == [[0, 70], [70, 150]]
    assert [run["stimulus"] for run in info["runs"]] == [[0, 70], [70, 150]]
    assert info["n_trs"] == 150 and info["subjects"] == fixture.subjects
    # The mask: valid data inside every run's brain mask.
    assert np.array_equal(cleaned["mask"], np.load(fixture.truth)["brain_intersection"])


def test_each_run_is_cleaned_as_nilearn_cleans_it(fixture, cleaned):
    from scipy.interpolate import CubicSpline

    columns = list(fixture.confound_columns)
    for subject in fixture.subjects[:2]:
        ours = cleaned_values(cleaned, subject)
        sidecar = json.loads(Path(str(cleaned["out"]["z_sidecar"]).format(subject=subject)).read_text())
        for run, placed, done in zip(fixture.runs, cleaned["info"]["runs"], sidecar["parameters"]["cleaning"]["runs"]):
            reference, kept, n = nilearn_reference(fixture, subject, run, cleaned["mask"], columns)
            a, b = placed["fmri"]
            mine = ours[a:b]
            scale = reference.std()
            assert np.abs(mine[kept] - reference).max() < 1e-4 * scale
            # The high-motion volumes (FD > 0.5 mm) are exactly the fixture's spikes, interpolated.
            censored = np.setdiff1d(np.arange(n), kept)
            assert censored.tolist() == sorted(fixture.high_motion[subject][run["run"]])
            assert done["high_motion_volumes"] == censored.tolist()
            spline = CubicSpline(kept, reference, axis=0)(censored)
            assert np.abs(mine[censored] - spline).max() < 1e-4 * scale


def test_confounds_and_drift_are_removed(fixture, cleaned):
    truth = np.load(fixture.truth)
    for subject in fixture.subjects:
        ours = cleaned_values(cleaned, subject)
        for run, placed in zip(fixture.runs, cleaned["info"]["runs"]):
            key = f"sub-{subject}_run-{run['run']}"
            clean, raw = truth[f"{key}_clean"], truth[f"{key}_clean"] + truth[f"{key}_added"]
            inside = cleaned["mask"][truth["brain"]]  # the truth's voxels that the mask kept
            a, b = placed["fmri"]
            after = median_correlation(ours[a:b], clean[:, inside])
            before = median_correlation(raw[:, inside], clean[:, inside])
            assert after > 0.6 and after > before + 0.4, (key, before, after)


def median_correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.median((x * y).sum(axis=0) / np.sqrt((x * x).sum(axis=0) * (y * y).sum(axis=0))))


def test_z_statistics_fit_on_the_training_block(cleaned):
    start, stop = cleaned["split"].ranges["train"]
    z = np.load(str(cleaned["out"]["z"]).format(subject="01")).astype(np.float64)
    varies = z[start:stop].std(axis=0) > 0
    assert np.allclose(z[start:stop, varies].mean(axis=0), 0, atol=1e-4)
    assert np.allclose(z[start:stop, varies].std(axis=0, ddof=1), 1, atol=1e-4)


def test_no_window_crosses_the_run_boundary(cleaned):
    split, runs = cleaned["split"], cleaned["info"]["runs"]
    for name in split.ranges:
        for t in split.targets(name):
            run = next(r for r in runs if r["fmri"][0] <= t < r["fmri"][1])
            start, stop = split.window(t)
            assert run["stimulus"][0] <= start and stop <= run["stimulus"][1], (name, t)


def test_a_flash_in_run_2_lands_at_the_right_volume(fixture, cleaned, tmp_path):
    """The movie flashes at a known time inside run 2: the frames show it at that stimulus TR, the
    flash voxels of the joined timeline respond ~5 s later, and the window of that response holds it."""
    config = cleaned["config"]
    run_stage("extract_frames", config)
    frames = np.load(paths.stimulus(config)["frames"], mmap_mode="r")
    flash_tr = int(round(fixture.flash_s / fixture.tr))
    assert int(np.argmax(frames.reshape(len(frames), -1).mean(axis=1))) == flash_tr
    run2 = cleaned["info"]["runs"][1]
    assert run2["stimulus"][0] + fixture.flash_volume == flash_tr  # the flash's volume in run 2, on the movie's clock

    truth = np.load(fixture.truth)
    group = np.load(cleaned["out"]["group"])
    in_mask = np.flatnonzero(truth["brain"])[truth["flash_voxels"]]
    columns = np.searchsorted(np.flatnonzero(cleaned["mask"]), in_mask)
    peak = int(np.argmax(group[:, columns].mean(axis=1)))
    flash_volume = run2["fmri"][0] + fixture.flash_volume  # the flash's volume on the joined timeline
    assert peak - flash_volume in (3, 4)  # the HRF peaks ~5 s (3.5 TRs) later
    assert flash_tr in range(*cleaned["split"].window(peak))


def test_a_missing_confounds_column_names_the_file(fixture, tmp_path):
    config = study_config(fixture, tmp_path / "results", "fmri.confounds=[trans_x, white_matter_typo]")
    arguments = stages.arguments("fmri_mask", config)
    with pytest.raises(InputError) as err:
        stages.STAGES["fmri_mask"](**arguments)
    assert err.value.path == Path(fixture.path("confounds", fixture.subjects[0], "1"))
    assert "white_matter_typo" in str(err.value) and "white_matter" in str(err.value)
    assert not Path(paths.fmri(config)["info"]).exists()


def test_a_run_that_does_not_fill_its_movie_segment_names_the_file(fixture, tmp_path):
    # Run 2 said to start at 90 s: run 1's segment is then 60 TRs, but it has 70 volumes after its dummies.
    config = study_config(fixture, tmp_path / "results")
    config["inputs"]["runs"][1]["start_s"] = 90.0
    with pytest.raises(InputError) as err:
        stages.STAGES["fmri_mask"](**stages.arguments("fmri_mask", config))
    assert err.value.path == Path(fixture.path("bold", fixture.subjects[0], "1"))
    assert "73 volumes" in str(err.value) and "[0, 90) s" in str(err.value)

    # A subject's run 2 cut short by 5 volumes.
    short = study_config(fixture, tmp_path / "short")
    source = Path(fixture.path("bold", "02", "2"))
    image = nib.load(source)
    cut = tmp_path / source.name
    nib.Nifti1Image(np.asarray(image.dataobj)[..., :-5], image.affine, image.header).to_filename(cut)
    runs = paths.runs(short)
    runs["02"][1]["bold"] = cut
    with pytest.raises(InputError) as err:
        from giblet.fmri.mask import prepare_fmri

        prepare_fmri(runs, fixture.tr, rules.params("fmri_mask", short)["fmri"], tmp_path / "m.nii.gz",
                     tmp_path / "i.json", movie=fixture.movie)
    assert err.value.path == cut and "lasts 80 TRs" in str(err.value)


def test_a_start_off_the_tr_grid_is_a_config_error(fixture, tmp_path):
    config = study_config(fixture, tmp_path / "results")
    config["inputs"]["runs"][1]["start_s"] = 105.7
    with pytest.raises(ConfigError, match=r"inputs.runs\[1\].start_s"):
        stages.STAGES["fmri_mask"](**stages.arguments("fmri_mask", config))


def test_bids_discovery_fills_the_inputs_and_giblet_config_prints_it(fixture, tmp_path, capsys):
    from giblet.cli import main

    overlay = {"dataset": "files", "inputs": {
        "movie": str(fixture.movie), "annotations": str(fixture.annotations),
        "bids": {"root": str(fixture.derivatives), "task": "movie", "space": fixture.space},
        "runs": [{"run": "1", "dummy_volumes": 3}, {"run": "2", "dummy_volumes": 3}]},
        "stimulus": {"audio": {"enabled": False}, "text": {"enabled": False}}}
    path = tmp_path / "bids.yaml"
    path.write_text(yaml.safe_dump(overlay))
    config = load_config(path)
    assert config["inputs"]["subjects"] == fixture.subjects
    assert config["inputs"]["bold"] == fixture.bold and config["inputs"]["confounds"] == fixture.confounds
    assert config["inputs"]["space"] == fixture.space
    assert [run["start_s"] for run in config["inputs"]["runs"]] == [None, None]  # contiguous
    assert main(["config", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "3 subjects" in printed or "subjects: 3" in printed or "01, 02, 03" in printed
    assert yaml.safe_load(printed)["inputs"]["bold"] == fixture.bold  # still valid YAML: the findings are comments
    with pytest.raises(ConfigError, match="inputs.runs"):
        load_config(path, ["inputs.runs=[{run: '1'}, {run: '3'}]"])


def test_fmriprep_example_runs_end_to_end(workflow_copy):
    """config/fmriprep_example.yaml through Snakemake on the fixture, written where the file points."""
    from tests.test_workflow import planned_jobs, snakemake

    study = write_fmriprep_like(workflow_copy / "data" / "fmriprep_example")
    overlay = workflow_copy / "config" / "offline.yaml"
    # Offline: no pretrained EnCodec/CLIP weights here, so audio, text and CLIP frames are off; training is short.
    overlay.write_text(yaml.safe_dump(apply_overrides({}, PIXELS_ONLY + ["train.epochs=2"] + QUICK_PRETRAIN)))
    run = snakemake(workflow_copy, "--configfile", "config/fmriprep_example.yaml", "config/offline.yaml")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    results = workflow_copy / "results" / "fmriprep_example"
    info = json.loads((results / "fmri" / "fmri.json").read_text())
    assert [run["fmri"] for run in info["runs"]] == [[0, 70], [70, 150]]
    sidecar = json.loads((results / "fmri" / "sub-01_z.json").read_text())
    assert [len(r["high_motion_volumes"]) for r in sidecar["parameters"]["cleaning"]["runs"]] == [2, 2]
    manifest = json.loads((results / "dataset" / "manifest.json").read_text())
    assert manifest["arrays"]["fmri"]["shape"][0] == 150
    metrics = json.loads((results / "evaluate" / "metrics" / "metrics.json").read_text())
    assert metrics["n_test"] > 0
    about = (results / "evaluate" / "report" / "about.csv").read_text()
    cleaning = next(line for line in about.splitlines() if line.startswith("cleaning,"))
    assert "each of 6 runs" in cleaning and "high-motion volumes interpolated" in cleaning
    # nilearn's filter="cosine" would have dropped the high-pass in every run (slow motion drifts);
    # giblet regresses the cosine terms itself, so it is applied everywhere.
    assert "NOT APPLIED" not in cleaning
    assert all(run["high_pass"].startswith("applied: 2 cosine term(s)")
               for run in sidecar["parameters"]["cleaning"]["runs"])
    check = json.loads((results / "check" / "inputs.json").read_text())
    assert check["ok"] and [row["status"] for row in check["runs"]] == ["ok"] * 6
    files = ("--configfile", "config/fmriprep_example.yaml", "config/offline.yaml")
    again = snakemake(workflow_copy, *files, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    # What reruns (the README's table): a cleaning key reruns the z-scoring, not the mask or the features ...
    (workflow_copy / "config" / "cleaning.yaml").write_text(yaml.safe_dump({"fmri": {"high_pass_hz": 0.02}}))
    plan = planned_jobs(snakemake(workflow_copy, *files, "config/cleaning.yaml", "-n"))
    assert plan.get("normalize_fmri") == 3 and plan.get("average_fmri") == 1, plan
    assert not {"fmri_mask", "plan_split", "extract_frames"} & set(plan), plan
    # ... and an edited confounds table reruns the fMRI chain from the mask on, not the features.
    table = Path(study.path("confounds", "02", "1"))
    edited = pd.read_csv(table, sep="\t", na_values="n/a")
    edited["global_signal"] += 1.0  # a column giblet does not regress out: new content, same checks
    edited.to_csv(table, sep="\t", index=False, na_rep="n/a")
    plan = planned_jobs(snakemake(workflow_copy, *files, "-n"))
    assert plan.get("fmri_mask") == 1 and plan.get("normalize_fmri") == 3, plan
    assert "extract_frames" not in plan, plan

    # Bad input: a table without a column giblet regresses out fails the pre-flight check first, then
    # (asked for alone) fmri_mask, each naming the table and the column, in the rule's log as well as
    # on the console; the other inputs are untouched.
    other = Path(study.path("confounds", "01", "1"))
    before = other.read_bytes()
    edited.drop(columns=["rot_z"]).to_csv(table, sep="\t", index=False, na_rep="n/a")
    failed = snakemake(workflow_copy, *files)
    assert failed.returncode != 0 and "check_inputs failed" in failed.stderr
    log = (results / "logs" / "check_inputs.log").read_text()
    assert str(table.relative_to(workflow_copy)) in log and "'rot_z'" in log and "sub-01 run-1" in log
    failed = snakemake(workflow_copy, str((results / "fmri" / "fmri.json").relative_to(workflow_copy)), *files)
    assert failed.returncode != 0
    log = (results / "logs" / "fmri_mask.log").read_text()
    message = next(line for line in log.splitlines() if "fmri_mask failed" in line)
    assert str(table.relative_to(workflow_copy)) in message and "'rot_z'" in message
    assert "'rot_z'" in failed.stderr and "fmri_mask failed" in failed.stderr
    assert other.read_bytes() == before
    assert not [p for p in results.rglob("*") if ".tmp" in p.name]
    shutil.rmtree(workflow_copy / "data")


def test_run_patterns_and_keys_that_do_not_fit_are_config_errors(fixture, tmp_path):
    config = study_config(fixture, tmp_path)
    unlabelled = [{**run, "run": None} for run in config["inputs"]["runs"]]
    with pytest.raises(ConfigError, match=r"inputs.bold.*\{run\}"):
        paths.runs({**config, "inputs": {**config["inputs"], "runs": unlabelled}})
    with pytest.raises(ConfigError, match="share a file"):
        paths.runs({**config, "inputs": {**config["inputs"], "bold": fixture.bold.replace("{run}", "1")}})
    with pytest.raises(ConfigError, match="fmri.motion.fd_threshold_mm"):
        study_config(fixture, tmp_path, "inputs.confounds=null")


def test_sessions_fill_their_placeholder(tmp_path):
    study = write_fmriprep_like(tmp_path / "study", n_subjects=2, trs_per_run=(30, 30), session="1")
    config = study_config(study, tmp_path / "results", "split.lag_trs=3")
    runs = paths.runs(config)
    assert [run["bold"].name for run in runs["01"]] == [
        f"sub-01_ses-1_task-movie_run-{k}_space-{study.space}_desc-preproc_bold.nii.gz" for k in (1, 2)]
    assert all(run[key].is_file() for entries in runs.values() for run in entries
               for key in ("bold", "confounds", "brain_mask"))
    run_stage("fmri_mask", config)
    assert json.loads(Path(paths.fmri(config)["info"]).read_text())["n_trs"] == 60
