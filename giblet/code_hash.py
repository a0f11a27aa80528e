"""The version of the code each stage runs: a hash of its function and every ``giblet`` module it reaches.

Snakemake does not see edits to package code a rule calls, so each rule passes this hash as its
``code`` param: editing a module reruns exactly the stages whose imports reach it. The imports are
read from the source with :mod:`ast` (nothing is imported), starting from the imports inside the
stage's function in :mod:`giblet.stages` and following every ``giblet`` import of each module reached,
including those inside functions, the ``__init__.py`` of every package on the way, and a package's
``__main__.py`` (training starts its torchrun processes with ``python -m giblet.train``).

Walking the imports takes ~0.4 s for every rule, at every start of Snakemake, so the hashes are kept
in a cache keyed by the package's own content: a digest of every ``.py`` file's path and bytes under
the package folder (reading ~1 MB: milliseconds). A hash depends on nothing else (which files exist,
what they hold), so a cached value is never stale: any edit, added or removed module gives another
key (:mod:`giblet.cache`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "giblet"
PACKAGE_ROOT = Path(__file__).parent


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of ``giblet.a.b`` under ``root`` (the ``giblet/`` folder), or None if it is not
    a module of the package (e.g. a name imported from one)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imported_modules(node: ast.AST, module: str, is_package: bool = False) -> set[str]:
    """Every ``giblet`` module named by the import statements anywhere under ``node`` of ``module``.

    ``from giblet.x import y`` yields ``giblet.x`` and ``giblet.x.y`` (which may be a module or a name in
    ``giblet.x``: :func:`module_file` tells them apart).
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            if item.level:
                base = package.split(".")[: len(package.split(".")) - (item.level - 1)]
                source = ".".join(base + ([item.module] if item.module else []))
            else:
                source = item.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in item.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parse_version(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_bytes(), filename=str(path))


def reachable_files(modules: set[str], root: Path = PACKAGE_ROOT) -> set[Path]:
    """The source files of ``modules`` and of everything they import from the package, transitively,
    with the ``__init__.py`` of each package they sit in."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
        if path.name == "__init__.py" and (path.parent / "__main__.py").is_file():
            todo.append(f"{name}.__main__")  # what `python -m` runs (training under torchrun)
        todo.extend(imported_modules(_parse(path), _module_name(path, root), path.name == "__init__.py"))
    return seen


def stage_files(stage: str, root: Path = PACKAGE_ROOT) -> set[Path]:
    """The package files stage ``stage`` (a function in ``giblet/stages.py``) reaches."""
    return reachable_files(imported_modules(_stage_function(stage, root), f"{PACKAGE}.stages"), root)


def _stage_function(stage: str, root: Path) -> ast.FunctionDef:
    for node in _parse(root / "stages.py").body:
        if isinstance(node, ast.FunctionDef) and node.name == stage:
            return node
    raise KeyError(f"no stage {stage!r} in {root / 'stages.py'}")


def _compute_stage_hash(stage: str, root: Path) -> str:
    digest = hashlib.sha256(ast.unparse(_stage_function(stage, root)).encode())
    for path in sorted(stage_files(stage, root)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def package_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """A digest of every ``.py`` file under ``root``: its path relative to ``root`` and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _cache_key(root: Path) -> str:
    """The package as it is now (its fingerprint: ~2 ms, computed at every call, so an edit made while
    this process runs counts too)."""
    return package_fingerprint(root)[:32]


def stage_code_hashes(stages: list[str], root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """:func:`stage_code_hash` of each of ``stages``, the package read once (the Snakefile's way)."""
    from giblet import cache

    root = Path(root).resolve()
    key = _cache_key(root)
    hashes = cache.read("code-hash", key)
    hashes = hashes if isinstance(hashes, dict) else {}
    missing = [stage for stage in stages if stage not in hashes]
    for stage in missing:
        hashes[stage] = _compute_stage_hash(stage, root)
    if missing:
        cache.write("code-hash", key, hashes)
    return {stage: hashes[stage] for stage in stages}


def stage_code_hash(stage: str, root: Path = PACKAGE_ROOT) -> str:
    """16 hex digits over the stage function's source and every file it reaches (path and bytes);
    from the cache when this version of the package has been hashed before."""
    return stage_code_hashes([stage], root)[stage]
