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


def _evaluate(config: dict, *keys: str) -> dict:
    return {key: config["evaluate"][key] for key in keys}


def params(rule: str, config: dict) -> dict:
    """The config values ``rule``'s stage reads, by keyword.

    Only the keys a stage reads, so that changing a key reruns only the stages that use it.
    """
    stimulus, fmri, tr = config["stimulus"], config["fmri"], config["tr"]
    table = {
        "demo_dataset": lambda: {"demo": config["demo"], "tr": tr},
        "extract_frames": lambda: {"settings": stimulus["frames"], "tr": tr},
        "encode_audio": lambda: {"settings": stimulus["audio"], "tr": tr},
        "embed_text": lambda: {"settings": stimulus["text"], "tr": tr},
        # Only what the mask depends on: a normalization change must not rerun it.
        "fmri_mask": lambda: {"bold_by_subject": {s: str(p) for s, p in paths.bold(config).items()},
                              "fmri": {key: fmri[key] for key in ("mask", "majority_fraction", "short_subjects")},
                              "tr": tr},
        "normalize_fmri": lambda: {"normalize_on": fmri["normalize_on"]},
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


def _strs(value):
    return [str(p) for p in value] if isinstance(value, list) else str(value)


def outputs(rule: str, config: dict) -> dict:
    """``rule``'s named outputs (str paths, or lists of them); per-subject ones keep ``{subject}``."""
    stim, fmri, data = paths.stimulus(config), paths.fmri(config), paths.dataset(config)
    train, ev = paths.train(config), paths.evaluate(config)
    table = {
        "demo_dataset": lambda: {k: _strs(v) for k, v in paths.demo(config).items()},
        "extract_frames": lambda: {"frames": stim["frames"], "sidecar": stim["frames_sidecar"]},
        "encode_audio": lambda: {"codes": stim["audio"], "sidecar": stim["audio_sidecar"]},
        "embed_text": lambda: {"text": stim["text"], "mask": stim["text_mask"], "library": stim["text_annotations"],
                               "sidecar": stim["text_sidecar"]},
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
        "plot_reconstructions": lambda: {"figures": ev["reconstructions"]},
        "lesion": lambda: {"json": ev["lesion_json"], "png": ev["lesion_png"]},
        "training_summary": lambda: {"png": ev["training_png"]},
        "report_results": lambda: {"summary": ev["summary_csv"], "about": ev["about_csv"],
                                   "metrics_csv": ev["metrics_csv"], "ridge_csv": ev["ridge_csv"],
                                   "html": ev["results_html"], "viewer": ev["r_map_viewer"],
                                   "slices": ev["r_map_slices"], "figures": ev["first_page_figures"],
                                   "description": ev["dataset_description"]},
    }
    return {key: _strs(value) for key, value in table[rule]().items()}


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
        "demo_dataset": lambda: {},
        "extract_frames": lambda: {"movie": movie},
        "encode_audio": lambda: {"movie": movie},
        "embed_text": lambda: {"annotations": paths.annotations(config) if config["stimulus"]["text"]["enabled"]
                               else [], "movie": movie},
        # A mask given as a file is an input, so that editing it reruns the fMRI chain.
        "fmri_mask": lambda: {"bold": list(paths.bold(config).values()),
                              "mask_file": config["fmri"]["mask"] if user_mask else []},
        # The split is a file the stage reads, not a param read from it while the DAG is built: so the
        # training block is always the one this very run wrote (a param from a checkpoint that reruns
        # in the same invocation is a placeholder).
        "normalize_fmri": lambda: {"bold": paths.bold(config)[subject], "mask": fmri["mask"], "info": fmri["info"],
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
        "report_results": lambda: {"metrics": ev["metrics"], "ridge": ev["ridge"], "r_map": ev["r_map"],
                                   "glass_brain": ev["r_map_png"], "manifest": data["manifest"], "info": fmri["info"]},
    }
    return {key: _strs(value) for key, value in table[rule]().items()}
