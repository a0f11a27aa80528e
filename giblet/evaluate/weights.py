"""Weight health of a trained ``model.pt`` (and optionally of its optimizer state): ``weights.json`` + ``weights.png``.

Every tensor of the state dict gets shape, dtype, mean/std/min/max/abs-max (over its finite values),
NaN/Inf counts and the fraction of exact zeros. Problems become *flags*, each with a severity and a
reason; facts that look like problems but follow from the architecture become *notes* that start with
``structural:``. The verdict is ``failed`` when any flag is a failure, ``warnings`` when any is a
warning, else ``ok``.

Flags (thresholds in :data:`THRESHOLDS`):

``non_finite`` (failure)
    Any NaN or Inf: the model's outputs are garbage wherever that tensor is used.
``exploding`` (warning)
    ``abs_max > 1e3``. The network is unit-scale: inputs are z-scored or in [0, 1], every stage is
    followed by a normalization layer, default inits are at most ``1/sqrt(fan_in)`` (embeddings N(0, 1),
    max ~5) and AdamW moves a weight by about ``lr`` (<= 1e-2) per step against weight decay, so reaching
    1e3 takes >= 1e5 same-sign steps. The demo model's largest weight is ~4.7. For BatchNorm running
    statistics, which describe activations rather than weights, the threshold applies to
    ``|running_mean|`` and ``sqrt(running_var)`` (the activation scale).
``outlier`` (warning)
    ``max |x - mean| > 100 x std``: a few values far outside the tensor's own distribution (one
    exploding unit among healthy ones). Measured from the mean, not from 0, so a LayerNorm gain of
    1 +- 0.01 is not an outlier; and since ``max |x - mean| <= sqrt(n - 1) x std``, only tensors of more
    than 10^4 values can trigger it (trained Gaussian-like weights stay below ~10 sigma; the demo's
    worst is 8.8).
``all_zero`` / ``dead`` (warning)
    Every value 0, or every value equal (std 0), in a tensor with more than one value, unless that is
    structural: the tensor still holds its constant initialization (zeros/ones, found by building a
    fresh model from ``model_config``) and the model has not trained (0 steps), or it is a BatchNorm
    running statistic and that BatchNorm has tracked 0 batches. A constant-init tensor still exactly at
    its init after training steps got no gradient: a warning.
``negative_running_var`` (failure)
    A BatchNorm running variance below 0 (impossible for a variance).

Not flagged: integer buffers (BatchNorm's ``num_batches_tracked`` counter: noted with its value).
Noted as structural: biases followed by BatchNorm (the batch mean cancels them, so they get no
gradient) and tensors bit-identical to another (e.g. the per-modality BatchNorm biases: the normalized
modalities are summed, so the biases get identical gradients from the same zero init and only their sum
matters).

Optimizer state (``checkpoint_path``, a checkpoint of giblet.train.checkpoint): per parameter, AdamW's
``exp_avg``/``exp_avg_sq`` (or bitsandbytes' 8-bit ``state1``/``state2`` with their ``qmap``/``absmax``
quantization tensors) must be finite, and the second moment (``exp_avg_sq``, 8-bit: the dequantization
map values it indexes and the block ``absmax``) must be non-negative; violations are failures.

Both outputs are written to temporary names and renamed into place only when both are complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from giblet.errors import InputError
from giblet.evaluate.load import MODEL_FORMAT
from giblet.files import sha256_file


THRESHOLDS = {
    "exploding_abs_max": 1e3,      # |x| above this: exploding (see the module docstring)
    "outlier_sigma": 100.0,        # max |x - mean| above this many stds: outlier
}

# Tensors that structurally get no gradient (regex on the state-dict name -> why): noted, and a constant
# init they keep through training is not flagged as dead.
STRUCTURAL_NOTES = [
    (re.compile(r"^encoders\.(frames|audio)\.proj\.bias$"),
     "structural: followed by a BatchNorm (modality_norms) in training, whose batch mean removes any "
     "per-feature bias: it gets no gradient and stays near its init (it only shifts running_mean)"),
]

HISTOGRAM_PANELS = 12  # histograms drawn in weights.png: flagged tensors first, then the largest


# -- reading files ------------------------------------------------------------------------------------

def read_model_file(path: str | Path) -> dict:
    """``model.pt`` loaded with ``torch.load(weights_only=True)``; InputError naming the file when it is
    missing, unreadable (truncated, corrupt, not a torch file) or not a giblet model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model file: run the train stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, or not a torch file at all
        raise InputError(path, f"cannot be read as a model file ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputError(path, f"is not a giblet model (expected format {MODEL_FORMAT!r})")
    missing = [k for k in ("model_config", "state_dict") if not isinstance(saved.get(k), dict)]
    if missing:
        raise InputError(path, f"giblet model without {', '.join(missing)}")
    return saved


def read_checkpoint_file(path: str | Path) -> dict:
    """A training checkpoint, loaded with ``weights_only=True`` (numpy arrays allowed: the RNG states)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    safe = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(safe):
            state = torch.load(path, map_location="cpu", weights_only=True)
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


# -- statistics -----------------------------------------------------------------------------------------

def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def tensor_stats(t: torch.Tensor) -> dict:
    """Distribution statistics of one tensor (over its finite values; None where there are none)."""
    out = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "numel": t.numel()}
    if not (t.is_floating_point() or t.is_complex()):
        x = t.double()
        out.update(integer=True, min=_num(x.min()) if t.numel() else None,
                   max=_num(x.max()) if t.numel() else None, n_nan=0, n_inf=0,
                   zero_fraction=float((x == 0).double().mean()) if t.numel() else None)
        return out
    x = t.detach().double().flatten()
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    finite = x[torch.isfinite(x)] if nan or inf else x
    out.update(n_nan=nan, n_inf=inf, zero_fraction=float((x == 0).double().mean()) if x.numel() else None)
    if finite.numel():
        mean = finite.mean()
        std = finite.std(unbiased=False) if finite.numel() > 1 else torch.zeros((), dtype=torch.float64)
        out.update(mean=_num(mean), std=_num(std), min=_num(finite.min()), max=_num(finite.max()),
                   abs_max=_num(finite.abs().max()), max_deviation=_num((finite - mean).abs().max()))
    else:
        out.update(mean=None, std=None, min=None, max=None, abs_max=None, max_deviation=None)
    return out


def _flag(severity: str, kind: str, reason: str) -> dict:
    return {"severity": severity, "flag": kind, "reason": reason}


def _constant_value(t: torch.Tensor) -> float | None:
    if t.numel() == 0 or not t.is_floating_point():
        return None
    first = t.flatten()[0]
    return float(first) if bool((t == first).all()) else None


def _bn_prefix(name: str) -> str | None:
    m = re.match(r"^(.*)\.(running_mean|running_var)$", name)
    return m.group(1) if m else None


def check_tensor(name: str, t: torch.Tensor, stats: dict, *, kind: str, init: torch.Tensor | None,
                 steps: int | None, state_dict: dict) -> tuple[list, list]:
    """(flags, notes) of one state-dict tensor (see the module docstring for the rules)."""
    flags, notes = [], []
    no_gradient = [note for pattern, note in STRUCTURAL_NOTES if pattern.match(name)]
    if stats.get("integer"):
        what = "BatchNorm batches seen" if name.endswith("num_batches_tracked") else "integer buffer"
        notes.append(f"structural: integer counter ({what}: {stats['max']:g}), not a weight")
        if stats["min"] is not None and stats["min"] < 0:
            flags.append(_flag("failed", "negative_counter", f"counter is negative ({stats['min']:g})"))
        return flags, notes
    if t.numel() == 0:
        return flags, notes
    bad = stats["n_nan"] + stats["n_inf"]
    if bad:
        flags.append(_flag("failed", "non_finite",
                           f"{stats['n_nan']} NaN and {stats['n_inf']} Inf of {t.numel()} values"))
    if stats["abs_max"] is None:
        return flags, notes
    limit = THRESHOLDS["exploding_abs_max"]
    if name.endswith("running_var"):
        if stats["min"] < 0:
            flags.append(_flag("failed", "negative_running_var", f"running variance min {stats['min']:.3g} < 0"))
        scale = math.sqrt(max(stats["max"], 0.0))
        if scale > limit:
            flags.append(_flag("warning", "exploding", f"activation std sqrt(running_var) = {scale:.3g} > {limit:g}"))
    elif stats["abs_max"] > limit:
        flags.append(_flag("warning", "exploding", f"abs-max {stats['abs_max']:.3g} > {limit:g}"))
    sigma = THRESHOLDS["outlier_sigma"]
    if stats["std"] and stats["max_deviation"] > sigma * stats["std"]:
        flags.append(_flag("warning", "outlier", f"max |x - mean| = {stats['max_deviation']:.3g} is "
                                                 f"{stats['max_deviation'] / stats['std']:.0f} x the std "
                                                 f"{stats['std']:.3g} (> {sigma:g})"))
    if t.numel() > 1 and not bad and stats["std"] == 0:
        value = stats["min"]
        at_init = init is not None and init.shape == t.shape and _constant_value(init) is not None \
            and torch.equal(init.to(t.dtype), t)
        what = "all zero" if value == 0 else f"all {value:g}"
        if at_init and kind == "buffer" and _bn_prefix(name):
            tracked = state_dict.get(f"{_bn_prefix(name)}.num_batches_tracked")
            if tracked is not None and int(tracked) == 0:
                notes.append(f"structural: {what}: the initial running statistic "
                             "(this BatchNorm has tracked 0 batches)")
            else:
                seen = int(tracked) if tracked is not None else "?"
                flags.append(_flag("warning", "dead", f"{what}: running statistic never updated although "
                                                      f"{seen} batches were tracked"))
        elif at_init and not steps:
            why = (" (the fMRI layer starts from zero on purpose: it predicts the mean of z-scored data)"
                   if name.startswith("to_fmri.") else "")
            trained = "has not been trained (0 steps)" if steps == 0 else "records no training steps"
            notes.append(f"structural: {what}: its constant initialization{why}; the model {trained}")
        elif at_init and no_gradient:
            notes.append(f"structural: {what}: its constant initialization, kept because it gets no gradient")
        elif at_init:
            flags.append(_flag("warning", "dead", f"{what}: still exactly its constant initialization after "
                                                  f"{steps} training steps: it received no gradient"))
        elif value == 0:
            flags.append(_flag("warning", "all_zero", f"every one of its {t.numel()} values is 0"))
        else:
            flags.append(_flag("warning", "dead", f"{what} (std 0) in a tensor that should vary"))
    return flags, notes + no_gradient


def _duplicate_notes(state_dict: dict, stats: dict) -> dict:
    """name -> note for non-constant tensors bit-identical to an earlier one."""
    seen, notes = {}, {}
    for name, t in state_dict.items():
        s = stats[name]
        if not t.is_floating_point() or t.numel() < 2 or not s.get("std"):
            continue
        key = (tuple(t.shape), t.dtype, hashlib.sha256(t.contiguous().view(torch.uint8).numpy()).hexdigest())
        if key in seen:
            first = seen[key]
            why = ("the normalized modalities are summed, so their BatchNorm biases get identical gradients "
                   "from the same zero init and only their sum matters"
                   if re.match(r"^modality_norms\.[^.]+\.bias$", name) else "check that this is intended")
            notes[name] = f"structural: bit-identical to {first} ({why})"
        else:
            seen[key] = name
    return notes


# -- optimizer state --------------------------------------------------------------------------------------

def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True


def check_optimizer(state: dict, param_names: list[str], param_shapes: dict) -> dict:
    """Per-parameter health of the optimizer state of a checkpoint (AdamW or bitsandbytes AdamW8bit)."""
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or "state" not in optimizer:
        return {"flags": [{"tensor": "optimizer", **_flag("failed", "missing", "checkpoint has no optimizer state")}],
                "tensors": {}}
    groups = optimizer.get("param_groups", [])
    indices = [i for g in groups for i in g.get("params", [])]
    names = dict(zip(indices, param_names)) if len(indices) == len(param_names) else {}
    tensors, flags, kinds = {}, [], set()
    for group in groups:
        lr = group.get("lr")
        if lr is not None and not math.isfinite(float(lr)):
            flags.append({"tensor": "param_groups", **_flag("failed", "non_finite", f"learning rate {lr}")})
    for index, entry in optimizer["state"].items():
        name = names.get(index, f"param[{index}]")
        entry = dict(entry)
        quant = entry.pop("__bnb_optimizer_quant_state__", None)  # bitsandbytes >= 0.45 nests its state
        if isinstance(quant, dict):
            entry.update(quant)
        record, problems = {}, []
        if "exp_avg" in entry or "exp_avg_sq" in entry:
            kinds.add("adamw")
            record["state"] = "float"
            first, second = entry.get("exp_avg"), entry.get("exp_avg_sq")
        else:
            kinds.add("8bit" if "state1" in entry else "other")  # bitsandbytes (small tensors stay float32)
            first, second = entry.get("state1"), entry.get("state2")
            record["state"] = "8bit" if second is not None and second.dtype == torch.uint8 else "float"
        step = entry.get("step")
        if step is not None:
            record["step"] = _num(step.float().max() if isinstance(step, torch.Tensor) else step)
            if record["step"] is None:
                problems.append(("non_finite", f"step counter is {step}"))
        for role, t in (("exp_avg", first), ("exp_avg_sq", second)):
            if not isinstance(t, torch.Tensor):
                continue
            if name in param_shapes and tuple(t.shape) != tuple(param_shapes[name]):
                problems.append(("shape", f"{role} shape {list(t.shape)} != parameter {list(param_shapes[name])}"))
            if t.dtype == torch.uint8:
                q = entry.get("qmap1" if role == "exp_avg" else "qmap2")
                a = entry.get("absmax1" if role == "exp_avg" else "absmax2")
                info = {"quantized": True}
                for label, aux in (("qmap", q), ("absmax", a)):
                    if not isinstance(aux, torch.Tensor):
                        problems.append(("missing", f"8-bit {role} without its {label}"))
                        continue
                    info[f"{label}_finite"] = _finite(aux)
                    if not info[f"{label}_finite"]:
                        problems.append(("non_finite", f"8-bit {role}: {label} has "
                                                       f"{int((~torch.isfinite(aux)).sum())} non-finite values"))
                if isinstance(a, torch.Tensor):
                    info["absmax_max"] = _num(a.max()) if a.numel() else None
                    if a.numel() and float(a.min()) < 0:
                        problems.append(("negative", f"8-bit {role}: absmax min {float(a.min()):.3g} < 0"))
                if role == "exp_avg_sq" and isinstance(q, torch.Tensor) and t.numel():
                    low = float(q[t.long()].min())
                    info["min_code_value"] = _num(low)
                    if low < 0:
                        problems.append(("negative", f"8-bit exp_avg_sq dequantizes to negative values ({low:.3g})"))
                record[role] = info
                continue
            s = tensor_stats(t)
            record[role] = {k: s[k] for k in ("min", "max", "abs_max", "n_nan", "n_inf")}
            if s["n_nan"] or s["n_inf"]:
                problems.append(("non_finite", f"{role}: {s['n_nan']} NaN and {s['n_inf']} Inf"))
            if role == "exp_avg_sq" and s["min"] is not None and s["min"] < 0:
                problems.append(("negative", f"exp_avg_sq min {s['min']:.3g} < 0 (a second moment cannot be negative)"))
        record["flags"] = [_flag("failed", kind, reason) for kind, reason in problems]
        flags += [{"tensor": f"optimizer/{name}", **f} for f in record["flags"]]
        tensors[name] = record
    without = [n for n in param_names if n not in tensors] if names else []
    return {"kind": sorted(kinds), "n_states": len(tensors), "tensors": tensors, "flags": flags,
            "without_state": without,
            "notes": ([f"no optimizer state for {len(without)} parameters (they never received a gradient): "
                       + ", ".join(without)] if without else [])}


# -- the figure --------------------------------------------------------------------------------------------

def _figure(report: dict, state_dict: dict, path: Path) -> None:
    from giblet.evaluate.weights_figure import plot_weights

    plot_weights(report, state_dict, path, THRESHOLDS["exploding_abs_max"], HISTOGRAM_PANELS)


# -- entry point ---------------------------------------------------------------------------------------------

def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


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
    stats = {name: tensor_stats(t) for name, t in state_dict.items()}
    duplicates = _duplicate_notes(state_dict, stats)
    tensors, flags = {}, []
    for name, t in state_dict.items():
        kind = "buffer" if name in buffer_names or _bn_prefix(name) else "parameter"
        if stats[name].get("integer"):
            kind = "counter"
        f, n = check_tensor(name, t, stats[name], kind=kind, init=init.get(name), steps=steps,
                            state_dict=state_dict)
        if name in duplicates:
            n.append(duplicates[name])
        tensors[name] = {**stats[name], "kind": kind, "flags": f, "notes": n}
        flags += [{"tensor": name, **x} for x in f]
    if init:
        for name in sorted(set(init) - set(state_dict)):
            flags.append({"tensor": name,
                          **_flag("failed", "missing", "in the architecture but not in the state dict")})
        for name in sorted(set(state_dict) - set(init)):
            flags.append({"tensor": name, **_flag("warning", "unexpected", "not a tensor of the architecture")})
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
    report = _json_safe({
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


__all__ = ["THRESHOLDS", "examine_weights", "read_model_file", "read_checkpoint_file", "tensor_stats",
           "check_tensor", "check_optimizer", "fresh_reference", "trained_steps"]
