"""Training the brain model: :class:`Trainer`, the training engine's task for it (:mod:`giblet.train.engine`).

The model is :class:`~giblet.model.BrainAutoencoder`, built from the dataset manifest; a sample is a
window of stimulus TRs and the fMRI at its end (:class:`~giblet.data.samples.WindowDataset`); the
selection score is 1 - the validation block's mean per-voxel r on the reliable voxels. After
training, ``model.pt`` gets the best weights, the fMRI layer refitted by ridge and, with pretrained
latents, the latent decoder fitted by ridge (:mod:`giblet.train.latent_decoder`).

``python -m giblet.train.loop MANIFEST OUT_DIR [--params JSON]`` is the entry point torchrun launches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from giblet.data.batch import collate
from giblet.data.manifest import Manifest, read_manifest
from giblet.data.samples import WindowDataset
from giblet.files import sha256_file, write_json
from giblet.model import BrainAutoencoder, losses
from giblet.model.model_file import write_model_file
from giblet.train import distributed as dist
from giblet.train.bottleneck import fix_principal_components
from giblet.train.engine import EXIT_RESUME, SELECTION_KEY, TIMING_KEYS, Engine, config_hash
from giblet.train.latent_decoder import fit_latent_decoder, install_renderers, renderer_configs
from giblet.train.readout import fit_ridge_readout

log = logging.getLogger(__name__)

# Voxels whose training-block ISC ceiling (the manifest's ceiling.npz ``group``) is at least this
# are the reliable ones the selection averages over (giblet.evaluate.metrics' threshold). The
# selection (SELECTION_KEY) is 1 - the validation block's mean per-voxel r over time on them (what
# the evaluation scores), not ``val/total``, whose decoder terms can fall while the brain
# prediction gets worse.
RELIABLE_CEILING = 0.3


def reliable_voxel_mask(manifest: Manifest) -> torch.Tensor:
    """(V,) bool: voxels with a training-block ISC ceiling >= RELIABLE_CEILING; every voxel when the
    manifest has no ceiling or none passes."""
    n_voxels = int(manifest.n_voxels)
    if "ceiling" in manifest.arrays:
        with np.load(manifest.arrays["ceiling"].path) as ceiling:
            reliable = np.nan_to_num(np.asarray(ceiling["group"], np.float64)) >= RELIABLE_CEILING
        if reliable.shape == (n_voxels,) and reliable.any():
            return torch.from_numpy(reliable)
    return torch.ones(n_voxels, dtype=torch.bool)


def default_params(params: dict) -> dict:
    """``params`` (a partial ``train`` config section) validated, with the schema's defaults filled in."""
    from giblet.config import load_config

    return load_config(None, [f"train={json.dumps(params)}"])["train"]


