"""Where every stage reads and writes, derived from the config in one place.

The Snakefile and the ``giblet`` command both use these, so a file a rule declares is exactly the
file the command writes.
"""

from __future__ import annotations

from pathlib import Path

from giblet.errors import ConfigError
from giblet.demo.layout import output_paths as demo_output_paths


def demo(config: dict) -> dict:
    return demo_output_paths(Path(config["results_dir"]) / "demo", config["demo"]["n_subjects"])


def _input(config: dict, key: str) -> Path:
    if config["dataset"] == "demo":
        return demo(config)[key]
    value = config["inputs"][key]
    if not value:
        raise ConfigError(f"invalid config key 'inputs.{key}': required when dataset is 'files'")
    return Path(value)


def movie(config: dict) -> Path:
    return _input(config, "movie")


def annotations(config: dict) -> Path:
    return _input(config, "annotations")


def stimulus(config: dict) -> dict:
    """Outputs of the four stimulus stages (whether or not a modality is enabled)."""
    root = Path(config["results_dir"]) / "stimulus"
    return {
        "frames": root / "frames.npy", "frames_sidecar": root / "frames.json",
        "frame_features": root / "frame_features.npy", "frame_features_sidecar": root / "frame_features.json",
        "audio": root / "audio_codes.npy", "audio_sidecar": root / "audio_codes.json",
        "text": root / "text.npy", "text_mask": root / "text_mask.npy",
        "text_annotations": root / "text_annotations.npz", "text_sidecar": root / "text.json",
    }


# Pretrained modality -> its manifest roles: the latents of every TR, the autoencoder file.
PRETRAINED_ROLES = {"frames": ("frame_latents", "frame_autoencoder"), "audio": ("audio_latents", "audio_autoencoder")}


def pretrain(config: dict) -> dict:
    """Outputs of the pretraining stages, by modality (``frames``, ``audio``): the autoencoder, the
    latents of every TR (and their sidecar), the loss history and TensorBoard; ``checkpoints`` is
    beside them, not an output (a failed job's outputs are deleted, resume state must survive)."""
    root = Path(config["results_dir"]) / "pretrain"
    return {kind: {"autoencoder": root / kind / "autoencoder.pt", "latents": root / kind / "latents.npy",
                   "sidecar": root / kind / "latents.json", "history": root / kind / "history.jsonl",
                   "tensorboard": root / kind / "tensorboard", "checkpoints": root / kind / "checkpoints"}
            for kind in ("frames", "audio")}


def pretrains(config: dict, kind: str) -> bool:
    """Whether the config pretrains ``kind``'s autoencoder: pretraining is on and the modality makes
    what it learns from (pixel frames, codes)."""
    role = {"frames": "frames", "audio": "audio_codes"}[kind]
    return bool(config["pretrain"]["enabled"]) and uses_role(config, role)


# Array roles in the manifest -> (key in stimulus(), the modality that makes it).
STIMULUS_ARRAYS = {"frames": ("frames", "frames"), "frame_features": ("frame_features", "frames"),
                   "audio_codes": ("audio", "audio"), "text": ("text", "text"), "text_mask": ("text_mask", "text")}
# Array role -> the other files of its stage in stimulus() (sidecars, the text library).
SIDECAR_FILES = {"frames": ["frames_sidecar"], "frame_features": ["frame_features_sidecar"],
                 "audio_codes": ["audio_sidecar"], "text": ["text_annotations", "text_sidecar"]}
# The frame arrays each stimulus.frames.features makes: pixels (extract_frames), CLIP embeddings (embed_frames).
FRAME_ROLES = {"pixels": ("frames",), "clip": ("frame_features",), "both": ("frames", "frame_features")}


def uses_role(config: dict, role: str) -> bool:
    """Whether the config produces the manifest array ``role``: its modality is enabled and, for the
    frames, ``stimulus.frames.features`` asks for it."""
    modality = STIMULUS_ARRAYS[role][1]
    if not config["stimulus"][modality]["enabled"]:
        return False
    return modality != "frames" or role in FRAME_ROLES[config["stimulus"]["frames"]["features"]]


