"""Shared fixtures: small demo data sets generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from giblet.config import load_config

REPO = Path(__file__).resolve().parents[1]

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
