"""The demo's latents decoded from the brain: how much of the hidden story a decoder recovers.

The demo movie is drawn from known latents (``truth.npz``): the disk's x, y, size and hue and the
brightness (visual), pitch, loudness and noisiness (auditory), and which character, place and action
are annotated (language, one indicator per value). For every test TR, each latent (its mean over
the TR) is decoded by a ridge per latent (one alpha per latent by time-blocked CV) fitted on the
training and validation targets, from:

- ``model``: the model's decoded stimulus (:func:`decoded_descriptors` of its decoders' output for
  the measured brain), each group from its own modality: the visual latents from the decoded frames
  alone (their 9 x 16 colour grid), the auditory ones from the decoded codes, the language ones from
  the decoded text: what its reconstructions carry about the story;
- ``banded ridge``: the ridge decoder baseline's input, the measured brain's first 256 principal
  components (fitted on the fit targets);
- ``oracle``: the same decoder on the demo's noise-free signal: what the brain encodes at all;
- ``true frames``: the visual latents read the model's way from the *true* frames' colour grid: what
  this read-out can reach at all (the grid of a perfect reconstruction).

:func:`autoencoder_readout` asks the pretrained autoencoders the same of their own latent spaces (a
benchmark only: the truth never enters pretraining): the visual latents read linearly (ridge) from
the frame autoencoder's latents of each TR, the auditory ones from the code autoencoder's.

The latent decoded for target TR ``t`` is the one at the TR the model decodes (``t`` minus the
hemodynamic delay, as in decoding identification). Scores are Pearson r on the test block; the
table shows the mean r over each group's latents, and the JSON keeps every latent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LATENT_GROUPS = ("visual", "auditory", "language")


def tr_latents(truth) -> tuple[list[str], list[str], np.ndarray]:
    """``(names, groups, values (n_trs, n_latents))``: every latent averaged over each TR."""
    tr, dt = float(truth["tr"]), float(truth["latent_dt"])
    n_trs = truth["signal"].shape[0]
    per_tr = int(round(tr / dt))

    def mean_per_tr(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)[: n_trs * per_tr]
        return x.reshape(n_trs, per_tr, -1).mean(axis=1)

    codes = np.asarray(truth["scene_codes"])
    indicators, names = [], []
    for k, key in enumerate(("characters", "places", "actions")):
        values = [str(v) for v in truth[key]]
        indicators.append(np.stack([codes[:, k] == j for j in range(len(values))], axis=1))
        names += values
    visual = [str(v) for v in truth["visual_names"]]
    auditory = [str(v) for v in truth["auditory_names"]]
    values = np.concatenate([mean_per_tr(truth["visual_latents"]), mean_per_tr(truth["auditory_latents"]),
                             mean_per_tr(np.concatenate(indicators, axis=1))], axis=1)
    groups = ["visual"] * len(visual) + ["auditory"] * len(auditory) + ["language"] * len(names)
    return visual + auditory + names, groups, values


def decode_r(X_fit, L_fit, X_test, L_test, fit_targets, lag_trs: int) -> np.ndarray:
    """Ridge (one alpha per latent, time-blocked CV) from ``X`` to the latents ``L``: test r per latent."""
    from giblet.evaluate.decoding_identification import ALPHAS
    from giblet.evaluate.metrics import pearson_columns
    from giblet.evaluate.ridge_solvers import ridge_cv_predict
    from giblet.splits import blocked_cv

    mean, sd = X_fit.mean(0), X_fit.std(0) + 1e-8
    cv = blocked_cv(np.asarray(fit_targets), 5, lag_trs)
    predicted, _, _ = ridge_cv_predict(((X_fit - mean) / sd).astype(np.float32), L_fit.astype(np.float32),
                                       ((X_test - mean) / sd).astype(np.float32), ALPHAS, cv)
    return pearson_columns(predicted, L_test)


# The decoded modality each latent group is read from.
GROUP_MODALITY = {"visual": "frames", "auditory": "audio", "language": "text"}


def _model_descriptors(results: Path, manifest, blocks) -> dict[str, np.ndarray]:
    """{modality: the decoded stimulus of every target of ``blocks`` as descriptors (n, p)}; frames as
    their mean frame's colour grid (:func:`mean_frame_grid`)."""
    from giblet.evaluate.decoding_identification import decoded_descriptors, mean_frame_grid
    from giblet.evaluate.load import predict
    from giblet.model.model_file import load_model

    model, _ = load_model(results / "train" / "model.pt")
    parts: dict[str, list] = {}
    for block in blocks:
        p = predict(model, manifest, block)
        descriptors = decoded_descriptors(p.decoded, p.stimulus.get("text_mask"))
        if "frames" in p.decoded:
            descriptors["frames"] = mean_frame_grid(p.decoded["frames"])
        for modality, value in descriptors.items():
            parts.setdefault(modality, []).append(value)
    return {modality: np.concatenate(values) for modality, values in parts.items()}


