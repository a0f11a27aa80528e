"""GPU scheduling: what Snakemake grants a job is what the job uses, and never more than it reserved."""

import logging
import re

import pytest

from giblet.errors import ConfigError
from giblet.devices import job_device, resolve_device
from giblet.train.launch import granted_gpus
from tests.test_workflow import snakemake, write_overlay


def test_training_starts_one_process_per_granted_gpu():
    assert granted_gpus(8, 8) == 8
    assert granted_gpus(0, 0) == 0


def test_fewer_granted_gpus_than_configured_are_used_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert granted_gpus(8, 4) == 4
    assert "train.gpus is 8 but --resources gpus=4: training with 4 processes" in caplog.text


def test_a_gpu_config_granted_no_gpu_fails_instead_of_training_on_the_cpu():
    with pytest.raises(ConfigError, match=r"train.gpus is 2 but Snakemake granted this job 0 GPUs .*--resources gpus=2"):
        granted_gpus(2, 0)


def test_a_stage_uses_a_gpu_only_when_its_job_reserved_one():
    assert job_device("auto", 0) == "cpu"
    assert job_device("cpu", 1) == "cpu"
    assert job_device("auto", 1) == resolve_device("auto")
    with pytest.raises(ConfigError, match="stimulus.audio.device: 'cuda' asked for, but Snakemake granted this job no GPU"):
        job_device("cuda", 0, "stimulus.audio.device")


def planned_resources(output: str) -> dict[str, dict[str, str]]:
    """Rule name -> its resources ({name: value}), from a dry run's job listing."""
    return {m.group(1): dict(item.split("=", 1) for item in m.group(2).split(", "))
            for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", output, re.M)}


def test_resources_gpus_caps_training_and_the_feature_models_reserve_one(workflow_copy):
    overlay = write_overlay(workflow_copy, ["train.gpus=4", "stimulus.text.device=cpu"])
    result = snakemake(workflow_copy, "-n", "--resources", "gpus=2", "--configfile", overlay)
    assert result.returncode == 0, result.stderr
    resources = planned_resources(result.stdout)
    def gpus(rule):
        return resources[rule].get("gpus"), resources[rule].get("gpu")

    assert gpus("train") == ("2", "4")  # local cap 2 (torchrun processes); SLURM would get 4
    assert gpus("encode_audio") == ("1", "1")  # device auto: may use a GPU, so it reserves one
    assert gpus("embed_text") == ("0", "0")  # device cpu: reserves none
    assert gpus("extract_frames") == (None, None)
