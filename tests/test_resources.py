"""Cluster requests: computed per rule from the data and the config, shown by a dry run of the SLURM
profile, and placed on the right partition by the SLURM plugin's own partition choice."""

import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml

from giblet import resources as R
from giblet.config import load_config
from giblet.stages import STAGES

from tests.conftest import REPO
from tests.test_workflow import snakemake, write_overlay

LOCAL_RULES = {"plan_split", "verify_checkpoint", "examine_weights", "training_summary", "report_results"}


def header_only_bold(path: Path, shape=(61, 73, 61, 1976), zooms=(3.0, 3.0, 3.0, 1.5)) -> Path:
    """A NIfTI whose header says Sherlock's size, without its 2 GB of data (only the header is read)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_zooms(zooms)
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


@pytest.fixture
def sherlock_config(tmp_path) -> dict:
    """config/sherlock.yaml with its inputs pointing at header-only files of the release's size."""
    for subject in range(1, 18):
        header_only_bold(tmp_path / f"sherlock_movie_s{subject}.nii")
    (tmp_path / "stimuli_Sherlock.m4v").write_bytes(b"")
    (tmp_path / "segments.xlsx").write_bytes(b"")
    return load_config(REPO / "config" / "sherlock.yaml",
                       [f"inputs.bold={tmp_path}/sherlock_movie_s{{subject}}.nii",
                        f"inputs.movie={tmp_path}/stimuli_Sherlock.m4v", f"inputs.annotations={tmp_path}/segments.xlsx"])


def test_sizes_come_from_the_demo_config_and_the_bold_header(sherlock_config):
    demo = R.data_size(load_config(None, ["demo.resolution_mm=4", "demo.n_trs=440", "demo.n_subjects=4"]))
    assert (demo.n_trs, demo.n_subjects, demo.grid_voxels) == (440, 4, 50 * 59 * 48)  # nilearn's 4 mm MNI grid
    assert abs(demo.brain_voxels - 29398) / 29398 < 0.05  # the demo's real mask at 4 mm
    real = R.data_size(sherlock_config)
    assert (real.n_trs, real.n_subjects, real.grid_voxels) == (1976, 17, 61 * 73 * 61)
    assert abs(real.brain_voxels - 69765) / 69765 < 0.05  # the MNI brain at 3 mm
    assert real.subject_mb == pytest.approx(1976 * 61 * 73 * 61 * 4 / 1e6)


def test_requests_grow_with_the_data_and_gpus_are_exactly_train_gpus(sherlock_config):
    demo = load_config(None, [])
    small, large = R.data_size(demo), R.data_size(sherlock_config)
    for rule in STAGES:
        a, b = R.resources(rule, demo, small), R.resources(rule, sherlock_config, large)
        assert 500 <= a["mem_mb"] <= b["mem_mb"] and 10 <= a["runtime"] <= b["runtime"], rule
        assert a.get("gpus", 0) == a.get("gpu", 0) and b.get("gpus", 0) == b.get("gpu", 0), rule
    # The fMRI stages hold a subject's volumes: Sherlock's 2.1 GB per subject shows in the request.
    assert R.resources("normalize_fmri", sherlock_config, large)["mem_mb"] >= 1.5 * large.subject_mb
    # Training asks for exactly train.gpus GPUs, with CPUs beside each; none means CPU threads only.
    gpu_train = R.resources("train", sherlock_config, large)
    assert sherlock_config["train"]["gpus"] == 8 and gpu_train["gpu"] == 8 and gpu_train["cpus_per_gpu"] == 8
    cpu_train = R.resources("train", demo, small)
    assert demo["train"]["gpus"] == 0 and cpu_train["gpu"] == 0 and "cpus_per_gpu" not in cpu_train
    assert R.threads("train", demo) > 1 and R.threads("train", sherlock_config) == 1
    # Several nodes: one task per node, the GPUs per node as gres (not --gpus), memory per node.
    nodes = R.resources("train", {**sherlock_config, "train": {**sherlock_config["train"], "nodes": 4}}, large)
    assert (nodes["nodes"], nodes["tasks"], nodes["mpi"], nodes["gres"], nodes["gpu"]) == (4, 4, "srun", "gpu:8", 0)
    assert nodes["mem_mb"] == gpu_train["mem_mb"] and nodes["cpus_per_task"] == 64 and nodes["gpus"] == 8
    # A stage told to use the CPU asks for no GPU.
    assert R.resources("embed_text", load_config(None, ["stimulus.text.device=cpu"]), small)["gpu"] == 0


