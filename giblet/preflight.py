"""``giblet check``: the whole input set, checked from its headers before anything is computed.

A lab meets a data set's problems one failed job at a time otherwise. This check reads only headers
and small tables (NIfTI headers, the movie's container, the confounds TSVs, the brain masks, the
annotation table), so it takes seconds, and it reports **every** problem at once:

- each BOLD run: readable, 4-D, the same grid (shape, affine) as the first, the config's TR, more
  volumes than its dummies;
- each run against the movie's clock, subject by subject (:mod:`giblet.fmri.runs`), or, with one
  file per subject, the subjects' lengths against each other and the movie;
- dummies against fMRIPrep's own evidence, its ``non_steady_state_outlier*`` columns;
- each confounds table: the columns, a row per volume, no ``n/a`` past the first row;
- brain masks: present where fMRIPrep's BOLD needs them, readable, and overlapping across runs;
- the movie (its duration, an audio stream when audio is on) and the annotations' time range;
- the split: blocks that fit the usable targets with the lag window.

The same checks run again in the stages, which stop at the first problem; this one goes on, so one
run of it lists everything to fix. Its report is JSON (``{"ok", "errors", "warnings", "problems",
"runs", "movie", "annotations", "split"}``) and a table per subject and run in the log.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from giblet.errors import ConfigError, InputError

log = logging.getLogger(__name__)

NON_STEADY_STATE = "non_steady_state_outlier"  # fMRIPrep's columns, one per volume it flagged
MIN_MASK_OVERLAP = 0.8  # of the smallest brain mask, kept by the intersection of all


@dataclass
class Problem:
    """One thing wrong with the inputs: ``severity`` "error" (the pipeline would stop or be wrong) or
    "warning" (it runs, but look); ``where`` a run's label, "movie", "annotations", "mask" or "split"."""

    severity: str
    where: str
    path: str | None
    message: str


class Findings:
    """The problems found so far, and per-check facts for the report."""

    def __init__(self):
        self.problems: list[Problem] = []

    def add(self, severity: str, where: str, path, message: str) -> None:
        self.problems.append(Problem(severity, where, str(path) if path else None, message))

    @contextmanager
    def collect(self, where: str):
        """Record an InputError or ConfigError raised inside as an error of ``where``, and go on."""
        from giblet.splits import SplitError

        try:
            yield
        except InputError as err:
            self.add("error", where, err.path, err.problem)
        except (ConfigError, SplitError) as err:
            self.add("error", where, None, str(err))
        except Exception as err:  # noqa: BLE001 - a file no reader expected (binary, truncated): keep checking
            log.debug("check of %s failed", where, exc_info=True)
            self.add("error", where, None, f"could not be checked: {type(err).__name__}: {err}")

    def at(self, where: str) -> str:
        """The worst severity recorded for ``where``, or "ok"."""
        found = {p.severity for p in self.problems if p.where == where}
        return "error" if "error" in found else "warning" if "warning" in found else "ok"


def check_inputs(config: dict) -> dict:
    """Check every input the validated ``config`` names; return the report (see the module docstring)."""
    from giblet import paths
    from giblet.rules import fmriprep_inputs

    findings = Findings()
    report = {"runs": [], "movie": None, "annotations": None, "split": None}
    runs = {}
    with findings.collect("config"):
        runs = paths.runs(config)
    movie = None
    with findings.collect("movie"):
        movie = _movie(paths.movie(config), config, findings)
    report["movie"] = movie
    images, rows = _bold_headers(runs, config["tr"], findings)
    report["runs"] = rows
    timeline = _timeline(runs, images, rows, config, movie, findings)
    _confounds(runs, images, config, findings)
    _brain_masks(runs, images, config, fmriprep_inputs(config), findings)
    if config["stimulus"]["text"]["enabled"] and movie:
        with findings.collect("annotations"):
            report["annotations"] = _annotations(paths.annotations(config), config, movie, findings)
    if timeline and movie:
        with findings.collect("split"):
            report["split"] = _split(timeline, config, movie, findings)
    for row in rows:
        row["status"] = findings.at(row["run"])
    errors = sum(p.severity == "error" for p in findings.problems)
    return {"ok": errors == 0, "errors": errors, "warnings": len(findings.problems) - errors,
            "problems": [asdict(p) for p in findings.problems], **report}