def stimulus_arrays(config: dict) -> dict[str, Path]:
    """The enabled modalities' arrays, by manifest role (what assemble_dataset reads): the stimulus
    stages' and, with pretraining, ``frame_latents``/``audio_latents`` and their ``*_autoencoder`` files."""
    out = stimulus(config)
    arrays = {role: out[key] for role, (key, _) in STIMULUS_ARRAYS.items() if uses_role(config, role)}
    for kind, files in pretrain(config).items():
        if pretrains(config, kind):
            latents, autoencoder = PRETRAINED_ROLES[kind]
            arrays[latents], arrays[autoencoder] = files["latents"], files["autoencoder"]
    return arrays


def enabled_stimulus_outputs(config: dict) -> list[Path]:
    """Every stimulus file the enabled modalities produce (arrays, sidecars, the text library)."""
    out = stimulus(config)
    extra = [out[k] for role, keys in SIDECAR_FILES.items() if uses_role(config, role) for k in keys]
    extra += [pretrain(config)[kind]["sidecar"] for kind in ("frames", "audio") if pretrains(config, kind)]
    return list(stimulus_arrays(config).values()) + extra


def subjects(config: dict) -> list[str]:
    """Subject ids as configured (before any are dropped for being short)."""
    from giblet.demo.layout import subject_ids

    if config["dataset"] == "demo":
        return subject_ids(config["demo"]["n_subjects"])
    if len(config["inputs"]["subjects"]) < 2:
        raise ConfigError("invalid config key 'inputs.subjects': list at least two subjects")
    return list(config["inputs"]["subjects"])


RUN_FILES = ("bold", "confounds", "brain_mask")  # the per-run inputs, as inputs.<key> patterns


def runs(config: dict) -> dict[str, list[dict]]:
    """Subject id -> its runs in movie order, in subject order.

    Each run is ``{"run", "session", "start_s", "dummy_volumes", "bold", "confounds", "brain_mask"}``:
    the ``inputs.runs`` entry, and the files from the ``inputs`` patterns with ``{subject}``, ``{run}``
    and ``{session}`` filled in (Paths; ``confounds``/``brain_mask`` None when not given). Without
    ``inputs.runs`` (the demo, Sherlock), one run per subject that starts the movie.
    """
    if config["dataset"] == "demo":
        return {s: [{"run": None, "session": None, "start_s": 0.0, "dummy_volumes": 0, "bold": path,
                     "confounds": None, "brain_mask": None}]
                for s, path in zip(subjects(config), demo(config)["bold"])}
    inputs = config["inputs"]
    if not inputs["bold"] or "{subject}" not in inputs["bold"]:
        raise ConfigError("invalid config key 'inputs.bold': a path pattern containing {subject} is required "
                          "when dataset is 'files'")
    table = inputs["runs"] or [{"run": None, "session": None, "start_s": 0.0, "dummy_volumes": 0}]
    for key in RUN_FILES:
        pattern = inputs[key] or ""
        for entity in ("run", "session"):
            if f"{{{entity}}}" in pattern and any(entry[entity] is None for entry in table):
                raise ConfigError(f"invalid config key 'inputs.{key}': it contains {{{entity}}}, so every entry "
                                  f"of inputs.runs needs a '{entity}'")
    out = {}
    for subject in subjects(config):
        out[subject] = [{**entry, **{key: Path(inputs[key].format(subject=subject, run=entry["run"],
                                                                  session=entry["session"]))
                                     if inputs[key] else None for key in RUN_FILES}} for entry in table]
        files = [str(run["bold"]) for run in out[subject]]
        if len(set(files)) < len(files):
            raise ConfigError(f"invalid config key 'inputs.bold': runs of subject {subject} share a file "
                              f"({files}); put {{run}} (or {{session}}) in the pattern")
    return out


def run_files(config: dict, key: str, subject: str | None = None) -> list[Path]:
    """Every run's ``key`` file ("bold", "confounds" or "brain_mask") given, of one subject or of all."""
    table = runs(config)
    chosen = [subject] if subject is not None else list(table)
    return [run[key] for s in chosen for run in table[s] if run[key] is not None]


