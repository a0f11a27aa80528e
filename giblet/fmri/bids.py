"""Find the runs, confounds and brain masks of an fMRIPrep derivatives folder (no pybids).

fMRIPrep writes, per subject (and session) and run::

    sub-<s>[/ses-<x>]/func/sub-<s>[_ses-<x>]_task-<t>[_acq-..][_run-<r>]_space-<sp>[_res-..]_desc-preproc_bold.nii.gz
    sub-<s>[/ses-<x>]/func/sub-<s>[_ses-<x>]_task-<t>[_acq-..][_run-<r>]_desc-confounds_timeseries.tsv
    sub-<s>[/ses-<x>]/func/sub-<s>[_ses-<x>]_task-<t>[_acq-..][_run-<r>]_space-<sp>[_res-..]_desc-brain_mask.nii.gz

(fMRIPrep before 20.0 named the confounds ``_desc-confounds_regressors.tsv``; both are accepted, the
newer name preferred). :func:`discover` parses every file name under ``sub-*/func/`` and
``sub-*/ses-*/func/`` into its entities (:mod:`giblet.fmri.bids_names`), keeps the preprocessed BOLD
files of one task, space and (optionally) session, and returns one path pattern per kind of file,
with ``{subject}`` and, when the files have runs, ``{run}`` in it: the shape of the ``inputs.bold``
pattern the rest of the pipeline reads. Every other entity (``acq``, ``res``, ``echo``, ...) must
have the same value in every file, so that one pattern fits them all; anything that does not fit is
an :class:`~giblet.errors.InputError` naming the file or folder and what differs.

The confounds and mask of a BOLD file are found by its entities (those of the BOLD file, without
``space``/``res``/``den``/``cohort``/``echo`` for the confounds and without ``echo`` for the mask), so
a missing one is reported by the exact path expected. Either every subject and run has one, or none.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from giblet.errors import ConfigError, InputError
from giblet.fmri.bids_names import LABEL, BidsName, name_differences, natural_key, path_template, scan

log = logging.getLogger(__name__)

# (desc, suffix, extension) of each kind of file.
BOLD = ("preproc", "bold", ".nii.gz")
CONFOUNDS = (("confounds", "timeseries", ".tsv"), ("confounds", "regressors", ".tsv"))  # preferred first
BRAIN_MASK = ("brain", "mask", ".nii.gz")
# Entities of the BOLD file that its confounds / brain mask do not carry.
CONFOUNDS_DROP = frozenset({"space", "res", "den", "cohort", "echo"})
BRAIN_MASK_DROP = frozenset({"echo"})
# Entities that discover() selects on itself; `select` may not name them.
FIXED = frozenset({"sub", "ses", "task", "run", "space", "desc"})
KINDS = ("bold", "confounds", "brain_mask")
KIND_NAMES = {"bold": "preprocessed BOLD", "confounds": "confounds", "brain_mask": "brain mask"}


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found: subjects, runs, one path pattern per kind of file, and the files.

    ``bold``, ``confounds`` and ``brain_mask`` are ``str.format`` patterns with ``{subject}`` (and
    ``{run}`` when ``runs`` is not empty; the session is already written in); ``confounds`` and
    ``brain_mask`` are None when no subject has such a file. ``files`` maps ``(subject, run)``, with
    run ``""`` when the files have no run entity, to ``{"bold": path, "confounds": path,
    "brain_mask": path}`` (the kinds found). ``pattern.format(subject=s, run=r)`` is exactly
    ``files[(s, r)][kind]``.
    """

    root: Path
    task: str
    space: str
    session: str | None
    subjects: list[str]
    runs: list[str]
    bold: str
    confounds: str | None
    brain_mask: str | None
    files: dict[tuple[str, str], dict[str, Path]]


def _check_labels(task: str, space: str, session: str | None, select: Mapping[str, str]) -> None:
    """The configured labels must be BIDS labels (letters and digits); ConfigError names the key."""
    for key, value in (("task", task), ("space", space), ("session", session)):
        if value is None and key == "session":
            continue
        if not isinstance(value, str) or not LABEL.match(value):
            raise ConfigError(f"invalid config key 'inputs.bids.{key}': {value!r} is not a BIDS label "
                              f"(letters and digits only, without the '{key}-' prefix)")
    for key, value in select.items():
        if key in FIXED or not re.fullmatch(r"[A-Za-z]+", str(key)):
            raise ConfigError(f"invalid config key 'inputs.bids.select': cannot select on entity {key!r} "
                              f"(letters only, and not one of {sorted(FIXED)})")
        if not isinstance(value, str) or not LABEL.match(value):
            raise ConfigError(f"invalid config key 'inputs.bids.select.{key}': {value!r} is not a BIDS label")


