"""A small on-disk cache of values that are pure functions of their key (the code hashes, the
validated config): a stale entry is impossible by construction, a lost one costs only time.

Entries are JSON files named ``<kind>-<key>.json`` in ``$GIBLET_CACHE_DIR``, else
``$XDG_CACHE_HOME/giblet``, else ``~/.cache/giblet``; written atomically, the newest ``KEPT`` of each
kind kept. Where the folder cannot be written, nothing is cached.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

KEPT = 20


def cache_dir() -> Path:
    if os.environ.get("GIBLET_CACHE_DIR"):
        return Path(os.environ["GIBLET_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "giblet"


def entry_path(kind: str, key: str) -> Path:
    return cache_dir() / f"{kind}-{key}.json"


def read(kind: str, key: str):
    """The cached value, or None (missing, unreadable or not JSON)."""
    try:
        return json.loads(entry_path(kind, key).read_text())
    except (OSError, ValueError):
        return None


def write(kind: str, key: str, value) -> None:
    """Store ``value`` (JSON) atomically; prune the oldest entries of ``kind``. Never raises for a
    folder that cannot be written."""
    path = entry_path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
        entries = sorted(path.parent.glob(f"{kind}-*.json"), key=lambda p: p.stat().st_mtime)
        for stale in entries[:-KEPT]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass
