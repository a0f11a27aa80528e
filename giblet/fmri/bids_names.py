"""BIDS file names: parse them into entities, list a derivatives folder's, write one back as a pattern.

A BIDS name is ``key-value`` entities joined by ``_``, then a suffix and an extension, e.g.
``sub-01_task-movie_run-1_desc-confounds_timeseries.tsv``. :mod:`giblet.fmri.bids` finds fMRIPrep's
files with these pieces.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# key-value entities, each followed by "_", then the suffix and the extension (".nii.gz", ".tsv").
NAME = re.compile(r"^((?:[A-Za-z]+-[A-Za-z0-9]+_)+)([A-Za-z0-9]+)((?:\.[A-Za-z0-9]+)+)$")
LABEL = re.compile(r"^[A-Za-z0-9]+$")
FUNC_DIRS = ("sub-*/func", "sub-*/ses-*/func")


@dataclass(frozen=True)
class BidsName:
    """One parsed BIDS file name; ``parts`` are the folders between the root and the file."""

    path: Path
    parts: tuple[str, ...]
    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    def is_kind(self, desc_suffix_extension: tuple[str, str, str]) -> bool:
        desc, suffix, extension = desc_suffix_extension
        return (self.get("desc"), self.suffix, self.extension) == (desc, suffix, extension)


def natural_key(label: str) -> tuple:
    """Sort key that orders the digit runs in a label as numbers: ``2`` before ``10``, ``a2`` before ``a10``."""
    pieces = re.split(r"(\d+)", label)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(pieces)], label


def parse_name(filename: str) -> tuple[tuple[tuple[str, str], ...], str, str] | None:
    """``(entities, suffix, extension)`` of a BIDS file name, or None when it is not one.

    >>> parse_name("sub-01_task-movie_run-1_desc-confounds_timeseries.tsv")
    ((('sub', '01'), ('task', 'movie'), ('run', '1'), ('desc', 'confounds')), 'timeseries', '.tsv')
    """
    match = NAME.match(filename)
    if not match:
        return None
    entities = tuple(tuple(pair.split("-", 1)) for pair in match.group(1)[:-1].split("_"))
    if len({key for key, _ in entities}) != len(entities):  # an entity twice: not a BIDS name
        return None
    return entities, match.group(2), match.group(3)


def escape(text: str) -> str:
    """``text`` as a literal inside a ``str.format`` pattern."""
    return text.replace("{", "{{").replace("}", "}}")


def scan(root: Path) -> list[BidsName]:
    """Every parseable file name under the func folders of the subjects (and their sessions)."""
    names = []
    for func_glob in FUNC_DIRS:
        for func in sorted(root.glob(func_glob)):
            if not func.is_dir():
                continue
            parts = func.relative_to(root).parts
            for path in sorted(func.iterdir()):
                parsed = parse_name(path.name)
                if parsed is not None and parsed[0][0][0] == "sub":
                    names.append(BidsName(root / Path(*parts) / path.name, parts, *parsed))
    return names


def path_template(name: BidsName, root: Path) -> str:
    """The file's path as a pattern: its subject and run labels become ``{subject}`` and ``{run}``."""
    subject = name.get("sub")
    folders = ["sub-{subject}" if part == f"sub-{subject}" else escape(part) for part in name.parts]
    fields = {"sub": "sub-{subject}", "run": "run-{run}"}
    entities = [fields.get(key, escape(f"{key}-{value}")) for key, value in name.entities]
    filename = "_".join(entities) + "_" + escape(name.suffix + name.extension)
    return os.sep.join([escape(str(root)), *folders, filename])


def name_differences(a: BidsName, b: BidsName) -> list[str]:
    """What tells two names apart, besides their subject and run labels: entities, folders, suffix."""
    ea, eb = dict(a.entities), dict(b.entities)
    keys = sorted(k for k in set(ea) | set(eb) if k != "sub" and (k != "run" or (k in ea) != (k in eb))
                  and ea.get(k) != eb.get(k))
    diff = [f"{k}- ({ea.get(k, 'absent')} vs {eb.get(k, 'absent')})" for k in keys]
    if len(a.parts) != len(b.parts):
        diff.append(f"folders ({'/'.join(a.parts[1:]) or 'none'} vs {'/'.join(b.parts[1:]) or 'none'} "
                    "below the subject folder)")
    if (a.suffix, a.extension) != (b.suffix, b.extension):
        diff.append(f"suffix ({a.suffix}{a.extension} vs {b.suffix}{b.extension})")
    return diff
