"""Figure helpers shared by the evaluation plots (reconstructions, lesions, training summary).

Figures are made on matplotlib's Agg canvas without pyplot, so no global state is kept between
figures and any process (a Snakemake job, a test, a thread) can draw them.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

DPI = 110


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches on the Agg canvas, constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, path: str | Path) -> None:
    """Save ``fig`` as PNG to ``path`` (the caller decides whether ``path`` is a temporary name)."""
    fig.savefig(path, format="png", dpi=DPI)


def save_figure_atomic(fig, path: str | Path) -> Path:
    """Save ``fig`` to a temporary name next to ``path`` and rename it into place; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_figure(fig, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def evenly_spaced(candidates, n: int) -> np.ndarray:
    """``n`` evenly spaced items of ``candidates`` (first and last included), or all of them if there are fewer."""
    candidates = np.asarray(candidates)
    if len(candidates) <= n:
        return candidates
    return candidates[np.round(np.linspace(0, len(candidates) - 1, n)).astype(int)]


def wrap_lines(text: str, width: int, max_lines: int = 4) -> list[str]:
    """``text`` wrapped to lines of at most ``width`` characters; past ``max_lines`` cut with an ellipsis."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    return lines


def table_figure(header: list[str], rows: list[list[list[str]]], widths: list[float], colors: list[list[str]],
                 title: str, footnote: str = ""):
    """A figure that is one table of text: a bold ``header`` row, then ``rows`` of cells.

    Each cell is a list of text lines (see :func:`wrap_lines`); a row is as tall as its longest
    cell. ``widths``: each column's width in inches; ``colors[row][column]``: each body cell's face
    color. ``title`` (up to two lines) above the table, ``footnote`` (one line, small grey) below.
    """
    from matplotlib.patches import Rectangle

    line_h, pad, title_h, note_h = 0.19, 0.14, 0.75, 0.35
    heights = [line_h + pad] + [max(len(cell) for cell in row) * line_h + pad for row in rows]
    table_w, table_h = sum(widths), sum(heights)
    fig_w, fig_h = table_w + 0.3, table_h + title_h + note_h
    fig = new_figure(fig_w, fig_h)
    fig.set_layout_engine(None)
    ax = fig.add_axes((0.15 / fig_w, note_h / fig_h, table_w / fig_w, table_h / fig_h))
    ax.set_xlim(0, table_w)
    ax.set_ylim(table_h, 0)
    ax.axis("off")
    y = 0.0
    for r, (cells, h) in enumerate(zip([[[h] for h in header]] + rows, heights)):
        x = 0.0
        for c, (lines, w) in enumerate(zip(cells, widths)):
            face = "#d0d7e5" if r == 0 else colors[r - 1][c]
            ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor="#888888", lw=0.6, clip_on=False))
            ax.text(x + 0.06, y + pad / 2, "\n".join(lines), va="top", ha="left", fontsize=9,
                    fontweight="bold" if r == 0 else "normal", linespacing=1.15)
            x += w
        y += h
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig_h)
    if footnote:
        fig.text(0.01, 0.1 * note_h / fig_h, footnote, fontsize=8, color="#444444")
    return fig


__all__ = ["DPI", "evenly_spaced", "new_figure", "save_figure", "save_figure_atomic", "table_figure", "wrap_lines"]
