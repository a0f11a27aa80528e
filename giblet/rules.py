"""What each pipeline stage reads, writes and is parametrised by, derived from the config in one place.

The Snakefile's rules and the ``giblet`` command both take a stage's files and params from here, and
both call the same function in :mod:`giblet.stages` with them, so they cannot drift apart. A rule's
``params`` are exactly what its stage receives (plus the ``code`` hash): every config key a stage reads
is therefore a param, and changing it reruns that stage.

Kept free of heavy imports: the Snakefile imports it at every start.
"""

from __future__ import annotations

from giblet import paths
from giblet.train.params import rule_params as train_rule_params

FMRI_MASK_METHODS = ("intersection", "majority", "mni")  # any other fmri.mask value is a NIfTI path
# The stimulus.frames keys extract_frames reads (features and clip are embed_frames'): a CLIP setting
# must not rerun it.
PIXEL_KEYS = ("enabled", "width", "height", "frame_skip")


def _evaluate(config: dict, *keys: str) -> dict:
    return {key: config["evaluate"][key] for key in keys}


def params(rule: str, config: dict) -> dict:
    """The config values ``rule``'s stage reads, by keyword.

    Only the keys a stage reads, so that changing a key reruns only the stages that use it.
    """
    stimulus, fmri, tr = config["stimulus"], config["fmri"], config["tr"]
    table = {
        "check_inputs": lambda: {"config": _checked(config)},
        "demo_dataset": lambda: {"demo": config["demo"], "tr": tr},
        "extract_frames": lambda: {"settings": {key: stimulus["frames"][key] for key in PIXEL_KEYS}, "tr": tr},
        # Frames are sampled as extract_frames samples them (frame_skip), then embedded by CLIP.
        "embed_frames": lambda: {"settings": {"frame_skip": stimulus["frames"]["frame_skip"],
                                              "clip": stimulus["frames"]["clip"]}, "tr": tr},
        "encode_audio": lambda: {"settings": stimulus["audio"], "tr": tr},
        "embed_text": lambda: {"settings": stimulus["text"], "tr": tr},
        # Only what the mask depends on: a normalization change must not rerun it.
        # The learning keys of its section; gpus says how to run (a checkpoint refuses another world size).
        "pretrain_frames": lambda: {"settings": config["pretrain"]["frames"], "tr": tr},
        "pretrain_audio": lambda: {"settings": config["pretrain"]["audio"], "tr": tr},
        "fmri_mask": lambda: {"runs": _runs_table(config),
                              "fmri": {**{key: fmri[key] for key in ("mask", "majority_fraction", "short_subjects",
                                                                      "allow_data_mask")},
                                       "confound_columns": confound_columns(config),
                                       "fmriprep_inputs": fmriprep_inputs(config)},
                              "tr": tr},
        "normalize_fmri": lambda: {"normalize_on": fmri["normalize_on"], "cleaning": _cleaning(config)},
        "average_fmri": lambda: {},
        # Only which modalities are on: a frame size or a model change must not move the split.
        "plan_split": lambda: {"settings": config["split"], "shift_trs": fmri["shift_trs"],
                               "modalities": {m: {"enabled": s["enabled"]} for m, s in stimulus.items()},
                               "tr": tr},
        "assemble_dataset": lambda: {"stimulus_arrays": {role: str(p) for role, p in
                                                         paths.stimulus_arrays(config).items()}, "tr": tr},
        # Only keys that change the weights: a checkpoint interval or a TensorBoard option does not
        # retrain (the stage reads those from the whole train section it is also given).
        "train": lambda: {"learning": train_rule_params(config["train"])},
        "verify_checkpoint": lambda: {},
        "examine_weights": lambda: {"checkpoint": str(paths.train(config)["latest_checkpoint"])},
        "evaluate": lambda: _evaluate(config, "reliable_threshold", "null_shifts", "device"),
        "baseline_ridge": lambda: _evaluate(config, "reliable_threshold", "null_shifts"),
        "plot_reconstructions": lambda: _evaluate(config, "examples", "reliable_threshold", "device"),
        "lesion": lambda: {"regions": dict(config["evaluate"]["lesion_regions"]),
                           "device": config["evaluate"]["device"]},
        "training_summary": lambda: {},
        "report_results": lambda: {"space": paths.space(config)},
    }
    return table[rule]()


def _checked(config: dict) -> dict:
    """The part of the config ``check_inputs`` reads (:mod:`giblet.preflight`): the inputs and the keys
    that judge them, so that no other key (a frame size, a normalization) reruns it."""
    stimulus, fmri = config["stimulus"], config["fmri"]
    return {"results_dir": config["results_dir"], "tr": config["tr"], "dataset": config["dataset"],
            "inputs": config["inputs"], "demo": {"n_subjects": config["demo"]["n_subjects"]},
            "stimulus": {**{m: {"enabled": s["enabled"]} for m, s in stimulus.items()},
                         "text": {key: stimulus["text"][key] for key in ("enabled", "columns")}},
            "fmri": {**{key: fmri[key] for key in ("mask", "allow_data_mask", "short_subjects", "shift_trs",
                                                   "confounds")},
                     "motion": {"fd_threshold_mm": fmri["motion"]["fd_threshold_mm"]}},
            "split": config["split"]}


