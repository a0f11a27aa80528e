"""Verify a trained ``model.pt`` before anything is evaluated with it: ``verify.json`` or an InputError.

Checks (each recorded in ``verify.json["checks"]`` as ``{"ok": true, "detail": ...}``):

``load``
    ``torch.load(weights_only=True)`` reads it (no pickled code runs); its sha256 is recorded.
``format``
    The ``format`` key is ``giblet.model/1`` and ``model_config``/``state_dict`` are present.
``manifest_sha256``
    The manifest digest stored at training equals the sha256 of ``manifest_path`` now; otherwise the
    model was trained on other data (or the data set was rebuilt since).
``n_voxels``, ``lag_trs``, ``modalities``
    ``model_config`` agrees with the manifest.
``finite``
    Every floating-point tensor of the state dict is free of NaN/Inf (offenders are named).
``architecture``
    The state dict has exactly the keys and shapes of a fresh ``BrainAutoencoder.from_config(model_config)``
    and loads into it strictly.
``forward``
    One real sample (the first of the validation block, else test, else train) run through the model
    (eval mode) gives finite outputs of the expected shapes (fMRI ``(1, n_voxels)`` and every decoder).
    Skipped, without a reason of its own, when an earlier check already failed in a way that makes it
    meaningless (non-finite weights, a wrong architecture or configuration).
``checkpoint``
    When ``checkpoints/index.json`` lies beside ``model.pt``: its ``config_hash`` is the model's; the
    checkpoint the weights came from (``model.pt["weights"]``: ``best.pt`` or ``latest.pt`` at the
    recorded step, or another index entry of that step; for a model.pt written before ``weights`` was
    recorded, ``latest.pt`` then ``best.pt``) exists, its sha256 equals the index's, it was trained on
    the same manifest digest, and its ``model`` state is bit-for-bit the state dict of ``model.pt``
    (but for the fMRI layer ``to_fmri`` and the batch-norm statistics, when ``model.pt["weights"]["readout"]``
    says training refitted them after choosing these weights, and the latent decoder's basis and map, when
    ``model.pt["weights"]["decoder"]`` says it was fitted then: there only shapes and dtypes must match).
    Without an index the check is recorded as skipped (ok): only model.pt's own sha256 identifies it.

Any failure raises ``InputError(model_path, "<every reason>")`` (``InputError(manifest_path, ...)``
when the manifest itself cannot be read) and leaves no ``out_json``: a stale one from an earlier run is
removed, so a failed verification fails the job and nothing downstream runs on a bad model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from giblet.data.manifest import Manifest, read_manifest
from giblet.errors import InputError
from giblet.evaluate.weights import read_checkpoint_file, trained_steps
from giblet.files import jsonable, sha256_file, write_json
from giblet.model.model_file import MODEL_FORMAT, read_model_file

SPLIT_ORDER = ("val", "test", "train")  # the split the forward-pass sample comes from (first present)

# The state-dict prefix of the layer that train.readout: banded/ridge refits after training, and the
# batch-norm statistics it recomputes first (giblet.train.readout.recalibrate_batch_norm).
REFITTED_PREFIX = "to_fmri."
BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
# The latent decoder's map, fitted in closed form after training (model.pt["weights"]["decoder"]).
DECODER_FITTED = ("latent_decoder.basis", "latent_decoder.brain_mean", "latent_decoder.weight", "latent_decoder.bias",
                  "latent_decoder.fitted")


def _fail(out_json: Path, error: InputError) -> None:
    out_json.unlink(missing_ok=True)  # never leave a verify.json (or a stale one) after a failure
    raise error


def _short(digest: str | None) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) else repr(digest)


def _source_checkpoint(saved: dict, index: dict) -> tuple[list[str], str]:
    """Index names that may hold the model's weights (best first), and how they were chosen."""
    files = index.get("files", {})
    weights = saved.get("weights")
    if isinstance(weights, dict) and "step" in weights:
        step, preferred = int(weights["step"]), "best.pt" if weights.get("weights") == "best" else "latest.pt"
        same_step = [n for n, e in files.items() if e.get("step") == step]
        ordered = ([preferred] if preferred in same_step else []) + sorted(n for n in same_step if n != preferred)
        return ordered, f"{weights.get('weights')} weights of step {step}"
    return [n for n in ("latest.pt", "best.pt") if n in files], "model.pt records no source: latest.pt, then best.pt"