def fake_job(rule: str, request: dict, threads: int):
    """What the SLURM plugin's partition choice reads of a job."""
    resources = SimpleNamespace(**request, get=lambda key, default=None: request.get(key, default))
    return SimpleNamespace(name=rule, resources=resources, threads=threads)


@pytest.mark.parametrize("which", ["demo", "sherlock"])
def test_no_job_without_gpus_lands_on_a_gpu_partition(which, sherlock_config):
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    config = load_config(None, []) if which == "demo" else sherlock_config
    partitions = read_partition_file(REPO / "profiles" / "slurm" / "partitions.yaml")
    logger = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None, debug=lambda *a, **k: None)
    size = R.data_size(config)
    chosen = {}
    for rule in sorted(set(STAGES) - LOCAL_RULES):
        request = R.resources(rule, config, size)
        chosen[rule] = get_best_partition(partitions, fake_job(rule, request, R.threads(rule, config)), logger)
        assert chosen[rule] == ("gpu" if request.get("gpu") else "cpu"), (rule, request)
    assert chosen["train"] == ("cpu" if config["train"]["gpus"] == 0 else "gpu")
    if config["train"]["gpus"]:  # its GPUs as per-node gres on several nodes: still a GPU partition
        request = R.resources("train", {**config, "train": {**config["train"], "nodes": 2}}, size)
        assert get_best_partition(partitions, fake_job("train", request, 1), logger) == "gpu"


def dry_run_requests(result) -> dict:
    """{rule: {resource: value}} from a dry run's job listing."""
    requests = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", result.stdout):
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        found = re.search(r"^\s+resources: (.+)$", block, re.M)
        if rule and found:
            requests[rule.group(1)] = dict(item.split("=", 1) for item in found.group(1).split(", "))
    return requests


@pytest.mark.parametrize("which", ["demo", "sherlock"])
def test_a_dry_run_of_the_slurm_profile_shows_each_rules_request(which, workflow_copy, sherlock_config, tmp_path):
    if which == "demo":  # with CLIP frame features beside the pixels, so that every rule is in the plan
        config = load_config(None, ["stimulus.frames.features=both"])
        args = ["--configfile", write_overlay(workflow_copy, ["stimulus.frames.features=both"], "clip.yaml")]
    else:
        config = sherlock_config
        overlay = write_overlay(workflow_copy, [f"inputs.{key}={config['inputs'][key]}" for key in
                                               ("bold", "movie", "annotations")], "site.yaml")
        args = ["--configfile", "config/sherlock.yaml", overlay]
    result = snakemake(workflow_copy, "-n", "--profile", "profiles/slurm", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    requests = dry_run_requests(result)
    size = R.data_size(config)
    assert set(requests) >= set(STAGES) - ({"demo_dataset", "embed_frames"} if which == "sherlock" else set())
    for rule, shown in requests.items():
        if rule == "all":
            continue
        expected = R.resources(rule, config, size)
        assert int(shown["mem_mb"]) == expected["mem_mb"] and int(shown["runtime"]) == expected["runtime"], rule
        assert int(shown.get("gpu", 0)) == expected.get("gpu", 0), rule
        assert "slurm_partition" not in shown, rule  # partitions.yaml decides, by what the job asks for
    assert "--signal=USR1@600" in requests["train"]["slurm_extra"]


def test_the_profile_holds_only_site_keys():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["slurm-partition-config"] == "profiles/slurm/partitions.yaml"
    assert "default-resources" not in profile or not {"mem_mb", "runtime"} & set(profile["default-resources"])
    for rule, request in profile["set-resources"].items():
        assert not {"mem_mb", "runtime", "slurm_partition", "gpu", "gpus"} & set(request), rule