def _check_root(root: Path) -> None:
    if not root.exists():
        raise InputError(root, "fMRIPrep derivatives folder not found")
    if not root.is_dir():
        raise InputError(root, "is not a folder; give the fMRIPrep derivatives folder (holding sub-*/)")
    if not (root / "dataset_description.json").is_file():
        log.warning("%s: no dataset_description.json; is this an fMRIPrep derivatives folder?", root)


def _listing(values: Iterable[str | None]) -> str:
    found = sorted({v for v in values if v is not None}, key=natural_key)
    return ", ".join(found) if found else "none"


def _suggest(wanted: str | None, values: Iterable[str | None]) -> str:
    values = sorted({v for v in values if v})
    if wanted in values:
        return ""
    close = difflib.get_close_matches(wanted or "", values, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _no_bold_error(root: Path, names: list[BidsName], task: str, space: str, session: str | None,
                   select: Mapping[str, str]) -> InputError:
    """The error for 'nothing matched': what was found instead, so that a typo shows."""
    wanted = f"task '{task}', space '{space}'" + (f", session '{session}'" if session else "")
    wanted += "".join(f", {k} '{v}'" for k, v in select.items())
    where = f"{root}{os.sep}sub-*{os.sep}[ses-*{os.sep}]func{os.sep}"
    preproc = [n for n in names if n.is_kind(BOLD)]
    if not preproc:
        raw = [n for n in names if n.suffix == "bold" and n.get("desc") is None]
        hint = (f"; found {len(raw)} BOLD files without desc-preproc: this looks like a raw BIDS dataset, "
                "give its derivatives/fmriprep folder" if raw else "; is this an fMRIPrep output folder?")
        if (root / "fmriprep").is_dir():
            hint += f" ({root / 'fmriprep'} exists: is that the one?)"
        return InputError(root, f"no *_desc-preproc_bold.nii.gz under {where}{hint}")
    tasks, spaces = [n.get("task") for n in preproc], [n.get("space") for n in preproc]
    found = (f"found tasks: {_listing(tasks)}{_suggest(task, tasks)}; "
             f"spaces: {_listing(spaces)}{_suggest(space, spaces)}")
    if session is not None:
        found += f"; sessions: {_listing(n.get('ses') for n in preproc)}"
    for key in select:
        found += f"; {key}: {_listing(n.get(key) for n in preproc)}"
    return InputError(root, f"no *_desc-preproc_bold.nii.gz for {wanted} under {where} ({len(preproc)} preprocessed "
                            f"BOLD files there; {found})")


def _matches(name: BidsName, task: str, space: str, session: str | None, select: Mapping[str, str]) -> bool:
    wanted = {"task": task, "space": space, **select}
    if session is not None:
        wanted["ses"] = session
    return name.is_kind(BOLD) and all(name.get(k) == v for k, v in wanted.items())


def _group(bold: list[BidsName]) -> dict[tuple[str, str], BidsName]:
    """(subject, run) -> its one BOLD file; several files for one subject and run are an error."""
    groups = defaultdict(list)
    for name in bold:
        groups[(name.get("sub"), name.get("run") or "")].append(name)
    for (subject, run), group in groups.items():
        if len(group) > 1:
            raise _ambiguous_error(subject, run, group)
    return {key: group[0] for key, group in groups.items()}


def _ambiguous_error(subject: str, run: str, group: list[BidsName]) -> InputError:
    keys = sorted({k for n in group for k, _ in n.entities if len({m.get(k) for m in group}) > 1})
    differ = "; ".join(f"{k}- values {_listing(n.get(k) or 'absent' for n in group)}" for k in keys)
    if "ses" in keys:
        fix = "set inputs.bids.session to one of the sessions"
    elif keys:
        k = keys[0]
        example = next(n.get(k) for n in group if n.get(k))
        fix = (f"keep one per subject and run under the folder, or choose one with "
               f"inputs.bids.select (e.g. {{{k}: {example}}})")
    else:
        fix = "keep one per subject and run under the folder"
    files = "\n  ".join(str(n.path) for n in group)
    what = f"subject {subject}" + (f" run {run}" if run else "")
    return InputError(group[0].path.parent, f"{what} has {len(group)} matching preprocessed BOLD files, which differ "
                                            f"in {differ or 'folder'}; {fix}:\n  {files}")


def _one_pattern(names: list[BidsName], root: Path, kind: str) -> str:
    """The pattern every name fits; an error listing an example of each when they fit several."""
    by_template = defaultdict(list)
    for name in names:
        by_template[path_template(name, root)].append(name)
    if len(by_template) == 1:
        return next(iter(by_template))
    groups = sorted(by_template.values(), key=len, reverse=True)
    examples = "\n  ".join(f"{g[0].path} (and {len(g) - 1} more like it)" if len(g) > 1 else str(g[0].path)
                           for g in groups)
    differ = "; ".join(", ".join(name_differences(groups[0][0], g[0])) or "folder names" for g in groups[1:])
    raise InputError(root, f"the {KIND_NAMES[kind]} file names do not fit one pattern: they differ in {differ}; "
                           f"rename or move the odd ones out. An example of each:\n  {examples}")


def _check_runs(grouped: dict[tuple[str, str], BidsName], subjects: list[str], runs: list[str], pattern: str) -> None:
    """Every subject must have every run label that any subject has."""
    for subject in subjects:
        have = [r for r in runs if (subject, r) in grouped]
        for run in runs:
            if (subject, run) in grouped:
                continue
            others = [s for s in subjects if (s, run) in grouped]
            alike = [r for r in have if r.isdigit() and run.isdigit() and int(r) == int(run)]
            hint = (f"; it has run-{alike[0]}: write the run labels alike (run-1 and run-01 are different labels)"
                    if alike else "")
            raise InputError(pattern.format(subject=subject, run=run),
                             f"missing: subject {subject} has no run {run}, which subject(s) {', '.join(others)} "
                             f"have (runs of {subject}: {', '.join(have) or 'none'}){hint}")


def _companion(bold: BidsName, drop: frozenset, desc: str, suffix: str, extension: str,
               root: Path) -> tuple[frozenset, Path]:
    """The entities that identify the confounds / mask of a BOLD file, and the path expected for it."""
    entities = [(k, desc if k == "desc" else v) for k, v in bold.entities if k not in drop]
    filename = "_".join(f"{k}-{v}" for k, v in entities) + f"_{suffix}{extension}"
    return frozenset(entities), root / Path(*bold.parts) / filename


def _find_companions(grouped: dict[tuple[str, str], BidsName], names: list[BidsName], kind: str,
                     root: Path) -> dict[tuple[str, str], BidsName] | None:
    """(subject, run) -> its confounds (or brain mask) file; None when none exists; every one or an error."""
    variants = CONFOUNDS if kind == "confounds" else (BRAIN_MASK,)
    drop = CONFOUNDS_DROP if kind == "confounds" else BRAIN_MASK_DROP
    for number, variant in enumerate(variants):
        index = {frozenset(n.entities): n for n in names if n.is_kind(variant)}
        expected = {key: _companion(bold, drop, *variant, root) for key, bold in grouped.items()}
        found = {key: index[entities] for key, (entities, _) in expected.items() if entities in index}
        if not found:
            continue
        missing = sorted((key for key in grouped if key not in found),
                         key=lambda key: (natural_key(key[0]), natural_key(key[1])))
        if missing:
            key = missing[0]
            path = expected[key][1]
            older = [v for v in variants[number + 1:]
                     if _companion(grouped[key], drop, *v, root)[0] in {frozenset(n.entities) for n in names
                                                                        if n.is_kind(v)}]
            hint = (f"; found the older {older[0][1]}{older[0][2]} name there instead: all subjects must come "
                    f"from one fMRIPrep version" if older else "")
            subject, run = key
            what = f"subject {subject}" + (f" run {run}" if run else "")
            raise InputError(path, f"missing: {what} has no {KIND_NAMES[kind]} file, but {len(found)} of the "
                                   f"{len(grouped)} subject/run(s) have one ({len(missing)} missing){hint}")
        return found
    return None


def discover(root: str | Path, task: str, space: str, session: str | None = None, *,
             select: Mapping[str, str] | None = None) -> Discovery:
    """Find the preprocessed BOLD runs, confounds and brain masks of one task in an fMRIPrep folder.

    Parameters
    ----------
    root : str or Path
        The fMRIPrep derivatives folder (holding ``dataset_description.json`` and ``sub-*/``).
    task, space : str
        BIDS labels without their ``task-``/``space-`` prefix, e.g. ``"movie"``,
        ``"MNI152NLin2009cAsym"``.
    session : str or None
        A session label (without ``ses-``) to read; None when the data have no sessions (or one).
    select : mapping, optional
        Further entities the BOLD files must carry, e.g. ``{"res": "2"}`` when fMRIPrep wrote the
        space at several resolutions. Their confounds and masks are found from the BOLD files.

    Returns
    -------
    Discovery
        Subjects and runs in natural order, one pattern per kind of file, and the files.

    Raises
    ------
    InputError
        Naming the folder or file: the root is missing; no BOLD file matches (listing the tasks and
        spaces found); a subject and run has several matching BOLD files; the names do not fit one
        pattern; a subject lacks a run the others have; a confounds or mask file is missing while
        others exist (naming the path expected).
    ConfigError
        ``task``, ``space``, ``session`` or ``select`` is not a BIDS label.
    """
    root, select = Path(root), dict(select or {})
    _check_labels(task, space, session, select)
    _check_root(root)
    names = scan(root)
    bold = [n for n in names if _matches(n, task, space, session, select)]
    if not bold:
        raise _no_bold_error(root, names, task, space, session, select)
    grouped = _group(bold)
    bold_pattern = _one_pattern(list(grouped.values()), root, "bold")
    subjects = sorted({s for s, _ in grouped}, key=natural_key)
    runs = sorted({r for _, r in grouped if r}, key=natural_key)
    _check_runs(grouped, subjects, runs or [""], bold_pattern)
    _warn_left_out(root, subjects)

    files = {key: {"bold": name.path} for key, name in grouped.items()}
    patterns = {"bold": bold_pattern}
    for kind in ("confounds", "brain_mask"):
        found = _find_companions(grouped, names, kind, root)
        patterns[kind] = None if found is None else _one_pattern(list(found.values()), root, kind)
        for key, name in (found or {}).items():
            files[key][kind] = name.path
    if patterns["confounds"] is None:
        log.warning("%s: no confounds files (*_desc-confounds_timeseries.tsv) for task %s", root, task)
    ordered = {(s, r): files[(s, r)] for s in subjects for r in runs or [""]}
    return Discovery(root=root, task=task, space=space, session=session, subjects=subjects, runs=runs,
                     bold=patterns["bold"], confounds=patterns["confounds"], brain_mask=patterns["brain_mask"],
                     files=ordered)


def _warn_left_out(root: Path, subjects: list[str]) -> None:
    """Subject folders without a matching BOLD file are left out; say so, since it may be a mistake."""
    folders = {p.name[len("sub-"):] for p in root.glob("sub-*") if p.is_dir()}
    left_out = sorted(folders - set(subjects), key=natural_key)
    if left_out:
        log.warning("%s: subject folder(s) %s hold no matching BOLD file; left out", root, ", ".join(left_out))


def _short_list(items: list[str], limit: int = 20) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit - 3]) + f", ... ({len(items) - limit + 1} more), " + ", ".join(items[-2:])


def describe(found: Discovery) -> str:
    """A few human-readable lines about a :class:`Discovery`, for ``giblet config``."""
    counts = {kind: sum(kind in f for f in found.files.values()) for kind in KINDS}
    session = f", session {found.session}" if found.session else ""
    runs = (f"{len(found.runs)} run(s) each: {_short_list(found.runs)}" if found.runs
            else "no run entity (one BOLD file per subject)")
    lines = [
        f"fMRIPrep derivatives: {found.root}",
        f"  task {found.task}, space {found.space}{session}",
        f"  {len(found.subjects)} subject(s): {_short_list(found.subjects)}",
        f"  {runs}",
        f"  files: {counts['bold']} preprocessed BOLD, {counts['confounds']} confounds, "
        f"{counts['brain_mask']} brain masks",
    ]
    for kind in KINDS:
        pattern = getattr(found, kind)
        lines.append(f"  {kind}: {pattern if pattern is not None else '(none found)'}")
    return "\n".join(lines)
