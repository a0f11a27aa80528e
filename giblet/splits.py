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
    """Half-open target-TR ranges [start, stop) per block, in fMRI TR indices."""

    ranges: dict[str, tuple[int, int]]
    lag_trs: int
    shift_trs: int
    buffer_trs: int

    def window(self, target: int) -> tuple[int, int]:
        """Stimulus TRs [start, stop) that feed target fMRI TR ``target``."""
        stop = target + self.shift_trs + 1
        return stop - self.lag_trs, stop

    def targets(self, name: str) -> range:
        return range(*self.ranges[name])

    def to_dict(self) -> dict:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "lag_trs": self.lag_trs,
                "shift_trs": self.shift_trs, "buffer_trs": self.buffer_trs}

    @classmethod
    def from_dict(cls, data: dict) -> "Split":
        return cls({k: tuple(v) for k, v in data["ranges"].items()}, data["lag_trs"], data["shift_trs"],
                   data["buffer_trs"])


def usable_targets(n_fmri_trs: int, n_stimulus_trs: int, lag_trs: int, shift_trs: int) -> tuple[int, int]:
    """Target TRs [first, stop) whose whole window lies inside the stimulus and the fMRI."""
    first = max(0, lag_trs - 1 - shift_trs)
    stop = min(n_fmri_trs, n_stimulus_trs - shift_trs)
    if stop - first <= 0:
        raise SplitError(f"no usable target TRs: {n_fmri_trs} fMRI TRs, {n_stimulus_trs} stimulus TRs, "
                         f"lag {lag_trs}, shift {shift_trs}")
    return first, stop


def plan_split(n_fmri_trs: int, n_stimulus_trs: int, params: dict, shift_trs: int = 0) -> Split:
    """Place the blocks. ``params`` is the validated ``split`` config section; ``shift_trs`` is
    ``fmri.shift_trs``.

    With ``fractions``, the usable targets minus the buffers are divided in proportion, in the order
    train, val, test. With explicit ``ranges`` (e.g. a run boundary), those are used as given and
    checked. Raises SplitError when blocks overlap, leave too small a buffer or fall outside the data.
    """
    lag, shift = params["lag_trs"], shift_trs
    buffer = lag if params["buffer_trs"] is None else params["buffer_trs"]
    if buffer < lag:
        raise SplitError(f"split.buffer_trs={buffer} is shorter than the lag window ({lag} TRs): "
                         "training windows would reach validation/test targets")
    first, stop = usable_targets(n_fmri_trs, n_stimulus_trs, lag, shift)
    if params["ranges"]:
        ranges = {name: tuple(params["ranges"][name]) for name in SPLIT_NAMES if name in params["ranges"]}
    else:
        ranges = _ranges_from_fractions(first, stop, params["fractions"], buffer)
    _check(ranges, first, stop, buffer)
    return Split(ranges, lag, shift, buffer)


def _ranges_from_fractions(first: int, stop: int, fractions: dict, buffer: int) -> dict:
    names = [name for name in SPLIT_NAMES if fractions.get(name, 0) > 0]
    available = stop - first - buffer * (len(names) - 1)
    if available < len(names):
        raise SplitError(f"{stop - first} usable TRs cannot hold {len(names)} blocks and their buffers")
    total = sum(fractions[name] for name in names)
    ranges, start, used = {}, first, 0
    for k, name in enumerate(names):
        size = available - used if k == len(names) - 1 else round(available * fractions[name] / total)
        ranges[name] = (start, start + size)
        used += size
        start += size + buffer
    return ranges


def _check(ranges: dict, first: int, stop: int, buffer: int) -> None:
    if "train" not in ranges:
        raise SplitError("the split has no train block")
    ordered = sorted(ranges.items(), key=lambda item: item[1][0])
    for name, (a, b) in ordered:
        if not first <= a < b <= stop:
            raise SplitError(f"split block {name} [{a}, {b}) is outside the usable targets [{first}, {stop})")
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


def write_split_plan(fmri_info: dict, stimulus_trs: dict[str, int], params: dict, shift_trs: int,
                     out_json) -> Split:
    """The ``plan_split`` stage: place the blocks from the fMRI and stimulus lengths, write JSON."""
    from giblet.files import write_json

    n_stimulus = min(stimulus_trs.values())
    split = plan_split(fmri_info["n_trs"], n_stimulus, params, shift_trs)
    write_json(out_json, {**split.to_dict(), "n_fmri_trs": fmri_info["n_trs"], "stimulus_trs": stimulus_trs,
                          "usable_targets": list(usable_targets(fmri_info["n_trs"], n_stimulus,
                                                                split.lag_trs, shift_trs))})
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
