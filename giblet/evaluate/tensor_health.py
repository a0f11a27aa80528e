"""Health of each tensor of a state dict: statistics, *flags* (problems) and *notes* (explained facts).

Every tensor gets shape, dtype, mean/std/min/max/abs-max (over its finite values), NaN/Inf counts and
the fraction of exact zeros (:func:`tensor_stats`). Problems become *flags*, each with a severity
(``failed`` or ``warning``) and a reason; facts that look like problems but follow from the
architecture become *notes* that start with ``structural:`` (:func:`check_tensor`,
:func:`check_state_dict`).

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
gradient) and tensors bit-identical to another (e.g. the per-modality BatchNorm biases of a model with
``fusion: sum``: the normalized modalities are summed, so the biases get identical gradients from the
same zero init and only their sum matters). Against the fresh model: a tensor of the architecture missing from the state dict is a
failure (``missing``), one the architecture does not have a warning (``unexpected``).
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

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


def finite_float(x) -> float | None:
    """``x`` (a number or 0-d tensor) as a float; None when it is NaN or infinite (JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def tensor_stats(t: torch.Tensor) -> dict:
    """Distribution statistics of one tensor (over its finite values; None where there are none)."""
    out = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "numel": t.numel()}
    if not (t.is_floating_point() or t.is_complex()):
        x = t.double()
        out.update(integer=True, min=finite_float(x.min()) if t.numel() else None,
                   max=finite_float(x.max()) if t.numel() else None, n_nan=0, n_inf=0,
                   zero_fraction=float((x == 0).double().mean()) if t.numel() else None)
        return out
    x = t.detach().double().flatten()
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    finite = x[torch.isfinite(x)] if nan or inf else x
    out.update(n_nan=nan, n_inf=inf, zero_fraction=float((x == 0).double().mean()) if x.numel() else None)
    if finite.numel():
        mean = finite.mean()
        std = finite.std(unbiased=False) if finite.numel() > 1 else torch.zeros((), dtype=torch.float64)
        out.update(mean=finite_float(mean), std=finite_float(std), min=finite_float(finite.min()),
                   max=finite_float(finite.max()), abs_max=finite_float(finite.abs().max()),
                   max_deviation=finite_float((finite - mean).abs().max()))
    else:
        out.update(mean=None, std=None, min=None, max=None, abs_max=None, max_deviation=None)
    return out


def make_flag(severity: str, kind: str, reason: str) -> dict:
    """A flag: ``severity`` is ``"failed"`` or ``"warning"``, ``kind`` its name (e.g. ``"non_finite"``)."""
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
            flags.append(make_flag("failed", "negative_counter", f"counter is negative ({stats['min']:g})"))
        return flags, notes
    if t.numel() == 0:
        return flags, notes
    bad = stats["n_nan"] + stats["n_inf"]
    if bad:
        flags.append(make_flag("failed", "non_finite",
                               f"{stats['n_nan']} NaN and {stats['n_inf']} Inf of {t.numel()} values"))
    if stats["abs_max"] is None:
        return flags, notes
    limit = THRESHOLDS["exploding_abs_max"]
    if name.endswith("running_var"):
        if stats["min"] < 0:
            flags.append(make_flag("failed", "negative_running_var", f"running variance min {stats['min']:.3g} < 0"))
        scale = math.sqrt(max(stats["max"], 0.0))
        if scale > limit:
            flags.append(make_flag("warning", "exploding",
                                   f"activation std sqrt(running_var) = {scale:.3g} > {limit:g}"))
    elif stats["abs_max"] > limit:
        flags.append(make_flag("warning", "exploding", f"abs-max {stats['abs_max']:.3g} > {limit:g}"))
    sigma = THRESHOLDS["outlier_sigma"]
    if stats["std"] and stats["max_deviation"] > sigma * stats["std"]:
        flags.append(make_flag("warning", "outlier", f"max |x - mean| = {stats['max_deviation']:.3g} is "
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
                flags.append(make_flag("warning", "dead", f"{what}: running statistic never updated although "
                                                          f"{seen} batches were tracked"))
        elif at_init and not steps:
            why = (" (the fMRI layer starts from zero on purpose: it predicts the mean of z-scored data)"
                   if name.startswith("to_fmri.") else "")
            trained = "has not been trained (0 steps)" if steps == 0 else "records no training steps"
            notes.append(f"structural: {what}: its constant initialization{why}; the model {trained}")
        elif at_init and no_gradient:
            notes.append(f"structural: {what}: its constant initialization, kept because it gets no gradient")
        elif at_init:
            flags.append(make_flag("warning", "dead", f"{what}: still exactly its constant initialization after "
                                                      f"{steps} training steps: it received no gradient"))
        elif value == 0:
            flags.append(make_flag("warning", "all_zero", f"every one of its {t.numel()} values is 0"))
        else:
            flags.append(make_flag("warning", "dead", f"{what} (std 0) in a tensor that should vary"))
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


def check_state_dict(state_dict: dict, init: dict, buffer_names: set, steps: int | None) -> tuple[dict, list]:
    """(tensors, flags) of a whole state dict.

    ``init``: the fresh model's state dict (``{}`` when there is none: constant tensors are then judged
    without it and missing/unexpected tensors are not checked); ``buffer_names``: its buffers;
    ``steps``: optimizer steps behind the weights (None when unknown). ``tensors``: name ->
    :func:`tensor_stats` plus ``kind`` (``parameter``, ``buffer`` or ``counter``), ``flags`` and ``notes``;
    ``flags``: every flag, each with the ``tensor`` it is about.
    """
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
                          **make_flag("failed", "missing", "in the architecture but not in the state dict")})
        for name in sorted(set(state_dict) - set(init)):
            flags.append({"tensor": name, **make_flag("warning", "unexpected", "not a tensor of the architecture")})
    return tensors, flags


__all__ = ["THRESHOLDS", "STRUCTURAL_NOTES", "check_state_dict", "check_tensor", "finite_float", "make_flag",
           "tensor_stats"]