class Trainer(Engine):
    """One brain-model training run into ``out_dir`` (checkpoints/, history.jsonl, tensorboard/, model.pt)."""

    STAGE = "train"

    def _default_params(self, params: dict) -> dict:
        return default_params(params)

    def _build_model(self) -> torch.nn.Module:
        """The brain autoencoder from the manifest, with its fixed principal-component bases."""
        p = self.params
        self.manifest = read_manifest(self.manifest_path)
        self.manifest_sha256 = sha256_file(self.manifest_path)
        model = BrainAutoencoder.from_manifest(self.manifest.to_dict(), p["preset"], dropout=p["dropout"],
                                               gradient_checkpointing=p["gradient_checkpointing"],
                                               renderers=renderer_configs(self.manifest))
        if model.latent_decoding:
            install_renderers(model, self.manifest)
        fmri = np.load(self.manifest.arrays["fmri"].path, mmap_mode="r")
        train_targets = list(self.manifest.split.targets("train"))
        pca = fix_principal_components(model, np.asarray(fmri[train_targets]))
        if pca["n_components"]:
            log.info("brain bottleneck: the training block's first %d principal components (%.0f%% of its "
                     "variance), fixed", pca["n_components"], 100 * pca["explained"])
        return model

    def _model_config(self) -> dict:
        return self.model.config()

    def _ddp_ignored(self) -> list[str]:
        return [n for n in ("fmri_basis", "fmri_mean") if hasattr(self.model, n)]

    def _datasets(self, hold):
        train_set = WindowDataset(self.manifest, "train", device=hold)
        val_set = WindowDataset(self.manifest, "val", device=hold) if "val" in self.manifest.split.ranges else None
        self.reliable = reliable_voxel_mask(self.manifest).to(self.device)
        return train_set, val_set

    def _collate(self, dataset, indices) -> dict:
        return collate(dataset, indices, self.device)

    def _losses(self, batch: dict, model: torch.nn.Module) -> dict:
        return losses(model(batch), batch, self.params["loss_weights"], self.model.decode_index)

    def _before_save(self) -> None:
        self.model.compose_fmri_layer()

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean losses and per-voxel Pearson r over the validation block, summed across ranks."""
        self.model.compose_fmri_layer()
        self.model.eval()
        order = list(range(self.rank, len(self.val_set), self.world_size))  # no padding: exact means
        n_voxels = self.manifest.n_voxels
        totals, stats = None, torch.zeros(6, n_voxels, dtype=torch.float64, device=self.device)
        for start in range(0, len(order), self.params["batch_size"]):
            indices = order[start:start + self.params["batch_size"]]
            batch = collate(self.val_set, indices, self.device)
            with self._autocast():
                parts = losses(self.model(batch), batch, self.params["loss_weights"], self.model.decode_index)
            values = torch.stack([parts[k].float() for k in sorted(parts)]).double() * len(indices)
            totals = values if totals is None else totals + values
            x, y = self.model.encode(batch).double(), batch["fmri"].double()
            stats += torch.stack([torch.full_like(x[0], len(x)), x.sum(0), y.sum(0), (x * x).sum(0),
                                  (y * y).sum(0), (x * y).sum(0)])
        dist.sum_(stats)
        dist.sum_(totals)
        n, sx, sy, sxx, syy, sxy = stats
        r = (n * sxy - sx * sy) / torch.sqrt(((n * sxx - sx**2) * (n * syy - sy**2)).clamp_min(1e-12))
        self.model.train()
        metrics = {f"val/{k}": float(v) for k, v in zip(sorted(parts), totals / n[0])}
        metrics["val/fmri_r_mean"] = float(r.mean())
        metrics["val/fmri_r_reliable"] = float(r[self.reliable].mean())
        metrics[SELECTION_KEY] = 1.0 - metrics["val/fmri_r_reliable"]
        return metrics

    @torch.no_grad()
    def reconstruct_first_val_sample(self) -> tuple[dict, dict]:
        """The first validation sample and the stimulus decoded from its true brain (for monitoring)."""
        if self.model.latent_decoding:  # its decoder is fitted after training
            return None, None
        self.model.eval()
        batch = collate(self.val_set, [0], self.device)
        decoded = self.model.decode(batch["fmri"])
        self.model.train()
        return {k: v[0] for k, v in self.model.decoded_stimulus(batch).items()}, decoded

    def write_model(self) -> Path:
        """``model.pt``: the best weights plus everything needed to use them without the training state."""
        path = self.out / "model.pt"
        weights, chosen = self._best_weights()
        if self.params["readout"] in ("banded", "ridge"):
            self.model.load_state_dict(weights)
            blocks = {"train": self.train_set, **({"val": self.val_set} if self.val_set is not None else {})}
            chosen["readout"] = fit_ridge_readout(self.model, blocks, collate, self.device, self.model.lag,
                                                  self.params["batch_size"], banded=self.params["readout"] == "banded")
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if self.model.latent_decoding:
            self.model.load_state_dict(weights)
            chosen["decoder"] = fit_latent_decoder(self.model, self.manifest)
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        fmri_info = self.manifest.arrays.get("fmri_info")
        write_model_file(
            path, self.model.config(), weights,
            weights=chosen, manifest=str(self.manifest_path), manifest_sha256=self.manifest_sha256,
            mask=self.manifest.arrays["mask"].to_dict(), affine=self.manifest.affine,
            fmri_info=fmri_info.to_dict() if fmri_info is not None else None, train_params=self.params,
            config_hash=self.config_hash, steps=self.step, epochs=self.epoch,
            best_val_loss=self.early["best"], giblet_version=__import__("giblet").__version__)
        self._write_history(self.history)
        write_json(self.out / "train.json", {"steps": self.step, "epochs": self.epoch, "model_weights": chosen,
                                             "best_val_loss": self.early["best"], "config_hash": self.config_hash})
        log.info("wrote %s (%s weights: epoch %d, step %d)", path, chosen["weights"], chosen["epoch"], chosen["step"])
        return path


def train(manifest: str | Path, out_dir: str | Path, params: dict, progress: bool = True,
          fault_at_step: int | None = None) -> int:
    """Train (or resume) into ``out_dir``. Returns 0 when finished, EXIT_RESUME after a signal."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(manifest, out_dir, params, progress).run(fault_at_step)


__all__ = ["EXIT_RESUME", "SELECTION_KEY", "TIMING_KEYS", "Trainer", "config_hash", "train"]


if __name__ == "__main__":  # what torchrun starts (giblet.train.launch)
    import argparse
    import sys

    from giblet.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m giblet.train.loop", description=__doc__)
    parser.add_argument("manifest")
    parser.add_argument("out_dir")
    parser.add_argument("--params", default="{}",
                        help="training parameters as JSON: any keys of the config's train section (config/README.md)")
    parser.add_argument("--fault-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests only
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    setup_logging()
    sys.exit(train(args.manifest, args.out_dir, json.loads(args.params), progress=not args.quiet,
                   fault_at_step=args.fault_at_step))
