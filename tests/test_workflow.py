"""The Snakemake workflow: validation, dry run, lint, a real run, and 'only stale stages rerun'."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import giblet

from tests.conftest import DEMO_RUN

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Everything that reads the trained model (all but baseline_ridge, which reads only the dataset), and
# report_results, which reads evaluate's and baseline_ridge's results.
MODEL_READERS = {"verify_checkpoint": 1, "examine_weights": 1, "evaluate": 1, "plot_reconstructions": 1,
                 "lesion": 1, "training_summary": 1, "report_results": 1}


def snakemake(workdir: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if pythonpath:  # ahead of the editable install: Snakemake imports the giblet found there
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True,
                          text=True, env=env, timeout=600)


def ran_jobs(result: subprocess.CompletedProcess) -> dict:
    """Job counts of a real run, from its 'Finished jobid: N (Rule: name)' lines."""
    names = re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", result.stdout + result.stderr, re.M)
    return {name: names.count(name) for name in names}


def planned_jobs(result: subprocess.CompletedProcess) -> dict:
    """Job counts from a dry run's 'Job stats' table ({} when there is nothing to do)."""
    table = result.stdout.split("Job stats:")[-1] if "Job stats:" in result.stdout else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def test_dry_run_on_the_default_config(workflow_copy):
    result = snakemake(workflow_copy, "-n")
    assert result.returncode == 0, result.stderr
    # The whole plan, every subject's z-scoring included: no checkpoint hides a part of it.
    assert planned_jobs(result) == {"check_inputs": 1, "demo_dataset": 1, "extract_frames": 1, "encode_audio": 1, "embed_text": 1,
                                    "pretrain_frames": 1, "pretrain_audio": 1, "fmri_mask": 1, "plan_split": 1, "normalize_fmri": 4, "average_fmri": 1,
                                    "assemble_dataset": 1, "train": 1, "baseline_ridge": 1, **MODEL_READERS,
                                    "all": 1}


def test_a_disabled_modality_leaves_the_dag(workflow_copy):
    overlay = write_overlay(workflow_copy, ["stimulus.audio.enabled=false"], "silent.yaml")
    result = snakemake(workflow_copy, "-n", "--configfile", overlay)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert "encode_audio" not in jobs and jobs["extract_frames"] == 1 and jobs["embed_text"] == 1
    assert "pretrain_audio" not in jobs and jobs["pretrain_frames"] == 1


def test_without_pretraining_the_model_learns_from_the_brain_alone(workflow_copy):
    overlay = write_overlay(workflow_copy, ["pretrain.enabled=false"], "no_pretraining.yaml")
    result = snakemake(workflow_copy, "-n", "--configfile", overlay)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert "pretrain_frames" not in jobs and "pretrain_audio" not in jobs and jobs["train"] == 1


def test_mistyped_config_key_stops_snakemake_naming_the_key(workflow_copy):
    config = workflow_copy / "config" / "config.yaml"
    config.write_text(config.read_text().replace("n_subjects: 4", "n_subject: 4"))
    result = snakemake(workflow_copy, "-n")
    assert result.returncode != 0
    assert "unknown config key 'demo.n_subject'; did you mean 'demo.n_subjects'?" in result.stdout + result.stderr


def test_lint_is_clean_but_for_software_environments(workflow_copy):
    result = snakemake(workflow_copy, "--lint")
    out = result.stdout + result.stderr
    lints = re.findall(r"^\s+\* (.+?):?$", out, re.M)
    assert all(lint.startswith("Specify a conda environment or container") for lint in lints), out


def write_overlay(workdir: Path, overrides: list[str], name: str = "small.yaml") -> str:
    """Write ['demo.video.width=64', ...] as a nested YAML overlay for --configfile."""
    from giblet.config import apply_overrides

    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(apply_overrides({}, overrides)))
    return str(path.relative_to(workdir))


