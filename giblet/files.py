"""Writing outputs safely and describing where they came from.

Every stage writes into a temporary location and renames at the end, so a failure leaves no partial
output and never damages what an earlier run wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

def sha256_in_background(path: str | Path):
    """Start hashing ``path`` on a thread (hashlib releases the GIL); ``.result()`` gives the digest.

    Large inputs are hashed while the stage reads and computes, instead of in a second pass.
    """
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(sha256_file, path)
    executor.shutdown(wait=False)
    return future


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value, digits: int | None = None):
    """A result made JSON-ready: numpy scalars/arrays -> Python, NaN/inf -> None (the file stays valid
    JSON), recursively through dicts, lists and tuples; floats rounded to ``digits`` when given (the
    figure stages round what a caption may quote)."""
    import numpy as np  # here, not at the top: the Snakefile imports this module at every start

    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), digits)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return value if digits is None else round(value, digits)
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(final_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final_dir``; on success move its files into place.

    Files are moved one by one with ``os.replace`` (sub-directories are kept), so files already in
    ``final_dir`` that the stage does not write are untouched. On an exception the temporary
    directory is removed and ``final_dir`` is exactly as before.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield tmp
        for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dst = final_dir / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        _fsync_dir(final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON via a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def package_versions(*names: str) -> dict:
    """Installed versions of the named distributions (``None`` when one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("giblet", "numpy", *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_sidecar(npy_path: str | Path, array, parameters: dict, sources: dict[str, str | Path],
                  models: dict | None = None, extra: dict | None = None,
                  packages: tuple[str, ...] = (), source_hashes: dict[str, str] | None = None) -> Path:
    """Write the JSON sidecar of an ``.npy`` output next to it (``frames.npy`` -> ``frames.json``).

    Records shape, dtype, the parameters, the SHA-256 of every source file (by role), the model and
    weights identity, and package versions, so an array always says where it came from.
    ``source_hashes`` gives digests already computed (e.g. while the stage worked), by role.
    """
    source_hashes = source_hashes or {}
    npy_path = Path(npy_path)
    sidecar = npy_path.with_suffix(".json")
    write_json(sidecar, {
        "file": npy_path.name, "shape": list(array.shape), "dtype": str(array.dtype),
        "parameters": parameters,
        "sources": {role: {"path": str(p), "sha256": source_hashes.get(role) or sha256_file(p)}
                    for role, p in sources.items()},
        "models": models or {}, "versions": package_versions(*packages), **(extra or {}),
    })
    return sidecar


def read_sidecar(npy_path: str | Path) -> dict:
    """The JSON sidecar of an ``.npy`` output."""
    with open(Path(npy_path).with_suffix(".json")) as f:
        return json.load(f)
