"""The figure of :mod:`giblet.evaluate.weights` (kept apart: it is long and only draws)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_weights(report: dict, state_dict: dict, path: str | Path, exploding_abs_max: float, panels: int) -> None:
    """``weights.png``: std and abs-max of every tensor (log scale, coloured by severity) and value
    histograms of ``panels`` tensors (the flagged ones first, then the largest); ``report`` is
    :func:`giblet.evaluate.weights.examine_weights`'s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.ticker import LogFormatter, NullLocator

    names = list(report["tensors"])
    rows = [n for n in names if not report["tensors"][n].get("integer")]
    colour = {}
    for n in names:
        sev = {f["severity"] for f in report["tensors"][n]["flags"]}
        colour[n] = "red" if "failed" in sev else "darkorange" if "warning" in sev else \
            "grey" if any(x.startswith("structural") for x in report["tensors"][n]["notes"]) else "black"
    height = max(8.0, 0.16 * len(rows) + 2.0)
    fig = plt.figure(figsize=(22, height))
    grid = GridSpec(4, 4, figure=fig, width_ratios=[1.5, 1, 1, 1], wspace=0.35, hspace=0.6,
                    left=0.17, right=0.98, top=1 - 1.1 / height, bottom=0.8 / height)
    ax = fig.add_subplot(grid[:, 0])
    floor = 1e-12
    y = np.arange(len(rows))[::-1]
    for key, marker, label in (("std", "o", "std"), ("abs_max", "x", "abs-max")):
        values = [report["tensors"][n].get(key) for n in rows]
        ax.scatter([max(v, floor) if v is not None else floor for v in values], y, marker=marker, s=18,
                   label=label, zorder=3)
    ax.axvline(exploding_abs_max, color="red", ls="--", lw=1,
               label=f"exploding > {exploding_abs_max:g}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels([f"{n} {tuple(report['tensors'][n]['shape'])}" for n in rows], fontsize=6.5)
    for tick, n in zip(ax.get_yticklabels(), rows):
        tick.set_color(colour[n])
    ax.set_ylim(-1, len(rows))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("per tensor (red: failed, orange: warning, grey: structural note; 0 drawn at 1e-12)", fontsize=9)
    flagged = [n for n in rows if colour[n] in ("red", "darkorange")]
    largest = sorted((n for n in rows if n not in flagged), key=lambda n: -state_dict[n].numel())
    shown = (flagged + largest)[:panels]
    for i, n in enumerate(shown):
        a = fig.add_subplot(grid[i // 3, 1 + i % 3])
        x = state_dict[n].detach().double().flatten().numpy()
        finite = x[np.isfinite(x)]
        if finite.size:
            counts, edges = np.histogram(finite, bins=60)
            a.stairs(counts, edges, fill=True, color="tab:blue" if colour[n] == "black" else colour[n])
        a.set_yscale("log")
        a.yaxis.set_minor_locator(NullLocator())
        a.yaxis.set_major_formatter(LogFormatter())  # plain text: mathtext labels are slow to render
        s = report["tensors"][n]
        extra = f", {s['n_nan']} NaN {s['n_inf']} Inf" if s["n_nan"] or s["n_inf"] else ""
        a.set_title(f"{n}\n{tuple(s['shape'])}{extra}", fontsize=7.5,
                    color=colour[n] if colour[n] != "grey" else "black")
        a.tick_params(labelsize=6.5)
    counts = report["counts"]
    fig.suptitle(f"{report['model']}: verdict {report['verdict']} ({counts['tensors']} tensors, "
                 f"{counts['failed']} failed, {counts['warnings']} warnings, {counts['structural']} structural notes)"
                 f"   right: histograms (log count) of the flagged, then the largest tensors",
                 fontsize=11, color={"ok": "green", "warnings": "darkorange", "failed": "red"}[report["verdict"]])
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
