"""The demo through `snakemake --profile profiles/slurm` on a real (local, single-node) SLURM.

Proves: every job goes through sbatch and the outputs are right; GPU requests reach SLURM as GRES;
and a training job stopped by a signal checkpoints, exits 75, is resubmitted, and resumes from its
step, not from step 0 (what a time limit's `--signal=USR1@600` or a preemption does on a cluster).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMALL_DEMO
from tests.slurm_cluster import finished_jobs, slurm_cluster  # noqa: F401 (fixture)
from tests.test_workflow import write_overlay

SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/")


def local_cluster_profile(workdir: Path) -> str:
    """profiles/slurm as shipped, with only the site keys a lab edits changed for this cluster: its one
    partition (with the fake GPU), and memory, CPU and time caps that fit this small machine."""
    from giblet.stages import STAGES

    profile = yaml.safe_load((workdir / "profiles" / "slurm" / "config.yaml").read_text())
    partitions = {"partitions": {"debug": {"max_runtime": 60, "max_gpu": 1, "max_mem_mb": 8000}}}
    (workdir / "profiles" / "slurm" / "partitions.yaml").write_text(yaml.safe_dump(partitions))
    for rule in STAGES:
        profile["set-resources"].setdefault(rule, {}).update(mem_mb=1500, runtime=10)
    for rule in ("train", "pretrain_frames", "pretrain_audio"):  # the jobs the profile signals USR1@600
        profile["set-resources"][rule]["runtime"] = 30  # longer than the USR1 lead time (600 s)
    # One CPU per job: this node's 2 CPUs run two jobs at once, as a cluster runs jobs side by side.
    profile.update({"jobs": 4, "max-threads": 1, "latency-wait": 5,
                    # no slurmdbd here: sacct cannot answer, squeue can; status checks 1 s after a job
                    # is submitted or one ends (the executor waits 10 s more after each check that finds
                    # nothing new)
                    "slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1})
    target = workdir / "profiles" / "local-cluster"
    target.mkdir()
    (target / "config.yaml").write_text(yaml.safe_dump(profile))
    return str(target.relative_to(workdir))


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"snakemake exited ({process.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_demo_on_slurm_every_job_submitted_and_training_resumes_after_a_signal(slurm_cluster, workflow_copy):
    # Without audio: EnCodec on the CPU is the slowest job and adds nothing SLURM-specific. Two subjects:
    # their normalize_fmri jobs (one per subject, as with three) run side by side on the node's 2 CPUs.
    small = SMALL_DEMO + ["demo.n_subjects=2", "stimulus.frames.width=32", "stimulus.frames.height=18",
                          "stimulus.audio.enabled=false", "train.epochs=25", "pretrain.frames.epochs=2",
                          "train.early_stopping_patience=0", "train.checkpoint.every_steps=5"]
    overlay = write_overlay(workflow_copy, small)
    profile = local_cluster_profile(workflow_copy)
    env = slurm_cluster["env"]
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    log_path = workflow_copy / "snakemake.out"
    with open(log_path, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", profile, "--verbose",
                                "--configfile", overlay],
                               cwd=workflow_copy, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            # Once training has written a checkpoint, signal its job the way SLURM does before a time limit.
            checkpoints = workflow_copy / "results" / "train" / "checkpoints"
            train_logs = workflow_copy / ".snakemake" / "slurm_logs" / "rule_train"
            wait_for(lambda: list(checkpoints.rglob("*.pt")), 420, "the first training checkpoint", run)
            job_id = wait_for(lambda: [p.stem for p in train_logs.rglob("*.log")], 10, "the train job's log", run)[0]
            subprocess.run(["scancel", "--signal=USR1", job_id], env=env, check=True)
            run.wait(timeout=420)
        finally:
            if run.poll() is None:
                run.kill()
    output = log_path.read_text()
    assert run.returncode == 0, output[-4000:]

    # Every job but the local rules (seconds of work) went through sbatch, and SLURM saw each one end.
    submitted = [(int(job), rule) for job, rule in SUBMITTED.findall(output)]
    rules = sorted(rule for _, rule in submitted)
    assert rules == sorted(["demo_dataset", "extract_frames", "embed_text", "pretrain_frames", "fmri_mask",
                            "normalize_fmri", "normalize_fmri", "average_fmri",
                            "assemble_dataset", "train", "train", "baseline_ridge",
                            "evaluate", "plot_reconstructions", "lesion"])
    assert (workflow_copy / "results" / "evaluate" / "training.png").exists()  # made by a local rule
    # The pre-flight check ran in the Snakemake process itself, and passed.
    assert re.search(r"^localrule check_inputs:", output, re.M)
    assert json.loads((workflow_copy / "results" / "check" / "inputs.json").read_text())["ok"] is True
    # The profile's cluster options reached sbatch (--verbose logs each call).
    calls = {re.search(r"--comment '?rule_(\w+?)(?:_wildcards\S*)?'? ", call).group(1): call
             for call in re.findall(r"sbatch call: (.+)", output)}
    assert "--signal=USR1@600" in calls["train"] and "--requeue" in calls["train"]
    assert "--gpus=1" in calls["embed_text"] and "--gpus" not in calls["extract_frames"]
    assert "-p debug" in calls["embed_text"] and "-p debug" in calls["train"]  # chosen from partitions.yaml
    assert "--mem" in calls["fmri_mask"] and "-t 10" in calls["fmri_mask"].replace("'", ""), calls["fmri_mask"]
    states = finished_jobs(slurm_cluster["root"])
    train_jobs = [job for job, rule in submitted if rule == "train"]
    assert [states[job] for job in train_jobs] == ["FAILED", "COMPLETED"]  # exit 75, then the resubmission
    assert all(states[job] == "COMPLETED" for job, rule in submitted if rule != "train")

    # The resubmitted job resumed where the signal stopped the first one; every step ran exactly once.
    # (Snakemake clears the rule's log for each attempt; SLURM keeps each job's own log.)
    first, second = (workflow_copy / ".snakemake" / "slurm_logs" / "rule_train" / f"{job}.log" for job in train_jobs)
    saved = int(re.search(r"signal SIGUSR1: saving at step (\d+)", first.read_text()).group(1))
    resumed = int(re.search(r"resumed at step (\d+)", second.read_text()).group(1))
    assert resumed == saved >= 1  # signalled after the first checkpoint (an epoch's end or step 5): never from 0
    history = [json.loads(line) for line in (workflow_copy / "results" / "train" / "history.jsonl").open()]
    steps = [entry["step"] for entry in history if "train/total" in entry]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > saved

    # The text model's job asked for one GPU (stimulus.text.device: auto) and SLURM allocated a (fake) one.
    assert "GPUs granted: 1, CUDA_VISIBLE_DEVICES=0" in (workflow_copy / "results" / "logs" / "embed_text.log").read_text()
    metrics = json.loads((workflow_copy / "results" / "evaluate" / "metrics" / "metrics.json").read_text())
    assert metrics["n_test"] > 0
