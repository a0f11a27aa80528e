"""fMRIPrep's confounds table (``desc-confounds_timeseries.tsv``): the one module that reads it.

One row per volume of the run, dummy volumes included; one column per confound, ``n/a`` where a
value does not exist. fMRIPrep leaves the first row of every ``*_derivative1`` column and of
``framewise_displacement`` empty (there is no previous volume): those leading gaps become 0, as
nilearn's ``load_confounds`` does. A gap anywhere else is an error, never silently filled.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from giblet.errors import InputError

FRAMEWISE_DISPLACEMENT = "framewise_displacement"


def read_header(path: Path) -> list[str]:
    """The column names of a confounds TSV (first line, tab separated)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "confounds file not found")
    try:
        with open(path) as f:
            return f.readline().rstrip("\n\r").split("\t")
    except UnicodeDecodeError as err:
        raise InputError(path, f"is not a text table (tab-separated): {err}") from err


def check_columns(path: Path, columns: list[str]) -> None:
    """Raise an InputError naming the file and every requested column it lacks (with the closest name)."""
    path = Path(path)
    header = read_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        raise InputError(path, _missing_message(missing, header))


def _missing_message(missing: list[str], header: list[str], elsewhere: dict[str, list[str]] | None = None) -> str:
    """Why a table lacks ``missing``: where other runs' tables have a column, this file is the odd one
    out (``elsewhere``: column -> labels of the runs that have it); where none has it, the config asks
    for a column that does not exist (the closest name helps with a typo)."""
    elsewhere = elsewhere or {}
    odd = [name for name in missing if elsewhere.get(name)]
    absent = [name for name in missing if not elsewhere.get(name)]
    parts = []
    if odd:
        have = sorted({label for name in odd for label in elsewhere[name]})
        parts.append(f"lacks the confounds column(s) {', '.join(map(repr, odd))}, which the tables of "
                     f"{_labels(have)} have: this run's table differs from the others (another fMRIPrep "
                     f"version or setting?); rerun fMRIPrep for it, or leave the column(s) out of "
                     f"fmri.confounds")
    if absent:
        hints = [f"{name!r} (closest: {difflib.get_close_matches(name, header, n=1) or 'none'})" for name in absent]
        parts.append(f"has no confounds column {', '.join(hints)}, nor does any other run's table; it has "
                     f"{len(header)} columns. Fix fmri.confounds (or fmri.motion.fd_threshold_mm, which reads "
                     f"{FRAMEWISE_DISPLACEMENT})")
    return "; and ".join(parts)


def _labels(labels: list[str], limit: int = 6) -> str:
    if len(labels) <= limit:
        return ", ".join(labels)
    return ", ".join(labels[:limit]) + f" and {len(labels) - limit} more"


def _check_rows(path: Path, rows: int, n_volumes: int) -> None:
    if rows != n_volumes:
        raise InputError(path, f"has {rows} rows but its BOLD run has {n_volumes} volumes (dummies "
                               f"included); is it the confounds file of that run?")


def count_rows(path: Path) -> int:
    """Data rows of a TSV (non-blank lines after the header)."""
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip()) - 1
    except UnicodeDecodeError as err:
        raise InputError(path, f"is not a text table (tab-separated): {err}") from err


def table_problems(tables: dict[str, tuple[Path, int]], columns: list[str]) -> list[InputError]:
    """Every problem of a study's confounds tables at once, as InputErrors naming the file.

    ``tables`` maps a run's label (``"sub-01 run 2"``) to its confounds file and its BOLD run's number
    of volumes (dummies included). A table must exist, have every one of ``columns`` and one row per
    volume. A missing column names the runs whose tables have it.
    """
    headers, problems = {}, []
    for label, (path, _) in tables.items():
        try:
            headers[label] = read_header(Path(path))
        except InputError as err:
            problems.append(err)
    for label, header in headers.items():
        path, n_volumes = tables[label]
        missing = [name for name in columns if name not in header]
        if missing:
            elsewhere = {name: [other for other, h in headers.items() if name in h] for name in missing}
            problems.append(InputError(Path(path), _missing_message(missing, header, elsewhere)))
            continue
        try:
            _check_rows(Path(path), count_rows(Path(path)), n_volumes)
        except InputError as err:
            problems.append(err)
    return problems


def check_tables(tables: dict[str, tuple[Path, int]], columns: list[str]) -> None:
    """Raise the first of :func:`table_problems`."""
    problems = table_problems(tables, columns)
    if problems:
        raise problems[0]


def read_confounds(path: Path, columns: list[str], n_volumes: int) -> np.ndarray:
    """The named columns of one run's confounds TSV, float64 (n_volumes, len(columns)).

    ``n_volumes`` is the run's number of volumes, dummies included; the table must have exactly
    that many rows. Leading ``n/a`` (first-row derivatives) become 0; any other gap is an error.
    """
    import pandas as pd

    path = Path(path)
    check_columns(path, columns)
    try:
        table = pd.read_csv(path, sep="\t", usecols=columns, na_values=["n/a"], keep_default_na=True)
    except Exception as err:  # pandas raises several types for a malformed table
        raise InputError(path, f"cannot read as a tab-separated table ({type(err).__name__}: {err})") from err
    _check_rows(path, len(table), n_volumes)
    values = table[columns].to_numpy(dtype=np.float64)
    for j, name in enumerate(columns):
        gaps = np.flatnonzero(~np.isfinite(values[:, j]))
        leading = gaps[gaps == np.arange(len(gaps))]
        if len(leading) < len(gaps):
            raise InputError(path, f"column {name!r} has a missing or non-finite value at row "
                                   f"{int(gaps[len(leading)])} (0-based, after the header)")
        values[leading, j] = 0.0
    return values
