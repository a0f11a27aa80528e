"""Runs (scans) on the movie's clock, and the one fMRI timeline they are joined into.

A study often splits the movie across several scans. Run ``k`` of a subject is a 4-D file whose
first ``dummy_volumes`` volumes are dropped (the scanner was not yet at steady state); its kept
volume ``i`` shows the movie at ``start_s + i * tr`` seconds. The runs are joined in movie order
into one fMRI timeline, and each keeps the stimulus TRs of its own movie segment, so:

    timeline TR ``fmri[0] + i``  <->  stimulus TR ``stimulus[0] + i``  (``i`` < ``n_volumes``)

The segment of run ``k`` ends where run ``k + 1`` starts (the last one at the movie's end). Where
``inputs.runs`` leaves ``start_s`` out, run ``k + 1`` starts where run ``k``'s volumes end, and
that length is the one most subjects' run ``k`` fits (:func:`segment_length`): one subject's short
or long run is then blamed on that subject's own file, never on another's. A run whose kept volumes
do not fill its segment is an error naming the file; one volume more than the segment holds is
allowed and not used (scanners often stop a volume late), in every subject. The split planner
(:mod:`giblet.splits`) reads the runs from ``fmri.json`` and never lets a window cross from one run
into the next.
"""

from __future__ import annotations

from pathlib import Path

from giblet.errors import ConfigError, InputError
from giblet.timing import n_trs as whole_trs

EXTRA_VOLUMES_ALLOWED = 1
START_TOLERANCE_TRS = 1e-3


def _start_tr(start_s: float, tr: float, index: int) -> int:
    """A run's start as a whole stimulus TR: the features sit on the TR grid from the movie's time 0."""
    position = start_s / tr
    if abs(position - round(position)) > START_TOLERANCE_TRS:
        raise ConfigError(f"invalid config key 'inputs.runs[{index}].start_s': {start_s:g} s is not a whole "
                          f"number of TRs ({tr:g} s); the stimulus features are on the TR grid from the movie's "
                          f"start, so trim the run (more dummy_volumes) or the movie to a TR boundary")
    return int(round(position))


def segment_length(kept: list[int]) -> int:
    """A run's movie segment in TRs when the next run's ``start_s`` is not given, from every subject's
    kept volumes (after the dummies) of that run: the length the most subjects fit (``n <= kept <=
    n + EXTRA_VOLUMES_ALLOWED``), the longer on a tie (a run cut short is the likelier fault)."""
    return max(sorted(set(kept)), key=lambda n: (sum(n <= k <= n + EXTRA_VOLUMES_ALLOWED for k in kept), n))


def plan_timeline(table: list[dict], kept: list[list[int]], tr: float, movie_duration_s: float,
                  files: list[Path]) -> list[dict]:
    """Place the runs on the movie's clock and on the joined fMRI timeline.

    ``table`` is ``inputs.runs`` (``start_s`` None: where the previous run ends); ``kept[k]`` the
    volumes after the dummies of run ``k`` in every subject (:func:`segment_length` decides); ``files``
    the first subject's BOLD files (named in errors about the table itself). Returns, per run, ``{"run", "session", "start_s", "dummy_volumes",
    "n_volumes", "fmri": [a, b], "stimulus": [s, e]}``: timeline TRs ``[a, b)`` show stimulus TRs
    ``[s, e)`` (``b - a == e - s == n_volumes``).
    """
    movie_trs = whole_trs(movie_duration_s, tr)
    timeline, start, position = [], None, 0
    for k, entry in enumerate(table):
        if entry["start_s"] is not None:
            given = _start_tr(entry["start_s"], tr, k)
            if start is not None and given < start:
                raise InputError(files[k], f"inputs.runs[{k}] starts at {entry['start_s']:g} s, before the end of "
                                           f"the previous run's segment ({start * tr:g} s): list the runs in movie "
                                           f"order, without overlap")
            start = given
        elif start is None:
            start = 0
        following = table[k + 1]["start_s"] if k + 1 < len(table) else None
        if k + 1 == len(table):
            end = movie_trs
        elif following is not None:
            end = _start_tr(following, tr, k + 1)
        else:
            end = start + segment_length(kept[k])
        if end <= start:
            raise InputError(files[k], f"run starts at {start * tr:g} s, at or after the end of its movie segment "
                                       f"({end * tr:g} s; the movie lasts {movie_duration_s:g} s)")
        n = end - start
        timeline.append({"run": entry["run"], "session": entry["session"], "start_s": start * tr,
                         "dummy_volumes": entry["dummy_volumes"], "n_volumes": n,
                         "fmri": [position, position + n], "stimulus": [start, end]})
        position += n
        start = end
    return timeline


def run_length_error(path: Path, n_file: int, run: dict, tr: float) -> InputError | None:
    """The error, naming the file, when a run's kept volumes (file volumes minus dummies) do not fill its
    movie segment (one extra volume is allowed); None when they do."""
    dummies, n = run["dummy_volumes"], run["n_volumes"]
    kept = n_file - dummies
    if n <= kept <= n + EXTRA_VOLUMES_ALLOWED:
        return None
    segment = f"[{run['stimulus'][0] * tr:g}, {run['stimulus'][1] * tr:g}) s"
    return InputError(path, f"has {n_file} volumes: {kept} after its {dummies} dummy volumes ({kept * tr:g} s), but "
                            f"its movie segment {segment} lasts {n} TRs ({n * tr:g} s); check inputs.runs (start_s, "
                            f"dummy_volumes) and that the file is this run's")


def check_run_length(path: Path, n_file: int, run: dict, tr: float) -> None:
    """Raise :func:`run_length_error`'s error, if any."""
    error = run_length_error(path, n_file, run, tr)
    if error:
        raise error


def run_label(subject: str, run: dict) -> str:
    """A run's BIDS-style name for messages and tables: ``sub-01 ses-2 run-3`` (entities it has)."""
    return " ".join([f"sub-{subject}"] + [f"{key[:3] if key == 'session' else key}-{run[key]}"
                                          for key in ("session", "run") if run.get(key)])


def subject_reads(info: dict, subject: str) -> list[dict]:
    """What to read of one subject, run by run, from ``fmri.json``'s facts: ``{"bold", "confounds",
    "brain_mask", "first" (dummy volumes skipped), "n" (volumes used), "fmri" ([a, b) on the timeline),
    "n_volumes_in_file"}``."""
    return [{**files, "first": run["dummy_volumes"], "n": run["n_volumes"], "fmri": run["fmri"]}
            for files, run in zip(info["per_subject"][subject]["runs"], info["runs"])]