def _check_provenance(model_path: Path, saved: dict, state_dict: dict) -> tuple[dict, str | None]:
    """The ``checkpoint`` check: (record, failure reason or None)."""
    directory = model_path.parent / "checkpoints"
    index_path = directory / "index.json"
    if not index_path.is_file():
        return {"ok": True, "skipped": True,
                "detail": f"no {index_path}: only model.pt's own sha256 identifies the weights"}, None
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            raise ValueError(f"a JSON {type(index).__name__}, not an object")
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "detail": f"{index_path} unreadable ({error})"}, f"{index_path} cannot be read"
    if index.get("config_hash") != saved.get("config_hash"):
        why = (f"{index_path} belongs to training config {index.get('config_hash')!r}, model.pt to "
               f"{saved.get('config_hash')!r}: the checkpoints beside it are not the run that wrote it")
        return {"ok": False, "detail": why}, why
    names, how = _source_checkpoint(saved, index)
    if not names:
        why = f"{index_path} lists no checkpoint for the model's weights ({how})"
        return {"ok": False, "detail": why}, why
    # train.readout: banded/ridge refits the fMRI layer after training: the checkpoint holds the rest bit for bit.
    weights = saved.get("weights") or {}
    readout = weights.get("readout") or {}
    refitted = {k for k in state_dict if k.startswith(REFITTED_PREFIX)} if readout else set()
    if "batch_norm" in readout:
        refitted |= {k for k in state_dict if k.rsplit(".", 1)[-1] in BATCH_NORM_STATISTICS}
    refitted |= set(DECODER_FITTED) if weights.get("decoder") else set()
    tried = []
    for name in names:
        path, entry = directory / name, index["files"][name]
        if not path.is_file():
            tried.append(f"{name}: missing")
            continue
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            why = f"{path}: sha256 {_short(digest)} is not the {_short(entry.get('sha256'))} that {index_path} records"
            return {"ok": False, "detail": why, "file": str(path)}, why
        try:
            state = read_checkpoint_file(path)
        except InputError as error:
            return {"ok": False, "detail": str(error), "file": str(path)}, str(error)
        model = state.get("model", {})
        same = model.keys() == state_dict.keys() and all(
            model[k].shape == state_dict[k].shape and model[k].dtype == state_dict[k].dtype
            and (k in refitted or torch.equal(model[k], state_dict[k])) for k in model)
        if not same:
            tried.append(f"{name}: holds other weights")
            continue
        if state.get("manifest_sha256") not in (None, saved.get("manifest_sha256")):
            why = f"{path} was trained on manifest {_short(state.get('manifest_sha256'))}, model.pt records " \
                  f"{_short(saved.get('manifest_sha256'))}"
            return {"ok": False, "detail": why, "file": str(path)}, why
        return {"ok": True, "file": str(path), "sha256": digest, "step": entry.get("step"),
                "epoch": entry.get("epoch"), "config_hash": index.get("config_hash"),
                "detail": f"{how}: {name} matches its index sha256 and holds exactly these weights"}, None
    why = f"no checkpoint in {directory} holds model.pt's weights ({how}; {'; '.join(tried)})"
    return {"ok": False, "detail": why}, why


def _forward(model, manifest: Manifest) -> dict:
    """Run the first sample of the first present split; returns the check record."""
    from giblet.data.batch import collate
    from giblet.data.samples import WindowDataset

    ranges = manifest.split.ranges
    split = next((s for s in SPLIT_ORDER if s in ranges), None)
    if split is None:
        return {"ok": False, "detail": "the manifest has no split to take a sample from"}
    dataset = WindowDataset(manifest, split, brain_window=model.decode_window if model.latent_decoding else 0)
    if len(dataset) == 0:
        return {"ok": False, "detail": f"split {split!r} has no samples"}
    batch = collate(dataset, [0], "cpu")
    with torch.no_grad():
        out = model.eval()(batch)
    shapes = {k: list(v.shape) for k, v in out.items()}
    bad = [f"{k} ({int((~torch.isfinite(v.float())).sum())} non-finite of {v.numel()})"
           for k, v in out.items() if not bool(torch.isfinite(v.float()).all())]
    record = {"split": split, "target_tr": int(dataset.targets[0]), "output_shapes": shapes}
    if tuple(out["fmri"].shape) != (1, manifest.n_voxels):
        return {**record, "ok": False,
                "detail": f"fMRI prediction shape {shapes['fmri']} != [1, {manifest.n_voxels}]"}
    expected = {"frames": "frames", "frame_features": "frame_features", "audio": "code_logits", "text": "text"}
    absent = [expected[m] for m in manifest.modalities if m in expected and expected[m] not in out]
    if absent:
        return {**record, "ok": False, "detail": f"no decoder output for {', '.join(absent)}"}
    if bad:
        return {**record, "ok": False, "detail": f"non-finite outputs: {', '.join(bad)}"}
    return {**record, "ok": True,
            "detail": f"sample 0 of {split!r} (fMRI TR {record['target_tr']}): every output finite"}


