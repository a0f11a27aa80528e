"""A real single-node SLURM for the tests: scripts/local-slurm/start.sh, stopped by PID afterwards.

Needs root and Debian's `slurm-wlm` and `munge` (.ci/run installs them). Elsewhere the tests that use
it skip and say why, unless GIBLET_REQUIRE_SLURM=1 (set by .ci/run), where a skip would hide a
broken CI and so fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "local-slurm"


def unavailable_reason() -> str | None:
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if missing:
        return f"no local SLURM: {', '.join(missing)} not found (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "no local SLURM: starting slurmd needs root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start the cluster once per session; yields its environment (SLURM_CONF set)."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("GIBLET_REQUIRE_SLURM") == "1":
            pytest.fail(f"GIBLET_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "GIBLET_SLURM_ROOT": str(root), "GIBLET_SLURM_GPUS": "2"}
    started = subprocess.run([SCRIPTS / "start.sh"], env=env, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([SCRIPTS / "stop.sh"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"scripts/local-slurm/start.sh failed:\n{started.stdout}\n{started.stderr}")
    env["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
    try:
        yield {"env": env, "root": root}
    finally:
        subprocess.run([SCRIPTS / "stop.sh"], env=env, capture_output=True, timeout=120)


def finished_jobs(root: Path) -> dict[int, str]:
    """SLURM job id -> final state, from the cluster's job-completion log."""
    log = root / "log" / "jobcomp.txt"
    jobs = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        jobs[int(fields["JobId"])] = fields["JobState"]
    return jobs