def _runs_table(config: dict) -> dict:
    """Every subject's runs (:func:`giblet.paths.runs`), JSON-ready: str paths."""
    return {subject: [{key: str(value) if key in paths.RUN_FILES and value is not None else value
                       for key, value in run.items()} for run in entries]
            for subject, entries in paths.runs(config).items()}


def fmriprep_inputs(config: dict) -> bool:
    """The BOLD files come from fMRIPrep (``inputs.bids``, or with confounds tables): not skull-stripped,
    so the mask must come from brain masks unless the config accepts one from the data alone."""
    inputs = config["inputs"]
    return config["dataset"] == "files" and bool(inputs["bids"] or inputs["confounds"])


def confound_columns(config: dict) -> list[str]:
    """The confounds TSV columns the fMRI stages read: none without confounds files."""
    fmri = config["fmri"]
    if not config["inputs"]["confounds"] or config["dataset"] == "demo":
        return []
    return list(fmri["confounds"]) + (["framewise_displacement"] if fmri["motion"]["fd_threshold_mm"] else [])


def _cleaning(config: dict) -> dict:
    """What normalize_fmri removes from each run (giblet.fmri.clean.Cleaning's fields)."""
    fmri = config["fmri"]
    with_table = bool(confound_columns(config))
    return {"tr": config["tr"], "confounds": list(fmri["confounds"]) if with_table else [],
            "high_pass_hz": fmri["high_pass_hz"], "detrend": fmri["detrend"],
            "fd_threshold_mm": fmri["motion"]["fd_threshold_mm"] if with_table else None}


def _strs(value):
    return [str(p) for p in value] if isinstance(value, list) else str(value)


def outputs(rule: str, config: dict) -> dict:
    """``rule``'s named outputs (str paths, or lists of them); per-subject ones keep ``{subject}``."""
    stim, fmri, data = paths.stimulus(config), paths.fmri(config), paths.dataset(config)
    train, ev = paths.train(config), paths.evaluate(config)
    table = {
        "check_inputs": lambda: {"report": paths.check(config)},
        "demo_dataset": lambda: {k: _strs(v) for k, v in paths.demo(config).items()},
        "extract_frames": lambda: {"frames": stim["frames"], "sidecar": stim["frames_sidecar"]},
        "embed_frames": lambda: {"frame_features": stim["frame_features"], "sidecar": stim["frame_features_sidecar"]},
        "encode_audio": lambda: {"codes": stim["audio"], "sidecar": stim["audio_sidecar"]},
        "embed_text": lambda: {"text": stim["text"], "mask": stim["text_mask"], "library": stim["text_annotations"],
                               "sidecar": stim["text_sidecar"]},
        "pretrain_frames": lambda: _pretrain_outputs(config, "frames"),
        "pretrain_audio": lambda: _pretrain_outputs(config, "audio"),
        "fmri_mask": lambda: {"mask": fmri["mask"], "info": fmri["info"]},
        "normalize_fmri": lambda: {"z": fmri["z"], "sidecar": fmri["z_sidecar"], "stats": fmri["stats"]},
        "average_fmri": lambda: {"group": fmri["group"], "sidecar": fmri["group_sidecar"], "ceiling": fmri["ceiling"]},
        "plan_split": lambda: {"split": data["split"]},
        "assemble_dataset": lambda: {"manifest": data["manifest"]},
        "train": lambda: {"model": train["model"], "history": train["history"], "tensorboard": train["tensorboard"]},
        "verify_checkpoint": lambda: {"verify": ev["verify"]},
        "examine_weights": lambda: {"json": ev["weights_json"], "png": ev["weights_png"]},
        "evaluate": lambda: {"metrics": ev["metrics"], "r_map": ev["r_map"], "png": ev["r_map_png"]},
        "baseline_ridge": lambda: {"ridge": ev["ridge"]},
        "plot_reconstructions": lambda: {"figures": ev["reconstructions"], "decoded": ev["decoded_test"]},
        "lesion": lambda: {"json": ev["lesion_json"], "png": ev["lesion_png"]},
        "training_summary": lambda: {"png": ev["training_png"]},
        "report_results": lambda: {"summary": ev["summary_csv"], "about": ev["about_csv"],
                                   "metrics_csv": ev["metrics_csv"], "ridge_csv": ev["ridge_csv"],
                                   "html": ev["results_html"], "viewer": ev["r_map_viewer"],
                                   "slices": ev["r_map_slices"], "figures": ev["first_page_figures"],
                                   "description": ev["dataset_description"]},
    }
    return {key: _strs(value) for key, value in table[rule]().items()}


