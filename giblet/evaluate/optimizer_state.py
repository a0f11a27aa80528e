"""Health of the optimizer state of a training checkpoint (AdamW or bitsandbytes AdamW8bit).

Per parameter, AdamW's ``exp_avg``/``exp_avg_sq`` (or bitsandbytes' 8-bit ``state1``/``state2`` with
their ``qmap``/``absmax`` quantization tensors) must be finite, have the parameter's shape, and the
second moment (``exp_avg_sq``, 8-bit: the dequantization map values it indexes and the block
``absmax``) must be non-negative; a non-finite learning rate or step counter, or a checkpoint without
optimizer state, is also a failure. Parameters without any state (they never received a gradient)
are noted.
"""

from __future__ import annotations

import math

import torch

from giblet.evaluate.tensor_health import finite_float, make_flag, tensor_stats


def _finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (integer tensors always are)."""
    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True


def check_optimizer(state: dict, param_names: list[str], param_shapes: dict) -> dict:
    """Per-parameter health of the optimizer state of a checkpoint (AdamW or bitsandbytes AdamW8bit).

    ``state``: a checkpoint of giblet.train.checkpoint (its ``optimizer`` entry is read);
    ``param_names``: the model's parameter names in ``named_parameters()`` order (matched to the
    optimizer's indices when the counts agree); ``param_shapes``: name -> shape each state must have.
    Returns ``kind``, ``n_states``, ``tensors`` (name -> per-state summary and ``flags``), ``flags``
    (each with its ``tensor``, ``optimizer/<name>``), ``without_state`` and ``notes``; only
    ``flags`` and ``tensors`` when the checkpoint has no optimizer state.
    """
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or "state" not in optimizer:
        missing = make_flag("failed", "missing", "checkpoint has no optimizer state")
        return {"flags": [{"tensor": "optimizer", **missing}], "tensors": {}}
    groups = optimizer.get("param_groups", [])
    indices = [i for g in groups for i in g.get("params", [])]
    names = dict(zip(indices, param_names)) if len(indices) == len(param_names) else {}
    tensors, flags, kinds = {}, [], set()
    for group in groups:
        lr = group.get("lr")
        if lr is not None and not math.isfinite(float(lr)):
            flags.append({"tensor": "param_groups", **make_flag("failed", "non_finite", f"learning rate {lr}")})
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
            record["step"] = finite_float(step.float().max() if isinstance(step, torch.Tensor) else step)
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
                    info["absmax_max"] = finite_float(a.max()) if a.numel() else None
                    if a.numel() and float(a.min()) < 0:
                        problems.append(("negative", f"8-bit {role}: absmax min {float(a.min()):.3g} < 0"))
                if role == "exp_avg_sq" and isinstance(q, torch.Tensor) and t.numel():
                    low = float(q[t.long()].min())
                    info["min_code_value"] = finite_float(low)
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
        record["flags"] = [make_flag("failed", kind, reason) for kind, reason in problems]
        flags += [{"tensor": f"optimizer/{name}", **f} for f in record["flags"]]
        tensors[name] = record
    without = [n for n in param_names if n not in tensors] if names else []
    return {"kind": sorted(kinds), "n_states": len(tensors), "tensors": tensors, "flags": flags,
            "without_state": without,
            "notes": ([f"no optimizer state for {len(without)} parameters (they never received a gradient): "
                       + ", ".join(without)] if without else [])}



__all__ = ["check_optimizer"]
