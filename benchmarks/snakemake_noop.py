"""No-op ``snakemake`` wall time (issue 7): the demo DAG and a Sherlock-shaped one (17 subjects).

Each DAG is built for real, at a tiny size (same jobs as the full demo, seconds of data), in a copy
of the workflow; then ``snakemake --cores 2`` is timed while there is nothing to do. The references,
timed in the same run: ``python -m snakemake --version`` (the interpreter plus Snakemake's own
imports) and a no-op on a one-rule Snakefile (Snakemake's fixed cost of parsing, building and
checking a DAG).

The ``giblet`` package is copied with the workflow and put first on PYTHONPATH, so that the build
and the no-ops see the same code even while the checkout is being edited (a changed source hash
would, rightly, rerun a stage).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from giblet.config import apply_overrides

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
GOAL_S = 3.0
# The full demo's DAG (4 subjects: 21 jobs with `all`) at a size that builds in a few minutes.
TINY = [
    "demo.n_trs=100", "demo.resolution_mm=8", "demo.video.width=64", "demo.video.height=36",
    "demo.audio.sample_rate=22050", "stimulus.frames.width=32", "stimulus.frames.height=18", "train.epochs=1",
]
DAGS = {"demo": ["demo.n_subjects=4"], "sherlock_shaped": ["demo.n_subjects=17"]}
TRIVIAL_SNAKEFILE = 'rule all:\n    input: "a.txt"\n\nrule make:\n    output: "a.txt"\n    shell: "touch {output}"\n'


def _env(cwd: Path) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if (cwd / "giblet").is_dir():  # the copied package, not the (editable) checkout's
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(cwd), timeout=1800)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
    return seconds, result


def _copy_workflow(dest: Path) -> Path:
    """The Snakefile, rules, config and profile, as a user's checkout has them, and the package."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "giblet"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _build(workdir: Path, args: list[str]) -> int:
    """Run the workflow to completion; the number of jobs it ran."""
    _, result = _run([*SNAKEMAKE, "--cores", "2", *args], workdir)
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", result.stdout + result.stderr)
    if not done:
        raise RuntimeError(f"could not count the jobs of the build in {workdir}:\n{result.stderr[-3000:]}")
    return int(done[-1][1])


def _noop_seconds(workdir: Path, args: list[str], repeats: int) -> list[float]:
    """Wall time of ``repeats`` no-op runs; fails if any of them finds something to do."""
    times = []
    for _ in range(repeats):
        seconds, result = _run([*SNAKEMAKE, "--cores", "2", *args], workdir)
        if "Nothing to be done" not in result.stdout + result.stderr:
            raise RuntimeError(f"the no-op run in {workdir} had work to do:\n{result.stdout}\n{result.stderr}")
        times.append(seconds)
    return times


def _summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def snakemake_noop(quick: bool) -> dict:
    """Seconds for a no-op ``snakemake`` on each DAG, and the ratios to the references."""
    repeats = 2 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trivial = tmp / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text(TRIVIAL_SNAKEFILE)
        _build(trivial, [])
        built = {}
        for name, extra in DAGS.items():
            workdir = _copy_workflow(tmp / name)
            overlay = workdir / "config" / "noop.yaml"
            overlay.write_text(yaml.safe_dump(apply_overrides({}, TINY + extra)))
            args = ["--configfile", str(overlay.relative_to(workdir))]
            t0 = time.perf_counter()
            n_jobs = _build(workdir, args)
            built[name] = (workdir, args, n_jobs, time.perf_counter() - t0)

        # Interleave the references and the no-ops, so that a noisy spell hits them alike.
        version, trivial_noop = [], []
        noop = {name: [] for name in built}
        for _ in range(repeats):
            version.append(_run([*SNAKEMAKE, "--version"], tmp)[0])
            trivial_noop += _noop_seconds(trivial, [], 1)
            for name, (workdir, args, _, _) in built.items():
                noop[name] += _noop_seconds(workdir, args, 1)

    version_s, trivial_s = statistics.median(version), statistics.median(trivial_noop)
    result = {"repeats": repeats, "goal_s": GOAL_S,
              "reference_version": _summary(version), "reference_trivial_noop": _summary(trivial_noop)}
    for name, (_, _, n_jobs, build_s) in built.items():
        median = statistics.median(noop[name])
        result[name] = {
            "jobs": n_jobs, "build_s": round(build_s, 1), **_summary(noop[name]),
            "ratio_vs_version": round(median / version_s, 2),
            "ratio_vs_trivial_noop": round(median / trivial_s, 2),
            "meets_goal": median <= GOAL_S,
        }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(snakemake_noop("--quick" in sys.argv), indent=2))
