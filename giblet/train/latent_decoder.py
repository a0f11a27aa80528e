"""The brain model's decoders fitted in closed form: ridge from a window of brain TRs to the stimulus latents.

After training, :func:`fit_latent_decoder` fits :class:`~giblet.model.latent_decoder.LatentDecoder`'s
linear map on the training and validation targets: inputs are the ``decode_window`` brain TRs ending
at each target, on the leading principal components of the brain at these targets (fitted here, as
the ridge decoder baseline's are: a basis from the training block alone drops the validation rows'
own directions, and cost a third of the text identification on the 4-subject demo); outputs are
the latents of the stimulus TR the decoders reconstruct (``decode_index``), the mean CLIP embedding
of its text and the CLIP embeddings of its frames. One penalty per output by time-blocked CV (:func:`giblet.train.readout.ridge_weights`). Predictions
shrink towards the mean, and the frozen renderers draw a shrunken latent as the average picture,
so every rendered latent is rescaled to the mean and spread it has on the fitted rows (as
brain-diffuser does before rendering). :func:`install_renderers` copies the pretrained decoders'
weights in.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from giblet.data.manifest import Manifest
from giblet.model.latent_decoder import RENDERED
from giblet.autoencoders.file import load_autoencoder
from giblet.train.bottleneck import fix_decoder_basis, principal_components
from giblet.train.readout import ridge_weights

log = logging.getLogger(__name__)

# The brain's principal components carry its whole variance (thousands per component): the penalties
# reach well beyond the readout's.
ALPHAS = np.logspace(-1, 7, 17)
# Manifest role of each pretrained kind's autoencoder file.
AUTOENCODER_ROLES = {"frames": "frame_autoencoder", "audio": "audio_autoencoder"}


def renderer_configs(manifest: Manifest) -> dict:
    """{kind: the autoencoder's config dict} for every pretrained autoencoder the manifest lists."""
    return {kind: load_autoencoder(manifest.arrays[role].path, kind)[1]["config"]
            for kind, role in AUTOENCODER_ROLES.items() if role in manifest.arrays}


@torch.no_grad()
def install_renderers(model, manifest: Manifest) -> None:
    """Copy the pretrained autoencoders' weights into ``model.latent_decoder.renderers``."""
    for kind, renderer in model.latent_decoder.renderers.items():
        autoencoder, _ = load_autoencoder(manifest.arrays[AUTOENCODER_ROLES[kind]].path, kind)
        renderer.load_state_dict(autoencoder.state_dict())


def brain_windows(fmri: np.ndarray, targets: np.ndarray, window: int) -> np.ndarray:
    """The ``window`` brain TRs ending at each target: ``(len(targets), window, V)`` float32."""
    offsets = np.arange(1 - window, 1)
    return np.asarray(fmri[(np.asarray(targets)[:, None] + offsets).ravel()], np.float32).reshape(
        len(targets), window, -1)


def decoded_targets(manifest: Manifest, names, stimulus_trs: np.ndarray) -> dict[str, np.ndarray]:
    """The true value of every decoded target at ``stimulus_trs``: {name: (n, *shape) float32}.

    ``text`` is the mean embedding of each TR's annotations ``(n, 1, d)``; a TR without one gets the
    mean of the others, so that it pulls the fit nowhere.
    """
    out = {}
    for name in names:
        values = np.asarray(np.load(manifest.arrays[name].path, mmap_mode="r")[stimulus_trs], np.float32)
        if name == "text":
            mask = np.asarray(np.load(manifest.arrays["text_mask"].path, mmap_mode="r")[stimulus_trs], bool)
            count = mask.sum(axis=1)
            mean = (values * mask[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
            mean[count == 0] = mean[count > 0].mean(axis=0) if (count > 0).any() else 0.0
            values = mean[:, None]
        out[name] = values
    return out


@torch.no_grad()
def fit_latent_decoder(model, manifest: Manifest, blocks=("train", "val"), n_folds: int = 5) -> dict:
    """Fit ``model.latent_decoder`` on the targets of ``blocks``; returns what was fitted (for ``model.pt``)."""
    decoder, split = model.latent_decoder, manifest.split
    targets = np.concatenate([np.asarray(split.targets(b)) for b in blocks if b in split.ranges])
    fmri = np.load(manifest.arrays["fmri"].path, mmap_mode="r")
    rows = np.asarray(fmri[targets], np.float64)
    basis = fix_decoder_basis(decoder, rows, principal_components(rows, decoder.n_components))
    brain = torch.from_numpy(brain_windows(fmri, targets, decoder.window))
    X = decoder.components(brain.to(decoder.basis.device)).cpu().numpy().astype(np.float64)
    delay = -1 - model.decode_index
    stimulus_trs = np.array([split.window(int(t))[1] - 1 - delay for t in targets])
    truth = decoded_targets(manifest, decoder.targets, stimulus_trs)
    Y = np.concatenate([truth[name].reshape(len(targets), -1) for name in decoder.targets], axis=1)
    weight, bias, alphas = ridge_weights(X, Y, targets, split.lag_trs, alphas=ALPHAS, n_folds=n_folds)
    weight, bias = weight.astype(np.float64), bias.astype(np.float64)
    start, rescaled = 0, []
    for name, shape in decoder.targets.items():
        stop = start + int(np.prod(shape))
        if name in RENDERED:
            predicted = X @ weight[start:stop].T + bias[start:stop]
            scale = Y[:, start:stop].std(axis=0) / np.maximum(predicted.std(axis=0), 1e-8)
            weight[start:stop] *= scale[:, None]
            bias[start:stop] = (bias[start:stop] - predicted.mean(axis=0)) * scale + Y[:, start:stop].mean(axis=0)
            rescaled.append(name)
        start = stop
    decoder.weight.copy_(torch.from_numpy(weight).float())
    decoder.bias.copy_(torch.from_numpy(bias).float())
    decoder.fitted.fill_(True)
    log.info("latent decoder: ridge from %d brain TRs x %d components (%.0f%% of the variance) to %s on %d "
             "targets (%s), median alpha %.3g", decoder.window, basis["n_components"], 100 * basis["explained"],
             ", ".join(f"{n} {s}" for n, s in decoder.targets.items()), len(targets), "+".join(blocks),
             float(np.median(alphas)))
    return {"blocks": list(blocks), "n_targets": int(len(targets)), "window_trs": decoder.window,
            "n_components": basis["n_components"], "explained": basis["explained"],
            "median_alpha": float(np.median(alphas)), "rescaled": rescaled}