def _movie(path: Path, config: dict, findings: Findings) -> dict:
    from giblet.stimulus.media import probe_movie
    from giblet.timing import n_trs

    info = probe_movie(path)
    facts = {"path": str(path), "duration_s": info.duration_s, "trs": n_trs(info.duration_s, config["tr"]),
             "has_audio": info.has_audio, "audio_duration_s": info.audio_duration_s}
    needs_video = config["stimulus"]["frames"]["enabled"]
    if needs_video and not info.has_video:
        findings.add("error", "movie", path, "has no video stream, and stimulus.frames is enabled")
    if config["stimulus"]["audio"]["enabled"] and not info.has_audio:
        findings.add("error", "movie", path, "has no audio stream; set stimulus.audio.enabled: false for a "
                                             "silent movie")
    return facts


def _bold_headers(runs: dict, tr: float, findings: Findings) -> tuple[dict, list[dict]]:
    """Every run's header: geometry against the first readable run, TR, dummies. Returns the readable
    images by path and one table row per subject and run."""
    from giblet.fmri.inputs import check_dummies, check_geometry, load_bold
    from giblet.fmri.runs import run_label

    images, rows, reference = {}, [], None
    for subject, entries in runs.items():
        for run in entries:
            label, path = run_label(subject, run), Path(run["bold"])
            row = {"subject": subject, "run": label, "bold": str(path), "volumes": None,
                   "dummies": run["dummy_volumes"], "kept": None, "segment_s": None}
            rows.append(row)
            with findings.collect(label):
                image = load_bold(path)
                row["volumes"] = int(image.shape[3])
                row["kept"] = row["volumes"] - run["dummy_volumes"]
                check_dummies(path, image, run["dummy_volumes"])
                images[path] = image  # its length counts on the timeline even if its grid or TR is off
                check_geometry(path, image, reference, tr)
                reference = reference or {"path": path, "shape": image.shape[:3], "affine": image.affine}
    return images, rows


def _timeline(runs: dict, images: dict, rows: list[dict], config: dict, movie: dict | None,
              findings: Findings) -> list[tuple[int, int, int, int]] | None:
    """Place the runs on the movie's clock and check each against its segment; returns the runs as
    :class:`giblet.splits.Split` runs, or None when the lengths are unknown."""
    from giblet.fmri.inputs import plan_runs
    from giblet.fmri.runs import run_label, run_length_error
    from giblet.timing import n_trs

    readable = {s: entries for s, entries in runs.items() if all(Path(r["bold"]) in images for r in entries)}
    if not readable or movie is None:
        return None
    tr = config["tr"]
    if config["dataset"] == "demo" or not config["inputs"]["runs"]:
        return _single_runs(readable, images, rows, config, movie, findings)
    timeline = None
    with findings.collect("timeline"):
        timeline = plan_runs(readable, images, tr, movie["duration_s"])
    if timeline is None:
        return None
    by_label = {row["run"]: row for row in rows}
    for subject, entries in readable.items():
        for run, placed in zip(entries, timeline):
            label, path = run_label(subject, run), Path(run["bold"])
            start, end = placed["stimulus"]
            by_label[label]["segment_s"] = [start * tr, end * tr]
            n_file = int(images[path].shape[3])
            error = run_length_error(path, n_file, placed, tr)
            if error:
                findings.add("error", label, path, error.problem)
            elif n_file - run["dummy_volumes"] > placed["n_volumes"]:
                findings.add("warning", label, path, f"{n_file - run['dummy_volumes'] - placed['n_volumes']} "
                                                     f"volume(s) past its movie segment: unused")
    last_end = timeline[-1]["stimulus"][1]
    if last_end < n_trs(movie["duration_s"], tr):
        findings.add("warning", "movie", movie["path"], f"the runs end at {last_end * tr:g} s, before the "
                                                        f"movie's end ({movie['duration_s']:g} s)")
    return [(run["fmri"][0], run["fmri"][1], run["stimulus"][0], run["stimulus"][1]) for run in timeline]


def _single_runs(runs: dict, images: dict, rows: list[dict], config: dict, movie: dict,
                 findings: Findings) -> list[tuple[int, int, int, int]]:
    """One file per subject from the movie's start: the subjects' lengths against each other (as
    ``fmri.short_subjects`` decides) and against the movie."""
    tr, shift = config["tr"], config["fmri"]["shift_trs"]
    lengths = {s: int(images[Path(entries[0]["bold"])].shape[3]) for s, entries in runs.items()}
    longest, shortest = max(lengths.values()), min(lengths.values())
    policy = config["fmri"]["short_subjects"]
    for subject, n in lengths.items():
        label, path = f"sub-{subject}", runs[subject][0]["bold"]
        if n < longest and policy == "error":
            findings.add("error", label, path, f"has {n} volumes, the others up to {longest}; set "
                                               f"fmri.short_subjects: truncate or drop")
        elif n < longest:
            findings.add("warning", label, path, f"has {n} volumes, the others up to {longest} "
                                                 f"(fmri.short_subjects: {policy})")
    for row in rows:
        row["segment_s"] = [0.0, lengths[row["subject"]] * tr] if row["subject"] in lengths else None
    n_fmri = longest if policy != "truncate" else shortest
    if n_fmri > movie["trs"] + shift:
        findings.add("warning", "movie", movie["path"],
                     f"the fMRI has {n_fmri} volumes but the movie {movie['trs']} TRs ({movie['duration_s']:g} s"
                     f"{f', plus fmri.shift_trs {shift}' if shift else ''}): the last "
                     f"{n_fmri - movie['trs'] - shift} volumes have no movie and are unused")
    return [(0, n_fmri, 0, movie["trs"])]