def _pretrain_outputs(config: dict, kind: str) -> dict:
    files = paths.pretrain(config)[kind]
    return {key: files[key] for key in ("autoencoder", "latents", "sidecar", "history", "tensorboard")}


def inputs(rule: str, config: dict, subject: str | None = None) -> dict:
    """``rule``'s named inputs (str paths, lists of them, or [] for an input that is off).

    ``subject`` is the subject of a per-subject rule.
    """
    fmri, data = paths.fmri(config), paths.dataset(config)
    train, ev = paths.train(config), paths.evaluate(config)
    movie = paths.movie(config)
    model_and_data = {"model": train["model"], "manifest": data["manifest"]}
    verified = {**model_and_data, "verified": ev["verify"]}
    user_mask = config["fmri"]["mask"] not in FMRI_MASK_METHODS
    table = {
        # Every input file: a changed one reruns the check (seconds), which nothing downstream reads.
        "check_inputs": lambda: {**{key: paths.run_files(config, key) for key in paths.RUN_FILES},
                                 "mask_file": config["fmri"]["mask"] if user_mask else [], "movie": movie,
                                 "annotations": paths.annotations(config) if config["stimulus"]["text"]["enabled"]
                                 else []},
        "demo_dataset": lambda: {},
        "extract_frames": lambda: {"movie": movie},
        "embed_frames": lambda: {"movie": movie},
        "encode_audio": lambda: {"movie": movie},
        "embed_text": lambda: {"annotations": paths.annotations(config) if config["stimulus"]["text"]["enabled"]
                               else [], "movie": movie},
        "pretrain_frames": lambda: {"movie": movie, "frames": paths.stimulus(config)["frames"]},
        "pretrain_audio": lambda: {"codes": paths.stimulus(config)["audio"]},
        # A mask given as a file is an input, so that editing it reruns the fMRI chain.
        # With inputs.runs, each run is checked against its segment of the movie.
        "fmri_mask": lambda: {"bold": paths.run_files(config, "bold"),
                              "confounds": paths.run_files(config, "confounds"),
                              "brain_mask": paths.run_files(config, "brain_mask"),
                              "mask_file": config["fmri"]["mask"] if user_mask else [],
                              "movie": movie if config["dataset"] == "files" and config["inputs"]["runs"] else []},
        # The split is a file the stage reads, not a param read from it while the DAG is built: so the
        # training block is always the one this very run wrote (a param from a checkpoint that reruns
        # in the same invocation is a placeholder).
        "normalize_fmri": lambda: {"bold": paths.run_files(config, "bold", subject),
                                   "confounds": paths.run_files(config, "confounds", subject)
                                   if confound_columns(config) else [],
                                   "mask": fmri["mask"], "info": fmri["info"],
                                   "split": data["split"] if config["fmri"]["normalize_on"] != "all" else []},
        # Every configured subject's z (a dropped one's is empty): the stage keeps those fmri.json lists.
        "average_fmri": lambda: {"z": [str(fmri["z"]).format(subject=s) for s in paths.subjects(config)],
                                 "info": fmri["info"], "split": data["split"]},
        "plan_split": lambda: {"info": fmri["info"], "movie": movie},
        "assemble_dataset": lambda: {"stimulus": paths.enabled_stimulus_outputs(config), "group": fmri["group"],
                                     "ceiling": fmri["ceiling"], "mask": fmri["mask"], "info": fmri["info"],
                                     "split": data["split"],
                                     "truth": paths.demo(config)["truth"] if config["dataset"] == "demo" else []},
        "train": lambda: {"manifest": data["manifest"]},
        "verify_checkpoint": lambda: model_and_data,
        "examine_weights": lambda: {"model": train["model"]},
        "evaluate": lambda: verified,
        "baseline_ridge": lambda: {"manifest": data["manifest"]},
        "plot_reconstructions": lambda: verified,
        "lesion": lambda: {**verified, "region_masks": list(config["evaluate"]["lesion_regions"].values())},
        "training_summary": lambda: {"history": train["history"]},
        # The z arrays' sidecars say, run by run, what cleaning really removed ("what was run").
        "report_results": lambda: {"metrics": ev["metrics"], "ridge": ev["ridge"], "r_map": ev["r_map"],
                                   "glass_brain": ev["r_map_png"], "manifest": data["manifest"], "info": fmri["info"],
                                   "z_sidecars": [str(fmri["z_sidecar"]).format(subject=s)
                                                  for s in paths.subjects(config)]},
    }
    return {key: _strs(value) for key, value in table[rule]().items()}