def verify_checkpoint(model_path: str | Path, manifest_path: str | Path, out_json: str | Path) -> dict:
    """Verify ``model_path`` against the data set ``manifest_path``; write ``out_json`` and return it.

    Raises InputError listing every failed check (see the module docstring); then no ``out_json`` exists.
    """
    from giblet.model import BrainAutoencoder

    model_path, manifest_path, out_json = Path(model_path), Path(manifest_path), Path(out_json)
    checks, reasons = {}, []

    def check(name: str, ok: bool, detail: str, **extra) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail, **extra}
        if not ok:
            reasons.append(f"{name}: {detail}")

    try:
        saved = read_model_file(model_path)
    except InputError as error:
        _fail(out_json, error)
    model_sha256 = sha256_file(model_path)
    check("load", True, "torch.load(weights_only=True) read it", sha256=model_sha256)
    check("format", True, f"format {MODEL_FORMAT!r} with model_config and state_dict")
    try:
        manifest = read_manifest(manifest_path)
    except InputError as error:
        _fail(out_json, error)
    manifest_sha256 = sha256_file(manifest_path)
    recorded = saved.get("manifest_sha256")
    check("manifest_sha256", recorded == manifest_sha256,
          f"model.pt was trained on manifest sha256 {_short(recorded)}" + (
              "" if recorded == manifest_sha256 else
              f" but {manifest_path} has sha256 {_short(manifest_sha256)}: the model was trained on different "
              "data (or the data set was rebuilt since): retrain it"),
          recorded=recorded, actual=manifest_sha256)

    config = saved["model_config"]
    for key in ("n_voxels", "lag_trs", "modalities"):
        have, want = config.get(key), getattr(manifest, key)
        shown = sorted(have) if key == "modalities" and have == want else have
        check(key, have == want, f"model {shown!r}" + (" = manifest" if have == want else f" != manifest {want!r}"))
    config_ok = all(checks[k]["ok"] for k in ("n_voxels", "lag_trs", "modalities"))

    state_dict = saved["state_dict"]
    non_finite = {name: int((~torch.isfinite(t)).sum()) for name, t in state_dict.items()
                  if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())}
    check("finite", not non_finite,
          "every tensor is finite" if not non_finite else
          "non-finite values in " + ", ".join(f"{n} ({c} NaN/Inf of {state_dict[n].numel()})"
                                              for n, c in non_finite.items()),
          non_finite=non_finite)

    model, architecture_ok = None, False
    try:
        model = BrainAutoencoder.from_config(config)
    except Exception as error:  # noqa: BLE001
        check("architecture", False,
              f"model_config does not build a BrainAutoencoder ({type(error).__name__}: {error})")
    if model is not None:
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong = [f"{k} {list(state_dict[k].shape)} (expected {list(expected[k].shape)})" for k in expected
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
                   ([f"unexpected {', '.join(unexpected)}"] if unexpected else []) + \
                   ([f"wrong shape {', '.join(wrong)}"] if wrong else [])
        if not problems:
            try:
                model.load_state_dict(state_dict, strict=True)
            except Exception as error:  # noqa: BLE001 - e.g. a dtype that cannot be copied
                problems.append(f"load_state_dict failed ({type(error).__name__}: {error})")
        architecture_ok = not problems
        check("architecture", architecture_ok,
              f"{len(expected)} tensors, keys and shapes of BrainAutoencoder.from_config(model_config)"
              if architecture_ok else "state dict does not fit the architecture: " + "; ".join(problems))

    if architecture_ok and config_ok and not non_finite:
        try:
            record = _forward(model, manifest)
        except Exception as error:  # noqa: BLE001 - unreadable arrays, shape errors in the model ...
            record = {"ok": False, "detail": f"forward pass on a real sample failed ({type(error).__name__}: {error})"}
        check("forward", **record)
    else:
        checks["forward"] = {"ok": False, "skipped": True,
                             "detail": "not run: the weights, architecture or configuration failed above"}

    record, why = _check_provenance(model_path, saved, state_dict)
    checks["checkpoint"] = record
    if why:
        reasons.append(f"checkpoint: {why}")

    if reasons:
        _fail(out_json, InputError(model_path, f"failed verification ({len(reasons)} problems): " + "; ".join(reasons)))
    result = jsonable({
        "ok": True, "model": str(model_path), "model_sha256": model_sha256, "manifest": str(manifest_path),
        "manifest_sha256": manifest_sha256, "checks": checks, "weights": saved.get("weights"),
        "trained_steps": trained_steps(saved), "steps": saved.get("steps"), "epochs": saved.get("epochs"),
        "best_val_loss": saved.get("best_val_loss"), "config_hash": saved.get("config_hash"),
        "giblet_version": saved.get("giblet_version"),
    })
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_json, result)
    return result


__all__ = ["verify_checkpoint"]
