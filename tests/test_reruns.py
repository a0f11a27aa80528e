"""No input change can break a rerun (issue 13): after a complete run, change one input the way a
user would, then ``snakemake -n`` must show a plan, the real run must succeed and run exactly the
jobs the dry run planned, only the stale stages may rerun, and the new content must reach the
outputs.

Set-up: real-data mode (``dataset: files``) on a copy of the small demo (tests/conftest.py), with
subjects 01 and 02, a mask file (``fmri.mask: data/mask.nii.gz``), audio off (EnCodec is the
slowest feature; it reruns exactly where ``extract_frames`` does, both read only the movie) and
local stand-in CLIP weights (``dataset: files`` refuses the demo's random ones; tests/sherlock_like.py).
The inputs live in the project folder (``data/``), the target is ``results/dataset/manifest.json``
(everything up to training). One complete run per module; every scenario works on its own copy of
that project folder (mtimes preserved, ``.snakemake/`` included).

| scenario (what the user does) | reruns | does not rerun |
|---|---|---|
| replaces one subject's BOLD with new content | `fmri_mask`, `plan_split`, `normalize_fmri` (every subject: the mask is rebuilt), `average_fmri`, `assemble_dataset` | `extract_frames`, `embed_text` |
| touches one subject's BOLD (`touch`, content unchanged) | the same as a new BOLD (Snakemake goes by modification times); the z arrays come out identical | `extract_frames`, `embed_text` |
| replaces the movie (a different movie of the same duration) | `extract_frames`, `encode_audio` (when on), `embed_text`, `pretrain_frames` (and `pretrain_audio` when audio is on), `plan_split`, `normalize_fmri` (every subject), `average_fmri`, `assemble_dataset`; the z arrays come out identical (the training block did not move) | `fmri_mask` |
| edits the annotation table | `embed_text`, `assemble_dataset` | `extract_frames`, `plan_split`, the fMRI stages |
| edits the mask file of `fmri.mask: <path>` | `fmri_mask`, `plan_split`, `normalize_fmri` (every subject), `average_fmri`, `assemble_dataset` | `extract_frames`, `embed_text` |
| copies the whole project folder (`cp -r`, new mtimes; `results/` and `.snakemake/` with it) and runs there | nothing, or a correct complete rerun: whatever the dry run plans, and the results equal the original's | |
| adds a subject to `inputs.subjects` | `fmri_mask`, `plan_split`, `normalize_fmri` (every subject, the new one included), `average_fmri`, `assemble_dataset` | `extract_frames`, `embed_text` |

Whenever ``assemble_dataset`` reruns, so does everything after it (``train``, ``baseline_ridge``, the
evaluation); the tests stop at the manifest to stay fast.

Why these sets:

- ``plan_split`` reruns whenever ``fmri_mask`` does: it reads ``fmri.json`` (the kept subjects and
  their length), which ``fmri_mask`` rewrites. Every ``normalize_fmri`` job reruns with it: the mask
  and ``fmri.json`` are its inputs, and the mask of all subjects can change with any one of them.
- After a movie edit the z-scoring and the group average rerun although the fMRI did not change:
  they fit on the training block, which ``plan_split`` computes from the movie's length too, and
  Snakemake cannot know the block stayed put before ``plan_split`` has run. Skipping them (an
  ``ancient`` split, or the block as a param read from a checkpoint) either leaves stale z-scores
  when the block moves or breaks the run; rerunning them is cheap and the results come out identical.
- Small inputs (< 1 MB: the annotation table, the mask, the split) that are only touched do not
  rerun anything (Snakemake compares their recorded checksums); a touched BOLD file (larger) does.
- ``snakemake -n`` must list every job the run will do, every ``normalize_fmri`` job included: no
  job may appear only once an upstream job has run (a checkpoint), and no param may be read from a
  file that a job of the same run rewrites (it would be a placeholder, ``'<TBD>'``).
- ``cp -r`` gives every copied file a new modification time, in copy order, so inputs may end up
  newer than outputs. Copying the whole project folder, ``.snakemake/`` included, is what a user
  does (``.snakemake/`` holds the params, code and input checksums that Snakemake compares); the
  run there may do nothing or rerun stages, but exactly what its dry run shows, and the results
  must equal the original's.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import copy_workflow
from tests.sherlock_like import write_offline_weights
from tests.test_workflow import planned_jobs, ran_jobs, snakemake

TARGET = "results/dataset/manifest.json"
SUBJECTS = ["01", "02"]  # the demo's sub-03 is the subject a user adds (scenario 7)
# What each kind of change reruns (the docstring's table); rule -> job count.
FMRI_CHAIN = {"fmri_mask": 1, "plan_split": 1, "normalize_fmri": len(SUBJECTS), "average_fmri": 1,
              "assemble_dataset": 1}
STIMULUS = {"extract_frames", "embed_text", "pretrain_frames"}


def overlay(subjects: list[str], clip: Path) -> dict:
    return {
        "dataset": "files",
        "inputs": {"movie": "data/movie.mp4", "annotations": "data/annotations.tsv",
                   "bold": "data/sub-{subject}_bold.nii.gz", "subjects": subjects},
        "fmri": {"mask": "data/mask.nii.gz"},
        "stimulus": {"frames": {"width": 32, "height": 18}, "audio": {"enabled": False},
                     "text": {"pretrained": str(clip)}},
        "pretrain": {"frames": {"epochs": 2}},
    }


def write_config(project: Path, subjects: list[str], clip: Path, name: str = "reruns.yaml") -> str:
    path = project / "config" / name
    path.write_text(yaml.safe_dump(overlay(subjects, clip)))
    return str(path.relative_to(project))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(project: Path) -> dict:
    """SHA-256 of every file under results/ (logs and Snakemake's job benchmarks, which record times, aside)."""
    results = project / "results"
    return {str(p.relative_to(results)): digest(p) for p in sorted(results.rglob("*"))
            if p.is_file() and not {"logs", "benchmarks"} & set(p.relative_to(results).parts)}


@pytest.fixture(scope="module")
def weights(small_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("rerun_weights")
    paths = write_offline_weights(out, small_demo["movie"])
    Path(paths["encodec"]).unlink()  # audio is off; only the CLIP stand-in is read
    yield paths
    shutil.rmtree(out)  # ~300 MB that pytest would otherwise keep


@pytest.fixture(scope="module")
def finished(small_demo, weights, tmp_path_factory) -> dict:
    """A project folder after one complete run: the workflow, data/ (the inputs), results/, .snakemake/."""
    project = tmp_path_factory.mktemp("reruns") / "project"
    project.mkdir()
    copy_workflow(project)
    data = project / "data"
    data.mkdir()
    shutil.copy2(small_demo["movie"], data / "movie.mp4")
    shutil.copy2(small_demo["annotations"], data / "annotations.tsv")
    for bold in small_demo["bold"]:
        shutil.copy2(bold, data / Path(bold).name)
    first = nib.load(data / "sub-01_bold.nii.gz")
    brain = np.asarray(first.dataobj).std(axis=-1) > 0
    nib.Nifti1Image(brain.astype(np.uint8), first.affine).to_filename(data / "mask.nii.gz")
    config = write_config(project, SUBJECTS, weights["clip"])
    result = snakemake(project, TARGET, "--configfile", config)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert ran_jobs(result) == {**FMRI_CHAIN, "extract_frames": 1, "embed_text": 1, "pretrain_frames": 1}
    assert planned_jobs(snakemake(project, TARGET, "--configfile", config, "-n")) == {}
    return {"project": project, "config": config, "outputs": outputs(project), "clip": weights["clip"]}


@pytest.fixture
def project(finished, tmp_path) -> Path:
    """This test's own copy of the finished project folder, modification times preserved."""
    return Path(shutil.copytree(finished["project"], tmp_path / "project", symlinks=True,
                                copy_function=shutil.copy2))


def rerun(project: Path, config: str) -> dict:
    """Dry run, then the real run: both must succeed, and the run must do what the dry run planned.
    Returns the jobs that ran."""
    dry = snakemake(project, TARGET, "--configfile", config, "-n")
    assert dry.returncode == 0, dry.stdout[-5000:] + dry.stderr[-5000:]
    planned = planned_jobs(dry)
    result = snakemake(project, TARGET, "--configfile", config)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    ran = ran_jobs(result)
    assert ran == planned, (planned, dry.stdout[-3000:])
    # And afterwards nothing is stale.
    assert planned_jobs(snakemake(project, TARGET, "--configfile", config, "-n")) == {}
    return ran


def load(project: Path, name: str) -> np.ndarray:
    return np.load(project / "results" / "fmri" / name)


def touch_later(path: Path) -> None:
    """Set ``path``'s modification time to now, strictly later than every output's."""
    time.sleep(0.01)
    os.utime(path)


@pytest.mark.slow
def test_a_replaced_bold_reruns_the_fmri_stages_and_reaches_the_group(project, finished):
    before = {name: load(project, name) for name in ("sub-01_z.npy", "sub-02_z.npy", "group.npy")}
    path = project / "data" / "sub-01_bold.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = data.std(axis=-1) > 0
    noise = np.random.default_rng(13).normal(0, 0.5 * data[brain].std(), size=data.shape).astype(np.float32)
    data[brain] += noise[brain]
    nib.Nifti1Image(data, image.affine, image.header).to_filename(path)

    ran = rerun(project, finished["config"])
    assert ran == FMRI_CHAIN
    assert not np.allclose(load(project, "sub-01_z.npy"), before["sub-01_z.npy"])
    assert np.array_equal(load(project, "sub-02_z.npy"), before["sub-02_z.npy"])
    assert not np.allclose(load(project, "group.npy"), before["group.npy"])


@pytest.mark.slow
def test_a_touched_bold_reruns_the_fmri_stages_with_identical_results(project, finished):
    touch_later(project / "data" / "sub-01_bold.nii.gz")
    ran = rerun(project, finished["config"])
    assert ran == FMRI_CHAIN
    after = outputs(project)
    fmri = [key for key in finished["outputs"] if key.startswith("fmri/") and key.endswith(".npy")]
    assert fmri and {key: after[key] for key in fmri} == {key: finished["outputs"][key] for key in fmri}


def write_other_movie(path: Path, small_demo: dict) -> None:
    """A different movie of the same duration, size and codecs: the demo's renderer, another seed."""
    from giblet.demo.generate import STREAM_LATENTS, STREAM_SOUND, fine_step
    from giblet.demo.latents import make_latents
    from giblet.demo.movie import write_movie

    demo, tr = small_demo["config"]["demo"], small_demo["config"]["tr"]
    duration = demo["n_trs"] * tr
    latents = make_latents(np.random.default_rng([99, STREAM_LATENTS]), duration, fine_step(tr), demo["scenes"])
    write_movie(path, latents, duration, tr, demo["video"], demo["audio"]["sample_rate"],
                np.random.default_rng([99, STREAM_SOUND]), progress=False)


@pytest.mark.slow
def test_a_replaced_movie_reruns_the_features_and_leaves_the_fmri_results_unchanged(project, finished, small_demo):
    write_other_movie(project / "data" / "movie.mp4", small_demo)
    ran = rerun(project, finished["config"])
    assert ran == {"extract_frames": 1, "embed_text": 1, "pretrain_frames": 1, "plan_split": 1,
                   "normalize_fmri": len(SUBJECTS), "average_fmri": 1, "assemble_dataset": 1}
    after, before = outputs(project), finished["outputs"]
    assert after["stimulus/frames.npy"] != before["stimulus/frames.npy"]
    assert after["stimulus/text.npy"] == before["stimulus/text.npy"]  # same annotations, same clock
    # Same duration: the same split, so the same z-scores and group average.
    fmri = [key for key in before if key.startswith(("fmri/", "dataset/split")) and key.endswith((".npy", "split.json"))]
    assert {key: after[key] for key in fmri} == {key: before[key] for key in fmri}
    manifest = json.loads((project / TARGET).read_text())
    assert manifest["arrays"]["frames"]["sha256"] == digest(project / "results" / "stimulus" / "frames.npy")


@pytest.mark.slow
def test_an_edited_annotation_table_reruns_the_text_features_only(project, finished):
    path = project / "data" / "annotations.tsv"
    touch_later(path)  # only touched: a small file whose checksum Snakemake recorded, so nothing reruns
    assert planned_jobs(snakemake(project, TARGET, "--configfile", finished["config"], "-n")) == {}
    lines = path.read_text().splitlines()
    onset, offset, text = lines[1].split("\t")
    lines[1] = "\t".join([onset, offset, "A purple giraffe recites the alphabet."])
    path.write_text("\n".join(lines) + "\n")

    ran = rerun(project, finished["config"])
    assert ran == {"embed_text": 1, "assemble_dataset": 1}
    library = np.load(project / "results" / "stimulus" / "text_annotations.npz")
    assert "A purple giraffe recites the alphabet." in library["texts"].tolist()
    after = outputs(project)
    assert after["stimulus/text.npy"] != finished["outputs"]["stimulus/text.npy"]


@pytest.mark.slow
def test_an_edited_mask_file_reruns_the_mask_and_the_fmri_stages(project, finished):
    path = project / "data" / "mask.nii.gz"
    image = nib.load(path)
    mask = np.asarray(image.dataobj) > 0
    before = int(mask.sum())
    mask[: mask.shape[0] // 4] = False  # drop the brain's left quarter
    dropped = before - int(mask.sum())
    assert dropped > 0
    nib.Nifti1Image(mask.astype(np.uint8), image.affine).to_filename(path)

    ran = rerun(project, finished["config"])
    assert ran == FMRI_CHAIN
    old = json.loads(Path(finished["project"], TARGET).read_text())["n_voxels"]
    manifest = json.loads((project / TARGET).read_text())
    assert manifest["n_voxels"] == old - dropped
    assert load(project, "group.npy").shape[1] == old - dropped


@pytest.mark.slow
def test_a_project_copied_with_cp_r_reruns_only_what_its_dry_run_shows_and_keeps_the_results(finished, tmp_path):
    """A user copies the whole project folder (inputs, config, results/ and .snakemake/) with a plain
    ``cp -r``: every file gets a new modification time, in copy order."""
    copy = tmp_path / "copied"
    subprocess.run(["cp", "-r", str(finished["project"]), str(copy)], check=True)
    ran = rerun(copy, finished["config"])
    print("cp -r reran:", ran)  # shown with -rP: which stages Snakemake considered stale
    assert outputs(copy) == finished["outputs"]


@pytest.mark.slow
def test_an_added_subject_reruns_the_fmri_stages_and_joins_the_group(project, finished, small_demo):
    config = write_config(project, [*SUBJECTS, "03"], finished["clip"], "added.yaml")
    ran = rerun(project, config)
    assert ran == {**FMRI_CHAIN, "normalize_fmri": 3}
    info = json.loads((project / "results" / "fmri" / "fmri.json").read_text())
    assert info["subjects"] == ["01", "02", "03"]
    assert np.load(project / "results" / "fmri" / "ceiling.npz")["n_subjects"] == 3
    assert (project / "results" / "fmri" / "sub-03_z.npy").exists()


@pytest.mark.slow
def test_a_corrupt_bold_fails_its_stage_with_the_error_in_the_rule_log(project, finished):
    """Bad input: the job fails naming the file, in the rule's log (message, then traceback: where SLURM
    users look) as well as on the console; no temporary files stay behind; the other inputs are intact."""
    bold = project / "data" / "sub-02_bold.nii.gz"
    bold.write_bytes(b"not a NIfTI at all")
    untouched = digest(project / "data" / "sub-01_bold.nii.gz")
    result = snakemake(project, TARGET, "--configfile", finished["config"])
    assert result.returncode != 0
    log = (project / "results" / "logs" / "fmri_mask.log").read_text()
    message = next(line for line in log.splitlines() if "fmri_mask failed" in line)
    assert "data/sub-02_bold.nii.gz" in message and "Traceback (most recent call last)" in log
    assert "data/sub-02_bold.nii.gz" in result.stderr and "fmri_mask failed" in result.stderr
    assert not [p for p in (project / "results").rglob("*") if ".tmp" in p.name]
    assert digest(project / "data" / "sub-01_bold.nii.gz") == untouched