def _confounds(runs: dict, images: dict, config: dict, findings: Findings) -> None:
    """Each table's columns and rows (a missing column names the runs that have it), gaps past the
    first row, and fMRIPrep's non-steady-state volumes against the dummies."""
    from giblet.fmri.confounds import read_confounds, read_header, table_problems
    from giblet.fmri.runs import run_label
    from giblet.rules import confound_columns

    columns = confound_columns(config)
    tables = {run_label(s, run): (Path(run["confounds"]), int(images[Path(run["bold"])].shape[3]), run)
              for s, entries in runs.items() for run in entries
              if run.get("confounds") and Path(run["bold"]) in images}
    problems = table_problems({label: (path, n) for label, (path, n, _) in tables.items()}, columns)
    bad = set()
    for err in problems:
        label = next(label for label, (path, _, _) in tables.items() if path == Path(err.path))
        findings.add("error", label, err.path, err.problem)
        bad.add(label)
    for label, (path, n_volumes, run) in tables.items():
        if label in bad:
            continue
        with findings.collect(label):
            read_confounds(path, columns, n_volumes)  # gaps past the leading row
            flagged = [name for name in read_header(path) if name.startswith(NON_STEADY_STATE)]
            volumes = sorted(int(np.argmax(column)) for column in read_confounds(path, flagged, n_volumes).T) \
                if flagged else []
            used = [v for v in volumes if v >= run["dummy_volumes"]]
            if used:
                findings.add("warning", label, path, f"fMRIPrep flagged volume(s) {used} as non-steady-state "
                                                     f"({NON_STEADY_STATE}* columns), but inputs.runs drops only "
                                                     f"the first {run['dummy_volumes']}: raise dummy_volumes to "
                                                     f"{used[-1] + 1} if they lead the run")
            elif len(volumes) < run["dummy_volumes"]:
                findings.add("warning", label, path, f"inputs.runs drops {run['dummy_volumes']} dummy volume(s) but "
                                                     f"fMRIPrep flagged {len(volumes)} as non-steady-state: if the "
                                                     f"scanner already discarded its dummies, the dropped volumes "
                                                     f"are movie and the run starts late")


def _brain_masks(runs: dict, images: dict, config: dict, fmriprep: bool, findings: Findings) -> None:
    """Brain masks where fMRIPrep's BOLD needs them; each readable, on the BOLD's grid or resampled;
    together, overlapping (a misregistered run shows as a small intersection)."""
    from giblet.fmri.mask import METHODS, check_mask_source
    from giblet.fmri.nifti import read_mask_nifti
    from giblet.fmri.runs import run_label

    fmri = config["fmri"]
    with findings.collect("mask"):
        check_mask_source(runs, {"mask": fmri["mask"], "allow_data_mask": fmri["allow_data_mask"],
                                 "fmriprep_inputs": fmriprep})
    if fmri["mask"] not in METHODS:
        with findings.collect("mask"):
            read_mask_nifti(Path(fmri["mask"]), "mask file not found (fmri.mask)")
    reference = next(iter(images.values()), None)
    masks = {}
    for subject, entries in runs.items():
        for run in entries:
            if not run.get("brain_mask"):
                continue
            label, path = run_label(subject, run), Path(run["brain_mask"])
            with findings.collect(label):
                data, image = read_mask_nifti(path, "brain mask not found (inputs.brain_mask)")
                if data.ndim != 3:
                    raise InputError(path, f"a brain mask must be 3-D, got shape {data.shape}")
                masks[label] = np.nan_to_num(data) > 0
                if reference is not None and (data.shape != reference.shape[:3]
                                              or not np.allclose(image.affine, reference.affine, atol=1e-4)):
                    findings.add("warning", label, path, "is not on the BOLD's grid: it will be resampled "
                                                         "(nearest neighbour)")
    same_shape = [m for m in masks.values() if m.shape == next(iter(masks.values())).shape]
    if len(same_shape) < 2:
        return
    together = np.logical_and.reduce(same_shape).sum()
    smallest = min(int(m.sum()) for m in same_shape)
    if together == 0:
        findings.add("error", "mask", None, "the runs' brain masks have no voxel in common: are the runs in "
                                            "the same space?")
    elif together < MIN_MASK_OVERLAP * smallest:
        worst = min(masks, key=lambda label: (masks[label] & np.logical_and.reduce(
            [m for other, m in masks.items() if other != label and m.shape == masks[label].shape])).sum())
        findings.add("warning", "mask", None, f"the runs' brain masks share {together} voxels, "
                                              f"{together / smallest:.0%} of the smallest ({smallest}); the "
                                              f"odd one out may be {worst}: is it registered to the same space?")