def latent_decoding(results: str | Path) -> dict:
    """``{row: {"by_latent": {name: r}, "group_r": {group: mean r}}}`` for one seed's results folder."""
    from giblet.data.manifest import read_manifest
    from giblet.evaluate.decoding_identification import (brain_components, decode_delay, decoded_stimulus_trs,
                                                         mean_frame_grid)

    results = Path(results)
    manifest = read_manifest(results / "dataset" / "manifest.json")
    truth = np.load(results / "demo" / "truth.npz")
    names, groups, latents = tr_latents(truth)
    split = manifest.split
    fit_blocks = [b for b in ("train", "val") if b in split.ranges]
    fit = np.concatenate([np.asarray(split.targets(b)) for b in fit_blocks])
    test = np.asarray(split.targets("test"))
    delay = decode_delay(manifest)
    L_fit, L_test = (latents[decoded_stimulus_trs(split, t, delay)] for t in (fit, test))
    model_fit, model_test = (_model_descriptors(results, manifest, b) for b in (fit_blocks, ["test"]))
    inputs = {
        "banded ridge": brain_components(np.load(manifest.arrays["fmri"].path, mmap_mode="r"), fit, test),
        "oracle": brain_components(truth["signal"], fit, test),
    }
    groups = np.asarray(groups)
    out = {"model": {"by_latent": {}, "group_r": {}}}
    for group in LATENT_GROUPS:
        modality, columns = GROUP_MODALITY[group], np.flatnonzero(groups == group)
        if modality not in model_fit:
            continue
        r = decode_r(model_fit[modality], L_fit[:, columns], model_test[modality], L_test[:, columns], fit,
                     split.lag_trs)
        out["model"]["by_latent"].update({names[c]: float(v) for c, v in zip(columns, r)})
        out["model"]["group_r"][group] = float(np.mean(r))
    if "frames" in model_fit:  # the read-out's own ceiling: the same grid of the true frames
        frames = np.load(manifest.arrays["frames"].path, mmap_mode="r")
        columns = np.flatnonzero(groups == "visual")
        true_fit, true_test = (mean_frame_grid(np.asarray(frames[decoded_stimulus_trs(split, t, delay)]))
                               for t in (fit, test))
        r = decode_r(true_fit, L_fit[:, columns], true_test, L_test[:, columns], fit, split.lag_trs)
        out["true frames"] = {"by_latent": {names[c]: float(v) for c, v in zip(columns, r)},
                              "group_r": {"visual": float(np.mean(r))}}
    for row, (X_fit, X_test) in inputs.items():
        r = decode_r(X_fit, L_fit, X_test, L_test, fit, split.lag_trs)
        out[row] = {"by_latent": dict(zip(names, map(float, r))),
                    "group_r": {g: float(np.mean(r[groups == g])) for g in LATENT_GROUPS}}
    return out


def autoencoder_readout(results: str | Path, fit_fraction: float = 0.7) -> dict:
    """{group: {"by_latent": {name: r}, "r": mean r}}: each pretrained autoencoder's per-TR latents (mean
    over the TR's slots) -> the demo's latents of its group, ridge fitted on the first ``fit_fraction``
    of the movie's TRs and scored (Pearson r) on the rest, with a gap of 10 TRs between them."""
    results = Path(results)
    truth = np.load(results / "demo" / "truth.npz")
    names, groups, latents = tr_latents(truth)
    groups = np.asarray(groups)
    out = {}
    for group, kind in (("visual", "frames"), ("auditory", "audio")):
        path = results / "pretrain" / kind / "latents.npy"
        if not path.exists():
            continue
        X = np.load(path).mean(axis=1)
        n = min(len(X), len(latents))
        split = int(fit_fraction * n)
        fit, test = np.arange(split - 10), np.arange(split, n)
        columns = np.flatnonzero(groups == group)
        r = decode_r(X[fit], latents[fit][:, columns], X[test], latents[test][:, columns], fit, 1)
        out[group] = {"by_latent": {names[c]: float(v) for c, v in zip(columns, r)}, "r": float(np.mean(r))}
    return out
