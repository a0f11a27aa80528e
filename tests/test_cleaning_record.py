"""What cleaning really did, run by run: nilearn may leave its cosine high-pass or some confounds out
of a run's fit without an error. ``giblet.fmri.clean.fit_notes`` decides this as nilearn does; each
case is checked against nilearn itself (the cleaned data with and without the dropped part are equal),
then through the ``normalize_fmri`` stage (sidecar and log) and the report's "what was run" row."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from nilearn.signal import clean, create_cosine_drift

from giblet import paths, stages
from giblet.config import apply_overrides, validate_config
from giblet.evaluate.cleaning_summary import cleaning_row
from giblet.fmri.clean import Cleaning, clean_run, fit_notes
from tests.fmriprep_like import giblet_config, write_fmriprep_like

TR = 1.5
HIGH_PASS = 0.01


def nilearn_clean(signals, confounds, high_pass=HIGH_PASS, detrend=False) -> np.ndarray:
    return clean(signals, confounds=confounds, detrend=detrend, standardize=False, t_r=TR,
                 filter="cosine" if high_pass else False, high_pass=high_pass)


@pytest.fixture
def run():
    rng = np.random.default_rng(5)
    n = 120
    drift = create_cosine_drift(HIGH_PASS, np.arange(n) * TR)[:, :-1]
    signals = rng.standard_normal((n, 40)) + 5 * drift @ rng.standard_normal((drift.shape[1], 40))
    return {"n": n, "signals": signals, "drift": drift, "motion": rng.standard_normal((n, 3))}


def test_a_confound_like_a_cosine_term_would_drop_nilearns_filter_but_giblet_applies_the_high_pass(run):
    n, signals = run["n"], run["signals"]
    like_cosine = run["drift"][:, :1] + 0.01 * np.random.default_rng(1).standard_normal((n, 1))
    confounds = np.hstack([run["motion"], like_cosine])
    names = ("trans_x", "trans_y", "trans_z", "cosine00")
    cleaning = Cleaning(tr=TR, confounds=names, high_pass_hz=HIGH_PASS)
    # nilearn's own filter: asked for, yet the same as without it.
    with pytest.warns(UserWarning, match="Cosine filter"):
        filtered = nilearn_clean(signals, confounds)
    np.testing.assert_allclose(filtered, nilearn_clean(signals, confounds, high_pass=None), atol=1e-10)

    notes = fit_notes(confounds, names, np.arange(n), n, cleaning)
    assert notes["high_pass"].startswith(f"applied: {run['drift'].shape[1]} cosine term(s)")
    assert "would have dropped them: confound 'cosine00'" in notes["high_pass"]
    # giblet's run: nilearn's fit with the drift terms among the confounds, which differs from its filter.
    rows = signals.astype(np.float32)
    clean_run(rows, confounds, np.zeros(n, bool), cleaning, names)
    expected = nilearn_clean(signals, np.hstack([confounds, run["drift"]]), high_pass=None)
    np.testing.assert_allclose(rows, expected - expected.mean(0), atol=1e-4)
    assert np.abs(expected - filtered).max() > 0.1

    notes = fit_notes(run["motion"], names[:3], np.arange(n), n,
                      Cleaning(tr=TR, confounds=names[:3], high_pass_hz=HIGH_PASS))
    assert notes["high_pass"] == f"applied: {run['drift'].shape[1]} cosine term(s) below 0.01 Hz"


def test_a_run_too_short_for_any_cosine_term_gets_no_high_pass(run):
    n = 20  # 30 s: the slowest cosine term is 1/60 Hz, above 0.01 Hz
    notes = fit_notes(None, (), np.arange(n), n, Cleaning(tr=TR, high_pass_hz=HIGH_PASS))
    assert notes["high_pass"].startswith("dropped: the run (20 volumes, 30 s) is too short")
    signals = run["signals"][:n]
    with pytest.warns(UserWarning, match="Cosine filter was not created"):
        filtered = nilearn_clean(signals, None)
    np.testing.assert_allclose(filtered, nilearn_clean(signals, None, high_pass=None), atol=1e-10)


def test_constant_and_collinear_confounds_are_named_and_really_contribute_nothing(run):
    n, signals, motion = run["n"], run["signals"], run["motion"]
    constant = np.full((n, 1), 3.0)  # e.g. a motion-outlier column with no outlier in this run
    combination = motion[:, :1] - 2 * motion[:, 1:2]
    confounds = np.hstack([motion, constant, combination])
    names = ("trans_x", "trans_y", "trans_z", "motion_outlier00", "combined")
    notes = fit_notes(confounds, names, np.arange(n), n, Cleaning(tr=TR, confounds=names, high_pass_hz=HIGH_PASS))
    assert notes["high_pass"].startswith("applied")
    assert notes["dropped_confounds"]["motion_outlier00"] == "constant in this run"
    assert len(notes["dropped_confounds"]) == 2  # and one of the collinear trio
    (collinear, why), = [(k, v) for k, v in notes["dropped_confounds"].items() if k != "motion_outlier00"]
    assert collinear in ("trans_x", "trans_y", "combined") and why == "a linear combination of the other regressors"
    np.testing.assert_allclose(nilearn_clean(signals, confounds), nilearn_clean(signals, motion), atol=1e-8)

    # Detrended, a linear trend is constant too.
    trend = np.linspace(0, 1, n)[:, None]
    notes = fit_notes(np.hstack([motion, trend]), names[:3] + ("trend",), np.arange(n), n,
                      Cleaning(tr=TR, confounds=names[:3] + ("trend",), detrend=True))
    assert notes["high_pass"] is None and notes["dropped_confounds"] == {"trend": "constant in this run once "
                                                                                  "detrended (a linear trend)"}
    np.testing.assert_allclose(nilearn_clean(signals, np.hstack([motion, trend]), None, True),
                               nilearn_clean(signals, motion, None, True), atol=1e-8)


def test_a_dropped_high_pass_reaches_the_sidecar_the_log_and_the_report(tmp_path):
    """A first run of 30 volumes (45 s) is too short for a cosine term below 0.01 Hz: its high-pass is
    not applied, the second run's is; the run's record, the rule's log and the report say so, naming
    the file."""
    fixture = write_fmriprep_like(tmp_path / "study", trs_per_run=(30, 80))
    raw = giblet_config(fixture, str(tmp_path / "results"))
    config = validate_config(apply_overrides(raw, ["stimulus.audio.enabled=false", "stimulus.text.enabled=false"]))
    Path(paths.fmri(config)["info"]).parent.mkdir(parents=True)
    Path(paths.dataset(config)["split"]).parent.mkdir(parents=True)
    for rule in ("fmri_mask", "plan_split"):
        assert stages.run(rule, stages.arguments(rule, config), progress=False) == 0
    log_file = tmp_path / "normalize.log"
    assert stages.run("normalize_fmri", stages.arguments("normalize_fmri", config, "02"),
                      logfile=str(log_file), progress=False) == 0
    logging.getLogger().handlers.clear()

    sidecar = json.loads(Path(str(paths.fmri(config)["z_sidecar"]).format(subject="02")).read_text())
    short, long = sidecar["parameters"]["cleaning"]["runs"]
    assert short["high_pass"] == "dropped: the run (30 volumes, 45 s) is too short for a cosine term below 0.01 Hz"
    assert long["high_pass"].startswith("applied: 2 cosine term(s)")
    log = log_file.read_text()
    lines = [line for line in log.splitlines() if "high-pass" in line]
    assert len(lines) == 1 and short["bold"] in lines[0] and "not applied to this run" in lines[0]

    label, text = cleaning_row([sidecar])
    assert label == "cleaning" and "HIGH-PASS NOT APPLIED in 1 of 2 runs" in text
    assert Path(short["bold"]).name in text and Path(long["bold"]).name not in text
    assert "interpolated (FD > 0.5 mm)" in text
