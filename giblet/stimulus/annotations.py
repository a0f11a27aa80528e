"""Reading scene annotations (onset, offset, text) from TSV, CSV or XLSX, with clear errors.

Choices (documented for the user in config/README.md):

- The format follows the extension: ``.tsv`` (tab), ``.csv`` (comma), ``.xlsx`` (first sheet).
- Header names are stripped of surrounding whitespace, so the real Sherlock headers
  (``"Start Time (s) "``, ...) match the ``sherlock`` preset. Configured names are stripped too.
- Several text columns are joined with one space, skipping empty cells.
- Rows whose selected cells are all empty (blank lines, trailing spreadsheet rows) are skipped.
- Row numbers in error messages are as in the file or spreadsheet: the header is row 1.
- Times are seconds from the start of the movie and must be finite, non-negative numbers with
  ``offset > onset``; every text must be non-empty. Any violation is an InputError naming the rows.
- Annotations that start at or after the movie's end (``onset >= duration_s``) are dropped with a
  warning giving their count; ones crossing the end are kept (they overlap the last TRs).
- Rows keep the file's order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from giblet.errors import ConfigError, InputError

log = logging.getLogger(__name__)

COLUMN_PRESETS = {
    "demo": {"onset": "onset", "offset": "offset", "text": ["text"]},
    "sherlock": {"onset": "Start Time (s)", "offset": "End Time (s)", "text": ["Scene Details - A Level"]},
}

_READERS = {".tsv": "tab-separated", ".csv": "comma-separated", ".xlsx": "Excel"}
_MAX_ROWS_SHOWN = 10  # an error lists at most this many offending rows, then a count


def resolve_columns(columns: str | dict) -> tuple[dict, str]:
    """The column mapping ``{"onset": str, "offset": str, "text": [str, ...]}`` and how it was named."""
    if isinstance(columns, str):
        if columns not in COLUMN_PRESETS:
            raise ConfigError(f"stimulus.text.columns: unknown preset {columns!r}; "
                              f"use one of {sorted(COLUMN_PRESETS)} or a mapping")
        return COLUMN_PRESETS[columns], f"preset {columns!r}"
    text = columns["text"]
    mapping = {"onset": columns["onset"].strip(), "offset": columns["offset"].strip(),
               "text": [t.strip() for t in ([text] if isinstance(text, str) else text)]}
    return mapping, f"mapping {mapping}"


def _read_table(path: Path) -> pd.DataFrame:
    """Every cell as read (strings for TSV/CSV, str/number/NaN for XLSX); header stripped.

    The DataFrame index is ``row - 2``: blank lines are kept here so row numbers stay exact.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise InputError(path, f"unsupported annotation format {suffix!r}; use .tsv, .csv or .xlsx")
    try:
        if suffix == ".xlsx":
            table = pd.read_excel(path, dtype=object, engine="openpyxl")
        else:
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, skip_blank_lines=False)
    except Exception as err:  # pandas/openpyxl raise many types for a corrupt file
        raise InputError(path, f"cannot be read as a {_READERS[suffix]} table ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _cell_text(value) -> str:
    """A cell as stripped text; empty for NaN/None (XLSX empty cells)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _rows(mask: np.ndarray, index: pd.Index) -> str:
    """File row numbers (header = row 1) where ``mask`` is True, shortened for long lists."""
    rows = [str(i + 2) for i in index[mask]]
    shown = ", ".join(rows[:_MAX_ROWS_SHOWN])
    return shown + (f" and {len(rows) - _MAX_ROWS_SHOWN} more" if len(rows) > _MAX_ROWS_SHOWN else "")


def _times(path: Path, cells: pd.DataFrame, name: str, column: str) -> np.ndarray:
    """A time column as float64 seconds; non-numeric, non-finite or negative values are errors."""
    text = cells[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        examples = ", ".join(repr(v) for v in text[bad].head(3))
        raise InputError(path, f"{name} column {column!r} is not a number in row(s) "
                               f"{_rows(bad, cells.index)} (e.g. {examples})")
    negative = values < 0
    if negative.any():
        raise InputError(path, f"{name} column {column!r} is negative in row(s) "
                               f"{_rows(negative, cells.index)}")
    return values


def read_annotations(path: str | Path, columns: str | dict, duration_s: float | None = None) -> pd.DataFrame:
    """Read and validate annotations.

    Args:
        path: a ``.tsv``, ``.csv`` or ``.xlsx`` file with a header row.
        columns: a preset name (``"demo"``, ``"sherlock"``, see COLUMN_PRESETS) or a mapping
            ``{"onset": str, "offset": str, "text": [str, ...]}``.
        duration_s: the movie's duration in seconds; annotations starting at or after it are dropped
            (with a warning). None keeps all.

    Returns:
        DataFrame with columns ``onset``, ``offset`` (float64 seconds) and ``text`` (str), in file
        order, with a fresh 0..A-1 index. ``attrs["dropped_beyond_end"]`` counts the dropped rows.
    """
    path = Path(path)
    mapping, asked = resolve_columns(columns)
    table = _read_table(path)
    wanted = [mapping["onset"], mapping["offset"], *mapping["text"]]
    missing = [c for c in dict.fromkeys(wanted) if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing} asked for by {asked}; "
                               f"columns found: {list(table.columns)}")

    cells = table[list(dict.fromkeys(wanted))].map(_cell_text)
    cells = cells[(cells != "").any(axis=1)]  # blank lines and empty trailing rows
    if cells.empty:
        raise InputError(path, "has no annotation rows (only a header)")

    onset = _times(path, cells, "onset", mapping["onset"])
    offset = _times(path, cells, "offset", mapping["offset"])
    backwards = offset <= onset
    if backwards.any():
        raise InputError(path, f"offset is not after onset in row(s) {_rows(backwards, cells.index)}")
    text = cells[mapping["text"]].apply(lambda row: " ".join(t for t in row if t), axis=1).to_numpy(dtype=str)
    empty = text == ""
    if empty.any():
        raise InputError(path, f"text column(s) {mapping['text']} are empty in row(s) "
                               f"{_rows(empty, cells.index)}")

    result = pd.DataFrame({"onset": onset, "offset": offset, "text": text})
    dropped = 0
    if duration_s is not None:
        beyond = onset >= duration_s
        dropped = int(beyond.sum())
        if dropped:
            log.warning("%s: dropped %d of %d annotations that start at or after the movie's end (%.3f s), "
                        "e.g. row(s) %s", path, dropped, len(result), duration_s, _rows(beyond, cells.index))
        result = result[~beyond].reset_index(drop=True)
    result.attrs["dropped_beyond_end"] = dropped
    return result
