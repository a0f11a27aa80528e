"""Shared fixtures: small demo data sets generated once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from giblet.config import load_config

REPO = Path(__file__).resolve().parents[1]
# The code-hash cache (giblet/code_hash.py) of this session, for it and every Snakemake it starts:
# not the user's ~/.cache.
os.environ.setdefault("GIBLET_CACHE_DIR", tempfile.mkdtemp(prefix="giblet-cache-"))

# A demo small enough for tests (8 mm grid: 3,666 voxels; a 64x36 movie) but with every moving part.
SMALL_DEMO = [
    "demo.n_trs=100", "demo.n_subjects=3", "demo.resolution_mm=8",
    "demo.video.width=64", "demo.video.height=36", "demo.audio.sample_rate=22050",
]


@pytest.fixture(scope="session")
def small_config() -> dict:
    return load_config(None, SMALL_DEMO)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory, small_config) -> dict:
    """Paths of a generated small demo (see giblet.demo.output_paths), plus 'config' and 'dir'."""
    from giblet.demo.generate import make_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    paths = make_demo(small_config["demo"], small_config["tr"], out, progress=False)
    return {**paths, "config": small_config, "dir": out}


def copy_workflow(dest: Path) -> Path:
    """Copy the Snakemake workflow (Snakefile, rules, config, profile) into ``dest``."""
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A copy of the Snakemake workflow in a temp directory."""
    return copy_workflow(tmp_path)


# The small demo that the workflow and report tests run through Snakemake (one epoch, 32x18 frames).
# Pretraining kept short: its tests are tests/test_pretrain.py.
QUICK_PRETRAIN = ["pretrain.frames.epochs=2", "pretrain.audio.epochs=5"]
DEMO_RUN = SMALL_DEMO + ["stimulus.frames.width=32", "stimulus.frames.height=18", "train.epochs=1"] + QUICK_PRETRAIN


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory) -> dict:
    """The small demo run once through Snakemake, every rule, and its HTML report: ``dir`` (the workflow
    folder, results and .snakemake inside), ``overlay`` (its --configfile) and ``stdout`` of the run.
    Read it, or copy it (``shutil.copytree(..., copy_function=shutil.copy2)`` keeps the times) to change it."""
    import yaml

    from giblet.config import apply_overrides
    from tests.test_workflow import snakemake

    workdir = copy_workflow(tmp_path_factory.mktemp("finished_demo"))
    overlay = workdir / "config" / "small.yaml"
    overlay.write_text(yaml.safe_dump(apply_overrides({}, DEMO_RUN)))
    run = snakemake(workdir, "--configfile", "config/small.yaml")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    report = snakemake(workdir, "--configfile", "config/small.yaml", "--report", "report.html")
    assert report.returncode == 0, report.stdout[-5000:] + report.stderr[-5000:]
    return {"dir": workdir, "overlay": "config/small.yaml", "stdout": run.stdout + run.stderr}