def test_configfile_overlay_extends_the_default_config(workflow_copy):
    """config/benchmark.yaml lists only what differs; Snakemake merges it over config/config.yaml."""
    result = snakemake(workflow_copy, "-n", "--configfile", "config/benchmark.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "results/benchmark/demo/fmri/sub-17_bold.nii.gz" in result.stdout
    assert "sub-18" not in result.stdout


@pytest.mark.slow
def test_demo_through_snakemake_and_only_stale_stages_rerun(finished_demo, tmp_path):
    # This test changes the run: its own copy, modification times kept.
    workflow_copy = Path(shutil.copytree(finished_demo["dir"], tmp_path / "wf", symlinks=True,
                                         copy_function=shutil.copy2))
    small, overlay = DEMO_RUN, finished_demo["overlay"]
    results = workflow_copy / "results"
    assert sorted(p.name for p in (results / "fmri").glob("sub-*_z.npy")) == [f"sub-0{k}_z.npy" for k in (1, 2, 3)]
    manifest = json.loads((results / "dataset" / "manifest.json").read_text())
    assert manifest["n_voxels"] == 3666
    assert set(manifest["modalities"]) == {"frames", "audio", "text", "frame_latents", "audio_latents"}
    assert manifest["arrays"]["frame_latents"]["shape"] == [100, 4, 16]
    assert manifest["arrays"]["frames"]["shape"] == [100, 4, 18, 32, 3]
    assert (results / "train" / "model.pt").exists() and list((results / "train" / "tensorboard").glob("events.*"))
    assert "giblet.demo.generate" in (results / "logs" / "demo_dataset.log").read_text()
    evaluation = results / "evaluate"
    metrics = json.loads((evaluation / "metrics" / "metrics.json").read_text())
    ridge = json.loads((evaluation / "ridge.json").read_text())
    assert metrics["n_test"] == ridge["n_test"] > 0 and metrics["fmri"].keys() == ridge["fmri"].keys()
    assert json.loads((evaluation / "verify.json").read_text())["ok"] is True
    # One HTML report with every figure, from Snakemake's own report machinery.
    html = (workflow_copy / "report.html").read_text(errors="replace")
    for figure in ("r_map.png", "video.png", "lesion.png", "training.png", "weights.png", "summary.csv",
                   "results.html", "metrics.csv", "ridge.csv", "r_map_viewer.html", "r_map_slices.png"):
        assert figure in html, figure
    assert (evaluation / "metrics" / "space-MNI152NLin2009aAsym_desc-modelr_stat.nii.gz").exists()

    # Nothing is stale: nothing reruns.
    assert planned_jobs(snakemake(workflow_copy, "--configfile", overlay, "-n")) == {}
    # One stage's parameter changed: that stage and what reads it rerun, nothing else.
    changed = write_overlay(workflow_copy, small + ["stimulus.frames.frame_skip=5"], "skip.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", changed, "-n")) == {
        "extract_frames": 1, "pretrain_frames": 1, "assemble_dataset": 1, "train": 1, "baseline_ridge": 1,
        **MODEL_READERS, "all": 1}
    # A pretraining key reruns that pretraining and what reads its latents, not the other one.
    repretrained = write_overlay(workflow_copy, small + ["pretrain.audio.latent_dim=8"], "pretrain.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", repretrained, "-n")) == {
        "pretrain_audio": 1, "assemble_dataset": 1, "train": 1, "baseline_ridge": 1, **MODEL_READERS, "all": 1}
    # A training parameter reruns training and what reads the model; not the data, not the ridge baseline.
    relearn = write_overlay(workflow_copy, small + ["train.lr=0.002"], "lr.yaml")
    planned = planned_jobs(snakemake(workflow_copy, "--configfile", relearn, "-n"))
    assert planned == {"train": 1, **MODEL_READERS, "all": 1}
    # An fMRI normalization parameter reruns the z-scoring and everything after it: not the mask, the
    # split or any stimulus feature.
    renormalized = write_overlay(workflow_copy, small + ["fmri.normalize_on=all"], "norm.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", renormalized, "-n")) == {
        "normalize_fmri": 3, "average_fmri": 1, "assemble_dataset": 1, "train": 1, "baseline_ridge": 1,
        **MODEL_READERS, "all": 1}
    # A figure option reruns that figure only.
    replotted = write_overlay(workflow_copy, small + ["evaluate.examples=3"], "plot.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", replotted, "-n")) == {
        "plot_reconstructions": 1, "all": 1}
    # Keys that say how training runs, not what it learns, retrain nothing.
    bookkeeping = write_overlay(workflow_copy, small + ["train.checkpoint.every_steps=7", "train.restarts=9",
                                                        "train.tensorboard_every_steps=3"], "run.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", bookkeeping, "-n")) == {}
    # One stage's package code changed (average_fmri's, in a copy of the package): that stage and what
    # depends on it rerun.
    edited = workflow_copy / "edited"
    shutil.copytree(Path(giblet.__file__).parent, edited / "giblet", ignore=shutil.ignore_patterns("__pycache__"))
    with open(edited / "giblet" / "fmri" / "group.py", "a") as f:
        f.write("\n# an edit\n")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", overlay, "-n", pythonpath=edited)) == {
        "average_fmri": 1, "assemble_dataset": 1, "train": 1, "baseline_ridge": 1, **MODEL_READERS, "all": 1}
    # The brain model's code changed: training and its readers rerun, never the stimulus pretraining.
    shutil.copy2(Path(giblet.__file__).parent / "fmri" / "group.py", edited / "giblet" / "fmri" / "group.py")
    with open(edited / "giblet" / "model" / "autoencoder.py", "a") as f:
        f.write("\n# an edit\n")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", overlay, "-n", pythonpath=edited)) == {
        "train": 1, **MODEL_READERS, "all": 1}
    # The run executes exactly what the dry run planned (here the training change's plan).
    rerun = snakemake(workflow_copy, "--configfile", relearn)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ran_jobs(rerun) == planned
    # The movie's content changed: the features and the split rerun, and the z-scoring that fits on the
    # split's training block; not the demo or the mask. (tests/test_reruns.py runs such a change.)
    with open(results / "demo" / "movie.mp4", "ab") as f:
        f.write(b"\0" * 64)  # trailing bytes: a new file as far as Snakemake can tell, still decodable
    # check_inputs reads the movie too (a changed input is checked again); nothing reads its report.
    assert planned_jobs(snakemake(workflow_copy, "--configfile", overlay, "-n")) == {
        "check_inputs": 1, "extract_frames": 1, "encode_audio": 1, "embed_text": 1, "pretrain_frames": 1,
        "pretrain_audio": 1, "plan_split": 1, "normalize_fmri": 3, "average_fmri": 1, "assemble_dataset": 1,
        "train": 1, "baseline_ridge": 1, **MODEL_READERS, "all": 1}
    # The demo's seed changes everything downstream of it.
    reseeded = write_overlay(workflow_copy, small + ["demo.seed=5"], "seed.yaml")
    assert planned_jobs(snakemake(workflow_copy, "--configfile", reseeded, "-n")).get("demo_dataset") == 1
