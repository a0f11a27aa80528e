"""Load and validate the pipeline configuration.

The JSON schema (``giblet/schemas/config.schema.yaml``, also reachable as
``workflow/schemas/config.schema.yaml``) is the single definition of every key, its type and its
default. The Snakefile and the ``giblet`` CLI both go through :func:`validate_config`, so a config
that Snakemake accepts is exactly a config the CLI accepts.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from giblet.errors import ConfigError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    # libyaml's loader when present: read at every Snakemake start, and 8x faster than pure Python.
    with open(SCHEMA_PATH) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _unknown_keys(data: Any, schema: dict, prefix: str = "") -> list[str]:
    """Dotted names of keys in ``data`` that the schema does not declare, each with a suggestion."""
    if not isinstance(data, dict) or schema.get("type") != "object":
        return []
    known = schema.get("properties", {})
    problems = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key in known:
            problems += _unknown_keys(value, known[key], name + ".")
        elif schema.get("additionalProperties", True) is False:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys here: {sorted(known)}"
            problems.append(f"unknown config key '{name}'{hint}")
    return problems


def validate_config(config: dict) -> dict:
    """Validate ``config`` in place against the schema and fill in defaults.

    Uses ``snakemake.utils.validate`` (the same validator the Snakefile would use). Unknown keys are
    reported first, by their dotted name and with the closest known key, because a typo is the
    commonest config error.

    Returns the same (now complete) dict. Raises :class:`ConfigError` naming the offending key.
    """
    problems = _unknown_keys(config, load_schema())
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    _validate_with_defaults(config)
    if config["inputs"]["bids"]:
        apply_bids(config)
    _check_consistency(config)
    return config


def _validate_with_defaults(config: dict) -> None:
    """``snakemake.utils.validate`` with defaults filled in, in place; a config validated before (the
    same keys and values, the same schema) takes its result from :mod:`giblet.cache`, since loading
    the schema and jsonschema takes ~0.15 s of every Snakemake start. Only a config that survives a
    JSON round trip unchanged is cached, so a cached result is exactly what validation returns."""
    import hashlib
    import json

    from giblet import cache

    try:
        text = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    key = text and hashlib.sha256(text.encode() + SCHEMA_PATH.read_bytes()).hexdigest()[:32]
    cached = cache.read("config", key) if key else None
    if isinstance(cached, dict):
        config.clear()
        config.update(cached)
        return
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except WorkflowError as err:
        cause = err.__context__  # the jsonschema ValidationError snakemake caught
        if not hasattr(cause, "absolute_path"):
            raise ConfigError(str(err)) from err
        name = ".".join(str(p) for p in cause.absolute_path) or "<top level>"
        raise ConfigError(f"invalid config key '{name}': {cause.message}") from err
    if key and json.loads(json.dumps(config)) == config:
        cache.write("config", key, config)


BIDS_FILLED = ("bold", "confounds", "brain_mask")


def find_bids(config: dict):
    """What ``inputs.bids`` finds (:class:`giblet.fmri.bids.Discovery`)."""
    from giblet.fmri.bids import discover

    bids = config["inputs"]["bids"]
    return discover(bids["root"], bids["task"], bids["space"], bids["session"], select=bids["select"])


def apply_bids(config: dict) -> None:
    """Fill ``inputs.bold``/``confounds``/``brain_mask``/``subjects``/``runs``/``space`` from the files
    ``inputs.bids`` finds. The runs follow each other on the movie's clock unless ``inputs.runs``
    says where they start (its ``run`` labels must be the ones found)."""
    inputs = config["inputs"]
    found = find_bids(config)
    filled = {**{key: getattr(found, key) for key in BIDS_FILLED}, "subjects": list(found.subjects)}
    # A config that already holds what was found (one printed by `giblet config`) is fine.
    given = [key for key, value in filled.items() if inputs[key] and inputs[key] != value]
    if given:
        raise ConfigError(f"invalid config key 'inputs.{given[0]}': inputs.bids finds the files itself; give "
                          f"either inputs.bids or the path patterns, not both")
    inputs.update(filled)
    inputs["space"] = inputs["space"] or found.space
    if inputs["runs"] and found.runs:
        labels = [run["run"] for run in inputs["runs"]]
        if labels != list(found.runs):
            raise ConfigError(f"invalid config key 'inputs.runs': its runs {labels} are not the runs found in "
                              f"{found.root}: {list(found.runs)} (list them all, in movie order)")
    elif found.runs:
        inputs["runs"] = [{"run": run, "session": None, "start_s": None, "dummy_volumes": 0} for run in found.runs]


# Weights that exist only so the demo runs offline; real data needs real weights.
DEMO_ONLY_WEIGHTS = {"audio": ("weights", "demo-random"), "text": ("pretrained", "none")}


def _check_consistency(config: dict) -> None:
    """Relations between keys that JSON schema cannot express."""
    if config["dataset"] == "files":
        for key in ("movie", "annotations"):
            if not config["inputs"][key] and (key == "movie" or config["stimulus"]["text"]["enabled"]):
                raise ConfigError(f"invalid config key 'inputs.{key}': required when dataset is 'files'")
        for modality, (key, demo_value) in DEMO_ONLY_WEIGHTS.items():
            section = config["stimulus"][modality]
            if section["enabled"] and section[key] == demo_value:
                raise ConfigError(
                    f"invalid config key 'stimulus.{modality}.{key}': '{demo_value}' (random weights) is "
                    "for the demo only; with dataset 'files' give pretrained weights or a weights file")
        frames = config["stimulus"]["frames"]  # its CLIP weights are read only with features clip or both
        if frames["enabled"] and frames["features"] != "pixels" and frames["clip"]["pretrained"] == "none":
            raise ConfigError(
                "invalid config key 'stimulus.frames.clip.pretrained': 'none' (random weights) is for the demo "
                "only; with dataset 'files' give pretrained weights or a weights file")
    if config["fmri"]["motion"]["fd_threshold_mm"] is not None and not config["inputs"]["confounds"]:
        raise ConfigError("invalid config key 'fmri.motion.fd_threshold_mm': needs inputs.confounds (the "
                          "framewise_displacement column)")
    if not any(config["stimulus"][m]["enabled"] for m in ("frames", "audio", "text")):
        raise ConfigError("invalid config key 'stimulus': every modality is disabled")
    scenes = config["demo"]["scenes"]
    if scenes["min_segment_s"] > scenes["max_segment_s"]:
        raise ConfigError("invalid config key 'demo.scenes.min_segment_s': larger than max_segment_s")
    difficulty = config["demo"]["difficulty"]
    if difficulty["ceiling_min"] > difficulty["ceiling_max"]:
        raise ConfigError("invalid config key 'demo.difficulty.ceiling_min': larger than ceiling_max")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value in YAML syntax) into (["a", "b", "c"], value)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.path=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Return a copy of ``config`` with ``key.path=value`` overrides applied (before validation)."""
    config = copy.deepcopy(config)
    for item in overrides:
        path, value = parse_override(item)
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return config


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply overrides, validate.

    A config file may hold only the keys that differ from the defaults (``config/benchmark.yaml``
    does), because validation fills in everything else.
    """
    config: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with open(path) as f:
            config = yaml.safe_load(f) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"config file {path} does not hold a mapping of keys")
    try:
        return validate_config(apply_overrides(config, list(overrides)))
    except ConfigError as err:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"{err}{where}") from None
