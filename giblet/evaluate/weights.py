"""Weight health of a trained ``model.pt`` (and optionally of its optimizer state): ``weights.json`` + ``weights.png``.

Every tensor of the state dict gets statistics, *flags* (problems, each with a severity and a reason)
and *notes* (facts that look like problems but follow from the architecture, starting with
``structural:``): see :mod:`giblet.evaluate.tensor_health` for the rules and thresholds. The optimizer
state of a checkpoint is checked by :mod:`giblet.evaluate.optimizer_state`. This module reads the
files, assembles the report and draws it (:mod:`giblet.evaluate.weights_figure`). The verdict is
``failed`` when any flag is a failure, ``warnings`` when any is a warning, else ``ok``.

Both outputs are written to temporary names and renamed into place only when both are complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from giblet.errors import InputError
from giblet.evaluate.optimizer_state import check_optimizer
from giblet.evaluate.tensor_health import THRESHOLDS, check_state_dict
from giblet.files import jsonable, sha256_file
from giblet.model.model_file import read_model_file
from giblet.weights_only import load_weights_only

HISTOGRAM_PANELS = 12  # histograms drawn in weights.png: flagged tensors first, then the largest


# -- reading files ------------------------------------------------------------------------------------

def read_checkpoint_file(path: str | Path) -> dict:
    """A training checkpoint, loaded weights-only (:func:`giblet.weights_only.load_weights_only`);
    InputError naming the file when it is missing, unreadable or holds no ``model`` state."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        state = load_weights_only(path)
    except Exception as error:  # noqa: BLE001
        raise InputError(path, f"cannot be read as a checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(path, "is not a giblet training checkpoint (no 'model' state)")
    return state


def trained_steps(saved: dict) -> int | None:
    """Optimizer steps behind the saved weights (the source checkpoint's step for best weights)."""
    weights = saved.get("weights")
    if isinstance(weights, dict) and "step" in weights:
        return int(weights["step"])
    return int(saved["steps"]) if saved.get("steps") is not None else None


def fresh_reference(config: dict) -> tuple[dict, set, set]:
    """(fresh state dict, parameter names, buffer names) of a model rebuilt from ``config``.

    Built under a forked RNG, so the caller's random state is untouched.
    """
    from giblet.model import BrainAutoencoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BrainAutoencoder.from_config(config)
    params = {n for n, _ in model.named_parameters()}
    return model.state_dict(), params, set(model.state_dict()) - params


# -- the figure --------------------------------------------------------------------------------------------

def _figure(report: dict, state_dict: dict, path: Path) -> None:
    from giblet.evaluate.weights_figure import plot_weights

    plot_weights(report, state_dict, path, THRESHOLDS["exploding_abs_max"], HISTOGRAM_PANELS)


# -- entry point ---------------------------------------------------------------------------------------------

def examine_weights(model_path: str | Path, out_json: str | Path, out_png: str | Path,
                    checkpoint_path: str | Path | None = None) -> dict:
    """Examine every tensor of ``model_path`` (and the optimizer state of ``checkpoint_path``).

    Writes ``out_json`` (the returned report) and ``out_png`` (a per-tensor std/abs-max panel plus
    histograms of the flagged and largest tensors). A sick model is reported (verdict ``failed``), not
    raised; InputError (naming the file) only when ``model_path`` or ``checkpoint_path`` cannot be read,
    in which case nothing is written.
    """
    model_path, out_json, out_png = Path(model_path), Path(out_json), Path(out_png)
    saved = read_model_file(model_path)
    state_dict = {k: v.detach().cpu() for k, v in saved["state_dict"].items()}
    steps = trained_steps(saved)
    notes_all: list[str] = []
    try:
        init, param_names, buffer_names = fresh_reference(saved["model_config"])
        param_order = [n for n in init if n in param_names]
    except Exception as error:  # noqa: BLE001 - report without the reference model
        init, param_names, buffer_names, param_order = {}, set(), set(), []
        notes_all.append(f"model_config does not build a BrainAutoencoder ({type(error).__name__}: {error}): "
                         "no init reference, constant tensors are judged without it")
    tensors, flags = check_state_dict(state_dict, init, buffer_names, steps)
    optimizer = None
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        ck = read_checkpoint_file(checkpoint_path)
        shapes = {n: tuple(init[n].shape) for n in param_order}
        optimizer = {"checkpoint": str(checkpoint_path), "step": ck.get("step"), "epoch": ck.get("epoch"),
                     **check_optimizer(ck, param_order, shapes)}
        flags += optimizer["flags"]
        notes_all += optimizer.get("notes", [])
    severities = [f["severity"] for f in flags]
    verdict = "failed" if "failed" in severities else "warnings" if "warning" in severities else "ok"
    structural = sum(1 for t in tensors.values() for n in t["notes"] if n.startswith("structural"))
    counts = {"tensors": len(tensors), "parameters": sum(t["kind"] == "parameter" for t in tensors.values()),
              "values": int(sum(t.numel() for t in state_dict.values())),
              "flagged_tensors": len({f["tensor"] for f in flags}), "failed": severities.count("failed"),
              "warnings": severities.count("warning"), "structural": structural,
              "optimizer_states": optimizer["n_states"] if optimizer and "n_states" in optimizer else None}
    report = jsonable({
        "model": str(model_path), "model_sha256": sha256_file(model_path), "verdict": verdict, "counts": counts,
        "flags": flags, "notes": notes_all, "thresholds": THRESHOLDS, "trained_steps": steps,
        "weights": saved.get("weights"), "model_config": saved["model_config"],
        "tensors": tensors, "optimizer": optimizer,
    })
    for path in (out_json, out_png):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp_json, tmp_png = out_json.with_name(f".{out_json.name}.tmp"), out_png.with_name(f".{out_png.name}.tmp")
    try:
        _figure(report, state_dict, tmp_png)
        with open(tmp_json, "w") as f:
            json.dump(report, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_png, out_png)
        os.replace(tmp_json, out_json)
    finally:
        tmp_png.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return report


__all__ = ["examine_weights", "read_checkpoint_file", "fresh_reference", "trained_steps"]
