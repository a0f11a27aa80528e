"""The report's "cleaning" row: what was asked of each run's cleaning, and what nilearn really did.

Read from the subjects' z arrays' sidecars (``normalize_fmri`` records each run's cleaning there:
whether the cosine high-pass was applied, which confounds nilearn left out of the fit, the
interpolated high-motion volumes), so a dropped filter shows on the report's first page.
"""

from __future__ import annotations

from pathlib import Path


def cleaning_row(sidecars: list[dict]) -> list[str] | None:
    """The "cleaning" row of what was run, from the z arrays' sidecars: what was asked for, then, run by
    run, what nilearn left out of it (a dropped high-pass, confounds left out); None without cleaning."""
    cleanings = [sidecar["parameters"]["cleaning"] for sidecar in sidecars
                 if "cleaning" in sidecar.get("parameters", {})]  # none for a dropped subject
    runs = [run for cleaning in cleanings for run in cleaning["runs"]]
    if not runs:
        return None
    asked = cleanings[0]
    parts = [f"{len(asked['confounds'])} confounds" if asked.get("confounds") else "no confounds",
             f"cosine high-pass {asked['high_pass_hz']:g} Hz" if asked.get("high_pass_hz") else "no high-pass",
             "linear detrend" if asked.get("detrend") else None]
    text = f"each of {len(runs)} runs: " + ", ".join(p for p in parts if p) + "; mean removed per run"
    interpolated = sum(len(run.get("high_motion_volumes", [])) for run in runs)
    if asked.get("fd_threshold_mm") is not None:
        text += f"; {interpolated} high-motion volumes interpolated (FD > {asked['fd_threshold_mm']:g} mm)"
    dropped = [(Path(run["bold"]).name, run["high_pass"]) for run in runs
               if (run.get("high_pass") or "").startswith("dropped")]
    if dropped:
        text += (f". HIGH-PASS NOT APPLIED in {len(dropped)} of {len(runs)} runs: "
                 + "; ".join(f"{name} ({why.removeprefix('dropped: ')})" for name, why in dropped))
    left_out = [(Path(run["bold"]).name, column, why) for run in runs
                for column, why in (run.get("dropped_confounds") or {}).items()]
    if left_out:
        text += ". Confounds left out of the fit by nilearn: " + "; ".join(
            f"{column} in {name} ({why})" for name, column, why in left_out)
    return ["cleaning", text]
