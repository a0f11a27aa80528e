"""Contiguous train/val/test blocks of target TRs, separated by buffers no window can cross.

A sample pairs the fMRI at target TR ``t`` (an index into the fMRI) with the stimulus in the causal
window of ``lag_trs`` TRs that ends at stimulus TR ``t + shift_trs``:

    stimulus TRs  [t + shift_trs - lag_trs + 1, t + shift_trs]  ->  fMRI TR t

``shift_trs`` is how far the fMRI was already shifted back against the stimulus by whoever
prepared it (Sherlock: 3 TRs, i.e. fMRI index t holds the volume acquired at stimulus TR t + 3).
Indexing the window from ``t + shift_trs`` undoes that shift, so the delay is counted once: the
model always sees the stimulus up to the moment the volume was acquired, never after it.

Blocks are contiguous and in time order (train, val, test by default). Between two blocks lie
``buffer_trs >= lag_trs`` target TRs that belong to no block, so no input window of one block
reaches a target TR of another. Targets whose window would start before the first stimulus TR are
not used.

Runs: when the fMRI timeline joins several scans (:mod:`giblet.fmri.runs`), each run shows its own
segment of the movie, so its targets take their windows from that segment (``window`` adds the
run's offset), and a target whose window would leave its run's segment is not used: no window ever
crosses from one run into the next. Blocks are then placed over the usable targets only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


class SplitError(ValueError):
    """The requested split does not fit the data or violates the buffer rule."""


@dataclass(frozen=True)
class Split:
    """Half-open target-TR ranges [start, stop) per block, in fMRI TR indices.

    ``runs``: per run, ``(fmri_start, fmri_stop, stimulus_start, stimulus_stop)``: timeline TRs
    ``[fmri_start, fmri_stop)`` show stimulus TRs from ``stimulus_start``, and the run's windows stay
    in ``[stimulus_start, stimulus_stop)``. None (a split written before runs existed): one run, the
    timeline is the stimulus's, and every target in a block is used.
    """

    ranges: dict[str, tuple[int, int]]
    lag_trs: int
    shift_trs: int
    buffer_trs: int
    runs: tuple[tuple[int, int, int, int], ...] | None = None

    def _run(self, target: int) -> tuple[int, int, int, int] | None:
        if self.runs is None:
            return None
        for run in self.runs:
            if run[0] <= target < run[1]:
                return run
        raise ValueError(f"target TR {target} is in no run {self.runs}")

    def window(self, target: int) -> tuple[int, int]:
        """Stimulus TRs [start, stop) that feed target fMRI TR ``target``."""
        run = self._run(target)
        offset = 0 if run is None else run[2] - run[0]
        stop = target + offset + self.shift_trs + 1
        return stop - self.lag_trs, stop

    def usable(self, target: int) -> bool:
        """Whether ``target``'s window lies inside its run's stimulus segment."""
        run = self._run(target)
        if run is None:
            return True
        start, stop = self.window(target)
        return run[2] <= start and stop <= run[3]

    def targets(self, name: str) -> range | list[int]:
        """The block's targets in order: its whole range, but for targets whose window would cross a run's edge."""
        block = range(*self.ranges[name])
        if self.runs is None:
            return block
        kept = [t for t in block if self.usable(t)]
        return block if len(kept) == len(block) else kept

    def to_dict(self) -> dict:
        out = {"ranges": {k: list(v) for k, v in self.ranges.items()}, "lag_trs": self.lag_trs,
               "shift_trs": self.shift_trs, "buffer_trs": self.buffer_trs}
        if self.runs is not None:
            out["runs"] = [list(run) for run in self.runs]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Split":
        runs = tuple(tuple(int(v) for v in run) for run in data["runs"]) if data.get("runs") else None
        return cls({k: tuple(v) for k, v in data["ranges"].items()}, data["lag_trs"], data["shift_trs"],
                   data["buffer_trs"], runs)


def plan_split(n_fmri_trs: int, n_stimulus_trs: int, params: dict, shift_trs: int = 0,
               runs: tuple[tuple[int, int, int, int], ...] | None = None) -> Split:
    """Place the blocks. ``params`` is the validated ``split`` config section; ``shift_trs`` is
    ``fmri.shift_trs``; ``runs`` the timeline's runs (see :class:`Split`; default: one run that
    starts with the movie).

    With ``fractions``, the usable targets minus the buffers are divided in proportion, in the order
    train, val, test. With explicit ``ranges``, those are used as given and checked. Raises
    SplitError when blocks overlap, leave too small a buffer or hold no usable target.
    """
    lag, shift = params["lag_trs"], shift_trs
    buffer = lag if params["buffer_trs"] is None else params["buffer_trs"]
    if buffer < lag:
        raise SplitError(f"split.buffer_trs={buffer} is shorter than the lag window ({lag} TRs): "
                         "training windows would reach validation/test targets")
    runs = runs or ((0, n_fmri_trs, 0, n_stimulus_trs),)
    probe = Split({}, lag, shift, buffer, runs)
    usable = np.array([t for a, b, _, _ in runs for t in range(a, b) if probe.usable(t)], dtype=np.int64)
    if len(usable) == 0:
        raise SplitError(f"no usable target TRs: {n_fmri_trs} fMRI TRs in {len(runs)} run(s), {n_stimulus_trs} "
                         f"stimulus TRs, lag {lag}, shift {shift}")
    if params["ranges"]:
        ranges = {name: tuple(params["ranges"][name]) for name in SPLIT_NAMES if name in params["ranges"]}
    else:
        ranges = _ranges_from_fractions(usable, params["fractions"], buffer)
    _check(ranges, usable, buffer)
    return Split(ranges, lag, shift, buffer, runs)


def _ranges_from_fractions(usable: np.ndarray, fractions: dict, buffer: int) -> dict:
    """Blocks of usable targets in proportion to ``fractions``, ``buffer`` target TRs apart."""
    names = [name for name in SPLIT_NAMES if fractions.get(name, 0) > 0]
    available = len(usable) - buffer * (len(names) - 1)
    if available < len(names):
        raise SplitError(f"{len(usable)} usable TRs cannot hold {len(names)} blocks and their buffers")
    total = sum(fractions[name] for name in names)
    ranges, position, used = {}, 0, 0
    for k, name in enumerate(names):
        size = len(usable) - position if k == len(names) - 1 else round(available * fractions[name] / total)
        if size < 1 or position + size > len(usable):
            raise SplitError(f"the {name} block gets no usable target TR ({len(usable)} usable, buffers of {buffer})")
        start, stop = int(usable[position]), int(usable[position + size - 1]) + 1
        ranges[name] = (start, stop)
        used += size
        position = int(np.searchsorted(usable, stop + buffer))
    return ranges


def _check(ranges: dict, usable: np.ndarray, buffer: int) -> None:
    if "train" not in ranges:
        raise SplitError("the split has no train block")
    first, stop = int(usable[0]), int(usable[-1]) + 1
    ordered = sorted(ranges.items(), key=lambda item: item[1][0])
    for name, (a, b) in ordered:
        if not first <= a < b <= stop:
            raise SplitError(f"split block {name} [{a}, {b}) is outside the usable targets [{first}, {stop})")
        if not ((usable >= a) & (usable < b)).any():
            raise SplitError(f"split block {name} [{a}, {b}) holds no usable target (every window there would "
                             f"cross a run's edge)")
    for (name_a, (_, end)), (name_b, (start, _)) in zip(ordered, ordered[1:]):
        if start - end < buffer:
            raise SplitError(f"split blocks {name_a} and {name_b} are {start - end} TRs apart; the buffer "
                             f"must be at least {buffer} TRs so no window crosses between them")


def stimulus_trs_from_headers(movie, tr: float, modalities: dict) -> dict[str, int]:
    """TRs each enabled stimulus modality will have, from the movie's headers (no decoding).

    Frames and text follow the video stream's duration, audio codes the audio stream's. Used to
    place the split before the features exist; assemble_dataset checks the features against it.
    """
    from giblet.errors import InputError
    from giblet.stimulus.media import probe_movie
    from giblet.timing import n_trs

    info = probe_movie(movie)
    out = {}
    if modalities["frames"]["enabled"] or modalities["text"]["enabled"]:
        out["video"] = n_trs(info.duration_s, tr)
    if modalities["audio"]["enabled"]:
        if not info.has_audio:
            raise InputError(movie, "has no audio stream; set stimulus.audio.enabled: false for a silent movie")
        seconds = info.audio_duration_s
        out["audio"] = n_trs(seconds, tr)
    return out


def timeline_runs(fmri_info: dict, n_stimulus: int) -> tuple[tuple[int, int, int, int], ...]:
    """``fmri.json``'s runs as :class:`Split` runs; a segment reaches at most the stimulus's end."""
    runs = fmri_info.get("runs") or [{"fmri": [0, fmri_info["n_trs"]], "stimulus": [0, None]}]
    return tuple((run["fmri"][0], run["fmri"][1], run["stimulus"][0],
                  n_stimulus if run["stimulus"][1] is None else min(run["stimulus"][1], n_stimulus))
                 for run in runs)


def write_split_plan(fmri_info: dict, stimulus_trs: dict[str, int], params: dict, shift_trs: int,
                     out_json) -> Split:
    """The ``plan_split`` stage: place the blocks from the fMRI runs and stimulus lengths, write JSON."""
    from giblet.files import write_json

    n_stimulus = min(stimulus_trs.values())
    split = plan_split(fmri_info["n_trs"], n_stimulus, params, shift_trs, timeline_runs(fmri_info, n_stimulus))
    n_targets = {name: len(split.targets(name)) for name in split.ranges}
    usable = [t for a, b, _, _ in split.runs for t in range(a, b) if split.usable(t)]
    write_json(out_json, {**split.to_dict(), "n_fmri_trs": fmri_info["n_trs"], "stimulus_trs": stimulus_trs,
                          "n_targets": n_targets, "usable_targets": [usable[0], usable[-1] + 1]})
    return split


def read_training_block(split_json) -> tuple[int, int]:
    """The training block ``[start, stop)`` (target TRs) of a ``plan_split`` file."""
    import json

    from giblet.errors import InputError

    try:
        start, stop = json.loads(Path(split_json).read_text())["ranges"]["train"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{split_json}: not a split plan with a training block ({err})") from err
    return int(start), int(stop)


def blocked_cv(targets, n_folds: int = 5, gap: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Time-respecting CV over fit samples (rows in the order of ``targets``, target fMRI TRs).

    The samples sorted by target are cut into ``n_folds`` contiguous folds (no shuffling). For each
    fold, the training rows are those whose target lies more than ``gap`` TRs before the fold's
    first target or after its last: with ``gap >= lag - 1`` no training window shares a stimulus
    TR with a validation window, and the purge also absorbs the fMRI's short autocorrelation.
    Returns ``[(train_rows, val_rows), ...]`` for himalaya/sklearn ``cv=``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(targets, kind="stable")
    folds = []
    for rows in np.array_split(order, n_folds):
        if len(rows) == 0:
            continue
        lo, hi = targets[rows].min(), targets[rows].max()
        train = np.flatnonzero((targets < lo - gap) | (targets > hi + gap))
        if len(train) == 0:
            raise ValueError(f"fold [{lo}, {hi}] leaves no training samples with gap {gap}")
        folds.append((train, np.sort(rows)))
    return folds
