"""SLURM round-trip overhead per job, on the local single-node SLURM of scripts/local-slurm.

A chain of trivial jobs (each waits for the previous one, as most of giblet's DAG does) runs three
ways in the same session: Snakemake's local executor, Snakemake's SLURM executor with the settings
of tests/test_slurm.py (squeue status, first poll after 2 s), and bare `sbatch --wait` per job. The
seconds per job of each, and their differences, are the cost of going through SLURM.

Needs root and `apt-get install -y slurm-wlm munge`; starts and stops its own cluster (unless
SLURM_CONF already points at a running one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "local-slurm"

CHAIN = """
N = {n}

rule all:
    input: f"step{{N - 1}}.txt"

rule first:
    output: "step0.txt"
    shell: "echo 0 > {{output}}"

rule step:
    input: lambda w: f"step{{int(w.i) - 1}}.txt"
    output: "step{{i,[1-9][0-9]*}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""

PROFILE = """executor: slurm
jobs: 4
latency-wait: 5
default-resources:
  slurm_partition: debug
  runtime: 5
  mem_mb: 200
slurm-status-command: squeue
slurm-init-seconds-before-status-checks: 2
"""


def _timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def _chain(workdir: Path, n: int, env: dict, *executor_args: str) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / "Snakefile").write_text(CHAIN.format(n=n))
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(PROFILE)
    return _timed([sys.executable, "-m", "snakemake", "--cores", "1", *executor_args], workdir, env)


def slurm_roundtrip(quick: bool) -> dict:
    n = 3 if quick else 8
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    own_cluster = "SLURM_CONF" not in os.environ
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if own_cluster:
            env["GIBLET_SLURM_ROOT"] = str(tmp / "slurm")
            started = subprocess.run([SCRIPTS / "start.sh"], env=env, capture_output=True, text=True)
            if started.returncode != 0:
                return {"skipped": f"no local SLURM: {started.stderr.strip() or started.stdout.strip()}"}
            env["SLURM_CONF"] = str(tmp / "slurm" / "etc" / "slurm.conf")
        try:
            local = _chain(tmp / "local", n, env)
            via_slurm = _chain(tmp / "slurm-chain", n, env, "--profile", "profile")
            sbatch = sum(_timed(["sbatch", "--wait", "-Q", "-p", "debug", "--mem=100", "--wrap", "true"], tmp, env)
                         for _ in range(n))
        finally:
            if own_cluster:
                subprocess.run([SCRIPTS / "stop.sh"], env=env, capture_output=True)
    per_job = {"snakemake_local_s": local / n, "snakemake_slurm_s": via_slurm / n, "bare_sbatch_wait_s": sbatch / n}
    return {
        "jobs_in_chain": n,
        **{k: round(v, 2) for k, v in per_job.items()},
        "slurm_overhead_per_job_s": round(per_job["snakemake_slurm_s"] - per_job["snakemake_local_s"], 2),
        "snakemake_slurm_vs_bare_sbatch": round(per_job["snakemake_slurm_s"] / per_job["bare_sbatch_wait_s"], 2),
    }