def check(config: dict) -> Path:
    """The pre-flight check's report (``giblet check``, rule ``check_inputs``), written when it passes."""
    return Path(config["results_dir"]) / "check" / "inputs.json"


def fmri(config: dict) -> dict:
    """Outputs of the fMRI stages; ``z``/``z_sidecar``/``stats`` are patterns with ``{subject}``."""
    root = Path(config["results_dir"]) / "fmri"
    return {"mask": root / "mask.nii.gz", "info": root / "fmri.json",
            "z": root / "sub-{subject}_z.npy", "z_sidecar": root / "sub-{subject}_z.json",
            "stats": root / "sub-{subject}_stats.npz",
            "group": root / "group.npy", "group_sidecar": root / "group.json", "ceiling": root / "ceiling.npz"}


def dataset(config: dict) -> dict:
    root = Path(config["results_dir"]) / "dataset"
    return {"split": root / "split.json", "manifest": root / "manifest.json"}


def train(config: dict) -> dict:
    """The train rule's outputs (``checkpoints/`` sits next to them but is deliberately not an output)."""
    root = Path(config["results_dir"]) / "train"
    return {"model": root / "model.pt", "history": root / "history.jsonl", "tensorboard": root / "tensorboard",
            "checkpoints": root / "checkpoints", "latest_checkpoint": root / "checkpoints" / "latest.pt"}


# nilearn's MNI152 template (ICBM 2009a nonlinear asymmetric), whose brain mask is the demo's grid.
DEMO_SPACE = "MNI152NLin2009aAsym"


def space(config: dict) -> str | None:
    """The BIDS template label of the data's space: the demo's, or ``inputs.space`` (None: not given)."""
    return DEMO_SPACE if config["dataset"] == "demo" else config["inputs"]["space"]


def bids_name(config: dict, desc: str, suffix: str, extension: str) -> str:
    """A BIDS-derivatives file name, ``[space-<label>_]desc-<desc>_<suffix><extension>``."""
    label = space(config)
    return "_".join(([f"space-{label}"] if label else []) + [f"desc-{desc}", suffix]) + extension


def evaluate(config: dict) -> dict:
    """The evaluation rules' outputs. ``metrics/``, ``reconstructions/`` and ``report/`` are each
    written whole by one rule (atomically), so no other rule writes into them. The folder is a BIDS
    derivatives dataset (``dataset_description.json``; the r map is named BIDS-style)."""
    root = Path(config["results_dir"]) / "evaluate"
    report = root / "report"
    enabled = {name for name, section in config["stimulus"].items() if section["enabled"]}
    if not uses_role(config, "frames"):  # CLIP frame features alone decode no pixels: no video.png
        enabled.discard("frames")
    figures = {"frames": "video.png", "audio": "audio.png", "text": "text.png"}
    reconstructions = [root / "reconstructions" / figures[m] for m in ("frames", "audio", "text") if m in enabled]
    reconstructions.append(root / "reconstructions" / "fmri.png")
    return {"verify": root / "verify.json", "weights_json": root / "weights.json", "weights_png": root / "weights.png",
            "metrics": root / "metrics" / "metrics.json",
            "r_map": root / "metrics" / bids_name(config, "modelr", "stat", ".nii.gz"),
            "r_map_png": root / "metrics" / "r_map.png", "ridge": root / "ridge.json",
            "reconstructions": reconstructions, "decoded_test": root / "reconstructions" / "decoded_test.npz",
            "lesion_json": root / "lesion.json", "lesion_png": root / "lesion.png",
            "training_png": root / "training.png",
            "summary_csv": report / "summary.csv", "about_csv": report / "about.csv",
            "metrics_csv": report / "metrics.csv", "ridge_csv": report / "ridge.csv",
            "results_html": report / "results.html", "r_map_viewer": report / "r_map_viewer.html",
            "r_map_slices": report / "r_map_slices.png", "first_page_figures": report / "first_page_figures.html",
            "dataset_description": root / "dataset_description.json"}
