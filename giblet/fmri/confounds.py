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
    with open(path) as f:
        return f.readline().rstrip("\n\r").split("\t")


def check_columns(path: Path, columns: list[str]) -> None:
    """Raise an InputError naming the file and every requested column it lacks (with the closest name)."""
    path = Path(path)
    header = read_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        hints = [f"{name!r} (closest: {difflib.get_close_matches(name, header, n=1) or 'none'})" for name in missing]
        raise InputError(path, f"has no confounds column {', '.join(hints)}; it has {len(header)} columns. Fix "
                               f"fmri.confounds (or fmri.motion.fd_threshold_mm, which reads "
                               f"{FRAMEWISE_DISPLACEMENT})")


def _check_rows(path: Path, rows: int, n_volumes: int) -> None:
    if rows != n_volumes:
        raise InputError(path, f"has {rows} rows but its BOLD run has {n_volumes} volumes (dummies "
                               f"included); is it the confounds file of that run?")


def check_table(path: Path, columns: list[str], n_volumes: int) -> None:
    """Raise unless the table has the ``columns`` and one row per volume (``n_volumes``, dummies included)."""
    check_columns(path, columns)
    with open(path) as f:
        rows = sum(1 for line in f if line.strip()) - 1
    _check_rows(Path(path), rows, n_volumes)


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