def _annotations(path: Path, config: dict, movie: dict, findings: Findings) -> dict:
    from giblet.stimulus.annotations import read_annotations

    table = read_annotations(path, config["stimulus"]["text"]["columns"])
    duration = movie["duration_s"]
    beyond = int((table["onset"] >= duration).sum())
    if beyond:
        findings.add("warning", "annotations", path, f"{beyond} of {len(table)} annotations start at or after the "
                                                     f"movie's end ({duration:g} s) and are dropped: is the table "
                                                     f"for this cut of the movie?")
    return {"path": str(path), "rows": len(table), "first_onset_s": float(table["onset"].min()),
            "last_offset_s": float(table["offset"].max())}


def _split(timeline: list[tuple[int, int, int, int]], config: dict, movie: dict, findings: Findings) -> dict:
    from giblet.splits import plan_split

    split_config, lag = config["split"], config["split"]["lag_trs"]
    n_fmri = timeline[-1][1]
    split = plan_split(n_fmri, movie["trs"], split_config, config["fmri"]["shift_trs"], tuple(timeline))
    targets = {name: len(split.targets(name)) for name in split.ranges}
    for name, n in targets.items():
        if n < lag:
            findings.add("warning", "split", None, f"the {name} block holds {n} target TRs, fewer than the lag "
                                                   f"window ({lag}): its scores will be noisy")
    return {"targets": targets, "lag_trs": lag}


def run_check(config: dict, out_report: Path) -> dict:
    """Check, log the table, and write the report: to ``out_report`` when nothing is wrong (a stale
    ``*.failed.json`` beside it is removed), else to ``<stem>.failed.json`` beside it, then raise an
    InputError naming that file and the first problem. Returns the report."""
    from giblet.files import write_json

    out_report = Path(out_report)
    failed = out_report.with_name(out_report.stem + ".failed.json")
    report = check_inputs(config)
    log.info("giblet check: every input, from its headers\n%s", format_report(report))
    out_report.parent.mkdir(parents=True, exist_ok=True)
    if report["ok"]:
        write_json(out_report, report)
        failed.unlink(missing_ok=True)
        return report
    write_json(failed, report)
    first = next(p for p in report["problems"] if p["severity"] == "error")
    where = f"{first['path']}: " if first["path"] else ""
    raise InputError(failed, f"{report['errors']} error(s) in the inputs, all listed above and in this "
                             f"report; the first: {first['where']}: {where}{first['message']}")


def format_report(report: dict) -> str:
    """The report as text: one row per subject and run, then the movie, annotations and split, then
    every problem."""
    header = ["subject/run", "volumes", "dummies", "kept", "movie segment (s)", "status"]
    body = [[row["run"], _text(row["volumes"]), _text(row["dummies"]), _text(row["kept"]),
             "-".join(f"{t:g}" for t in row["segment_s"]) if row["segment_s"] else "?", row["status"]]
            for row in report["runs"]]
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    if report["movie"]:
        movie = report["movie"]
        lines.append(f"movie: {movie['path']}: {movie['duration_s']:g} s ({movie['trs']} TRs), "
                     f"audio {'yes' if movie['has_audio'] else 'no'}")
    if report["annotations"]:
        notes = report["annotations"]
        lines.append(f"annotations: {notes['path']}: {notes['rows']} rows, {notes['first_onset_s']:g}-"
                     f"{notes['last_offset_s']:g} s")
    if report["split"]:
        lines.append("split: " + ", ".join(f"{name} {n}" for name, n in report["split"]["targets"].items())
                     + f" target TRs (lag {report['split']['lag_trs']} TRs)")
    lines.append(f"{report['errors']} error(s), {report['warnings']} warning(s)"
                 + (": the data set is ready" if report["ok"] else ""))
    for problem in report["problems"]:
        where = f"{problem['path']}: " if problem["path"] else ""
        lines.append(f"  {problem['severity']:7s} {problem['where']}: {where}{problem['message']}")
    return "\n".join(lines)


def _text(value) -> str:
    return "?" if value is None else str(value)
