"""``pip install -e '.[bench]'`` installs what every benchmark imports: each third-party module that
``benchmarks/`` imports (at the top or inside a function) belongs to a distribution that giblet's own
requirements or its ``bench`` extra bring in, directly or through their dependencies."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

OWN = {"giblet", "benchmarks", "tests"}


def imported_top_levels(folder: Path) -> set[str]:
    names = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in OWN and name not in sys.stdlib_module_names}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_closure(distribution: str, extras: tuple[str, ...]) -> set[str]:
    """Normalised names of ``distribution`` and everything its requirements (with ``extras``) pull in."""
    seen, todo = set(), [(distribution, extras)]
    while todo:
        name, wanted = todo.pop()
        if _normal(name) in seen and not wanted:
            continue
        seen.add(_normal(name))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": extra}) for extra in ("", *wanted)):
                continue
            try:
                metadata.distribution(requirement.name)
            except metadata.PackageNotFoundError:
                continue  # a platform-specific requirement not installed here
            if _normal(requirement.name) not in seen:
                todo.append((requirement.name, tuple(requirement.extras)))
    return seen


def test_the_bench_extra_installs_what_every_benchmark_imports():
    providers = metadata.packages_distributions()
    closure = installed_closure("giblet", ("bench",))
    modules = imported_top_levels(REPO / "benchmarks")
    assert {"numpy", "torch", "av", "imageio_ffmpeg"} <= modules
    missing = {module: providers.get(module) for module in modules
               if not any(_normal(d) in closure for d in providers.get(module, []))}
    assert not missing, f"benchmarks import modules that giblet[bench] does not install: {missing}"
    # And the pipeline alone does not bring the benchmarks' own extra.
    assert "imageio-ffmpeg" not in installed_closure("giblet", ())
