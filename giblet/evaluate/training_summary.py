"""One figure of how training went, from ``history.jsonl`` (the trainer's metric history).

Each line of the history is a JSON object with ``step`` and ``epoch``; a training step also has
``lr``, ``grad_norm``, ``train/<loss>`` (``total`` and each component) and the timings
``samples_per_s``/``step_time_s``; a validation has ``val/<loss>`` and ``val/fmri_r_mean``.
``training_summary`` plots every loss component (train smoothed, with the raw steps faint, and
validation), the learning rate, the gradient norm, the throughput and the validation fMRI r, and
returns the final and best values.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from giblet.errors import InputError
from giblet.evaluate.figures import new_figure, save_figure_atomic

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = ("val/fmri_r_mean",)  # every other val/ key is a loss


def read_history(path: str | Path) -> list[dict]:
    """The entries of ``history.jsonl`` in file order (blank lines skipped).

    Raises InputError naming the file (and the line) when it is missing, unreadable, empty, or a
    line is not a JSON object with an integer ``step`` and numeric values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such training history: run the train stage first")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot be read ({error})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(path, f"line {number} is not valid JSON ({error.msg} at column {error.colno}): "
                                   f"{line[:80]!r}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or isinstance(entry["step"], bool):
            raise InputError(path, f"line {number} is not a history entry (a JSON object with an integer 'step')")
        bad = [k for k, v in entry.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise InputError(path, f"line {number}: non-numeric value for {', '.join(bad)}")
        entries.append(entry)
    if not entries:
        raise InputError(path, "is empty: no training step has been recorded")
    return entries


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start), ignoring NaN."""
    values = np.asarray(values, np.float64)
    ok = np.isfinite(values)
    kernel = np.ones(window)
    total = np.convolve(np.where(ok, values, 0.0), kernel)[: len(values)]
    count = np.convolve(ok.astype(np.float64), kernel)[: len(values)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _series(entries: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(e["step"], e[key]) for e in entries if key in e]
    if not rows:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*rows)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def _best(entries: list[dict], key: str) -> dict | None:
    rows = [e for e in entries if key in e and math.isfinite(e[key])]
    if not rows:
        return None
    pick = (max if key in HIGHER_IS_BETTER else min)(rows, key=lambda e: e[key])  # first of ties
    return {"value": pick[key], "step": pick["step"], "epoch": pick.get("epoch")}


def training_summary(history_path: str | Path, out_png: str | Path, smoothing_window: int | None = None) -> dict:
    """Plot ``history.jsonl`` into ``out_png`` and return what it shows.

    Returns ``n_train_steps``, ``n_validations``, ``last_step``, ``last_epoch``, ``final`` (the
    last training step's values), ``final_val`` (the last validation's), ``best`` ({val key:
    {value, step, epoch}}: the minimum of each validation loss, the maximum of ``val/fmri_r_mean``),
    ``throughput`` (median samples/s and step time) and the ``smoothing_window`` (training steps).
    Raises InputError naming the file (and line) on a missing, empty or corrupt history; then
    ``out_png`` is not touched.
    """
    history_path = Path(history_path)
    entries = read_history(history_path)
    # A resumed run rewrites the history it restored, so repeats should not happen; if they do, the last wins.
    by_key = {}
    for e in entries:
        by_key[(e["step"], any(k.startswith("val/") for k in e))] = e
    entries = sorted(by_key.values(), key=lambda e: (e["step"], any(k.startswith("val/") for k in e)))
    train = [e for e in entries if any(k.startswith("train/") for k in e)]
    val = [e for e in entries if any(k.startswith("val/") for k in e)]
    if not train:
        raise InputError(history_path, "holds no training step (no 'train/...' values)")
    window = smoothing_window or max(1, min(50, len(train) // 15))
    components = sorted({k.split("/", 1)[1] for e in entries for k in e
                         if k.startswith(("train/", "val/")) and k != "val/fmri_r_mean"},
                        key=lambda c: (c != "total", c))
    panels = [("loss", c) for c in components] + [("lr", "lr"), ("grad_norm", "grad_norm"),
                                                  ("throughput", "samples_per_s"), ("val_r", "val/fmri_r_mean")]
    ncols = 4
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(4.0 * ncols, 2.9 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    epoch_starts = [e["step"] for prev, e in zip(train, train[1:]) if e.get("epoch") != prev.get("epoch")]

    for ax, (kind, key) in zip(axes, panels):
        for s in epoch_starts:
            ax.axvline(s, color="0.85", lw=0.7, zorder=0)
        if kind == "loss":
            steps, values = _series(train, f"train/{key}")
            if len(steps):
                ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8)
                ax.plot(steps, smooth(values, window), color="tab:blue", lw=1.6,
                        label=f"train (mean of {window} steps)" if window > 1 else "train")
            vsteps, vvalues = _series(val, f"val/{key}")
            if len(vsteps):
                ax.plot(vsteps, vvalues, "o-", color="tab:orange", ms=4, lw=1.4, label="validation")
                best = _best(val, f"val/{key}")
                if best:
                    ax.plot([best["step"]], [best["value"]], "*", color="tab:red", ms=11,
                            label=f"best val {best['value']:.4g}")
            ax.set_title(f"loss: {key}", fontsize=10)
            ax.set_ylabel("loss")
            ax.legend(fontsize=7)
        elif kind == "val_r":
            vsteps, vvalues = _series(val, key)
            if len(vsteps):
                ax.plot(vsteps, vvalues, "o-", color="tab:green", ms=4, lw=1.4)
                best = _best(val, key)
                ax.plot([best["step"]], [best["value"]], "*", color="tab:red", ms=11, label=f"best {best['value']:.3f}")
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title("validation: mean fMRI r over voxels", fontsize=10)
            ax.set_ylabel("r")
        else:
            steps, values = _series(train, key)
            color = {"lr": "tab:purple", "grad_norm": "tab:brown", "throughput": "tab:gray"}[kind]
            if kind == "lr":
                ax.plot(steps, values, color=color, lw=1.4)
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            else:
                ax.plot(steps, values, color=color, alpha=0.3, lw=0.8)
                ax.plot(steps, smooth(values, window), color=color, lw=1.6)
            title, ylabel = {"lr": ("learning rate", "lr"), "grad_norm": ("gradient norm (before clipping)", "norm"),
                             "throughput": ("throughput", "samples / s")}[kind]
            if kind == "grad_norm" and len(values) and np.nanmin(values) > 0:
                ax.set_yscale("log")
            if kind == "throughput" and len(values):
                title += f" (median {np.nanmedian(values):.1f}/s)"
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel)
        ax.set_xlabel("optimizer step")
    for ax in axes[len(panels):]:
        ax.set_visible(False)

    last = train[-1]
    result = {
        "history": str(history_path), "n_train_steps": len(train), "n_validations": len(val),
        "last_step": entries[-1]["step"], "last_epoch": entries[-1].get("epoch"),
        "final": {k: v for k, v in last.items() if k not in ("step", "epoch")},
        "final_val": {k: v for k, v in val[-1].items() if k not in ("step", "epoch")} if val else {},
        "best": {k: b for k in sorted({k for e in val for k in e if k.startswith("val/")})
                 if (b := _best(val, k)) is not None},
        "throughput": {"median_samples_per_s": float(np.nanmedian(_series(train, "samples_per_s")[1]))
                       if any("samples_per_s" in e for e in train) else None,
                       "median_step_time_s": float(np.nanmedian(_series(train, "step_time_s")[1]))
                       if any("step_time_s" in e for e in train) else None},
        "smoothing_window": window,
    }
    best_total = result["best"].get("val/total")
    best_note = (f"; best val total {best_total['value']:.4g} at step {best_total['step']} (epoch {best_total['epoch']})"
                 if best_total else "; no validation yet")
    fig.suptitle(f"Training: {len(train)} steps, {len(val)} validations, last epoch {result['last_epoch']}{best_note}\n"
                 f"faint: every step; grey lines: epoch starts", fontsize=11)
    save_figure_atomic(fig, out_png)
    log.info("wrote %s (%d steps, %d validations)", out_png, len(train), len(val))
    return result


__all__ = ["training_summary", "read_history", "smooth"]
