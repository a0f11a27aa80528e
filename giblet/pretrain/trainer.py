"""Pretrain a stimulus autoencoder on the whole movie, with the brain model's training engine.

:class:`Pretrainer` is the training engine (:class:`giblet.train.engine.Engine`) with its task: the model is a
:class:`~giblet.autoencoders.frames.FrameAutoencoder` (``kind="frames"``) or a
:class:`~giblet.autoencoders.codes.CodeAutoencoder` (``kind="audio"``), the samples are every
frame (every code chunk) of the movie, the loss is the reconstruction error. Everything else is the
engine's: checkpoint tiers and bitwise resume after a kill, SIGUSR1/TERM/INT saving and exiting 75,
DDP under torchrun, bf16 autocast on GPUs, TensorBoard, early stopping on the held-out TR blocks.

At the end (:meth:`Pretrainer.write_model`) the best weights go to ``autoencoder.pt``
(:mod:`giblet.autoencoders.file`) and every TR's stimulus is encoded into
``latents.npy``: float32 ``(T, S, latent_dim)``, one latent per frame slot of ``frames.npy`` (or per
code chunk of ``audio_codes.npy``), which the dataset stage hands to the brain model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from giblet.files import sha256_file, write_json, write_sidecar
from giblet.autoencoders.codes import (CodeAutoencoder, CodeAutoencoderConfig, chunk_codes, code_autoencoder_loss,
                                           code_counts, rare_code_weights)
from giblet.autoencoders.frames import (FrameAutoencoder, FrameAutoencoderConfig, foreground_weighted_mse,
                                            resize_frames)
from giblet.autoencoders.file import write_autoencoder
from giblet.pretrain import data
from giblet.train import distributed as dist
from giblet.train.engine import SELECTION_KEY, Engine

log = logging.getLogger(__name__)

# The engine's keys a pretraining section does not set: fixed here, or the run keys of ``train``.
FIXED = {"grad_accum": 1, "grad_clip": 1.0, "optimizer": "adamw", "val_every_epochs": 1, "warmup_steps": 20,
         "batch_order": "shuffled", "loss_weights": {}}
RUN_KEYS = ("checkpoint", "device", "hold_on_device", "tensorboard_every_steps", "histogram_every_steps", "bf16")
# Config keys of each kind's model (the rest of its section is how to train it).
MODEL_KEYS = {"frames": ("height", "width", "latent_dim", "channels", "hidden"),
              "audio": ("chunk_frames", "latent_dim", "embed_dim", "hidden")}
BATCH_LATENTS = 256  # rows encoded at once when writing latents.npy


def pretrain_params(section: dict, train: dict) -> dict:
    """The engine's parameters for one ``pretrain.<kind>`` section: its keys, FIXED, and ``train``'s run keys."""
    return {**FIXED, **{k: train[k] for k in RUN_KEYS if k in train}, **section}


class Pretrainer(Engine):
    """One pretraining run into ``out_dir`` (checkpoints/, history.jsonl, tensorboard/, autoencoder.pt, latents.npy).

    ``stimulus``: ``frames.npy`` (kind ``frames``) or ``audio_codes.npy`` (kind ``audio``), the per-TR
    array whose rows get latents; ``movie``: the movie the frames are learned from (``frames`` only;
    the audio autoencoder learns from every chunk of ``stimulus`` itself).
    """

    def __init__(self, kind: str, stimulus: str | Path, out_dir: str | Path, params: dict, tr: float,
                 movie: str | Path | None = None, progress: bool = True):
        if kind not in MODEL_KEYS:
            raise ValueError(f"unknown pretraining kind {kind!r}")
        self.kind, self.stimulus, self.movie, self.tr = kind, Path(stimulus), movie, float(tr)
        self.STAGE = f"pretrain_{kind}"
        super().__init__(stimulus, out_dir, params, progress)

    # -- the task ----------------------------------------------------------------------------------

    def _default_params(self, params: dict) -> dict:
        return dict(params)

    def _build_model(self) -> torch.nn.Module:
        p = self.params
        model_config = {key: p[key] for key in MODEL_KEYS[self.kind]}
        sources = [sha256_file(self.stimulus)] + ([sha256_file(self.movie)] if self.movie else [])
        self.manifest_sha256 = ":".join(sources)  # the data a checkpoint must match
        if self.kind == "frames":
            return FrameAutoencoder(FrameAutoencoderConfig(**model_config))
        codes = np.load(self.stimulus, mmap_mode="r")
        sidecar = json.loads(self.stimulus.with_suffix(".json").read_text())
        codebook = int(sidecar.get("models", {}).get("encodec", {}).get("codebook_size", int(codes.max()) + 1))
        return CodeAutoencoder(CodeAutoencoderConfig(n_q=codes.shape[1], codebook_size=codebook, **model_config))

    def _model_config(self) -> dict:
        return self.model.config.to_dict()

    def _ddp_ignored(self) -> list[str]:
        return []

    def _datasets(self, hold):
        p = self.params
        if self.kind == "frames":
            frames, trs, n_trs = data.movie_frames(self.movie, self.tr, p["rate"], p["height"], p["width"],
                                                   progress=self.progress and self.rank == 0)
            train_set, val_set = data.frame_sets(frames, trs, n_trs)
            log.info("learning frames from %d frames of %s (%.1f per second), %d held out for validation",
                     len(frames), self.movie, p["rate"], len(val_set))
        else:
            train_set, val_set = data.code_chunk_sets(np.load(self.stimulus), p["chunk_frames"])
            chunks = train_set.tensors["chunks"]
            self.code_weights = rare_code_weights(chunks, self.model.config.codebook_size, p["rare_code_power"])
            if self.code_weights is not None:
                self.code_weights = self.code_weights.to(self.device)
            log.info("learning codes from %d TRs of %d chunks of %d code frames, %d TRs held out for validation",
                     len(train_set) + len(val_set), chunks.shape[1], p["chunk_frames"], len(val_set))
        if hold is not None:
            for dataset in (train_set, val_set):
                dataset.tensors = {k: v.to(hold) for k, v in dataset.tensors.items()}
        return train_set, val_set if len(val_set) else None

    def _collate(self, dataset, indices) -> dict:
        return dataset.rows(indices, self.device)

    def _losses(self, batch: dict, model: torch.nn.Module) -> dict:
        if self.kind == "frames":
            frames = resize_frames(batch["frames"], self.params["height"], self.params["width"])
            loss = foreground_weighted_mse(model(frames), frames, self.params["foreground_weight"])
            return {"total": loss, "reconstruction": loss.detach()}
        p = self.params
        objective, cross_entropy = code_autoencoder_loss(model, batch["chunks"], self.code_weights, p["beta"], p["smooth"])
        return {"total": objective, "reconstruction": cross_entropy}

    def _before_save(self) -> None:
        pass

    @torch.no_grad()
    def validate(self) -> dict:
        """The reconstruction loss on the held-out TR blocks (frames: the weighted MSE, and the plain MSE;
        audio: the cross-entropy per code, nats), which selects the weights."""
        self.model.eval()
        order = list(range(self.rank, len(self.val_set), self.world_size))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for start in range(0, len(order), self.params["batch_size"]):
            batch = self._collate(self.val_set, order[start:start + self.params["batch_size"]])
            with self._autocast():
                loss = self._losses(batch, self.model)["reconstruction"].double()
            n = len(next(iter(batch.values())))
            sums[0] += n
            sums[1] += loss * n
            if self.kind == "frames":
                frames = resize_frames(batch["frames"], self.params["height"], self.params["width"])
                sums[2] += ((self.model(frames).float() - frames) ** 2).mean(dim=(1, 2, 3)).sum().double()
        dist.sum_(sums)
        self.model.train()
        metrics = {"val/reconstruction": float(sums[1] / sums[0])}
        if self.kind == "frames":
            metrics["val/mse"] = float(sums[2] / sums[0])
        metrics[SELECTION_KEY] = metrics["val/reconstruction"]
        return metrics

    @torch.no_grad()
    def reconstruct_first_val_sample(self) -> tuple[dict | None, dict | None]:
        if self.kind != "frames":
            return None, None
        self.model.eval()
        frames = resize_frames(self.val_set.rows(range(min(4, len(self.val_set))), self.device)["frames"],
                               self.params["height"], self.params["width"])
        decoded = self.model(frames)
        self.model.train()
        return {"frames": (frames * 255).round().to(torch.uint8)}, {"frames": decoded[None]}

    # -- the outputs -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_trs(self, model: torch.nn.Module) -> np.ndarray:
        """Every TR's stimulus -> float32 latents ``(T, S, latent_dim)``."""
        source = np.load(self.stimulus, mmap_mode="r")
        out = []
        for start in range(0, len(source), BATCH_LATENTS):
            rows = torch.from_numpy(np.array(source[start:start + BATCH_LATENTS])).to(self.device)
            if self.kind == "frames":
                t, f = rows.shape[:2]
                frames = resize_frames(rows.flatten(0, 1), self.params["height"], self.params["width"])
                out.append(model.encode(frames).reshape(t, f, -1).float().cpu().numpy())
            else:
                chunks = chunk_codes(rows, self.params["chunk_frames"])         # (t, S, n_q, L)
                t, s = chunks.shape[:2]
                out.append(model.encode(chunks.flatten(0, 1)).reshape(t, s, -1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def quality(self, model: torch.nn.Module) -> dict:
        """Validation reconstruction against the trivial one: the mean frame (MSE), or each codebook's
        code frequencies (cross-entropy), both from the training samples."""
        model.eval()
        val = self.val_set.rows(range(len(self.val_set)), self.device) if self.val_set is not None else None
        if val is None:
            return {}
        if self.kind == "frames":
            train_frames = self.train_set.tensors["frames"]
            mean = sum(resize_frames(train_frames[i:i + 1024].to(self.device), self.params["height"],
                                     self.params["width"]).sum(0) for i in range(0, len(train_frames), 1024))
            mean = mean / len(train_frames)
            frames = resize_frames(val["frames"], self.params["height"], self.params["width"])
            decoded = torch.cat([model(frames[i:i + BATCH_LATENTS]) for i in range(0, len(frames), BATCH_LATENTS)])
            mse, baseline = float(((decoded - frames) ** 2).mean()), float(((mean - frames) ** 2).mean())
            return {"val_mse": mse, "mean_frame_mse": baseline, "relative_mse": mse / baseline,
                    "n_val_frames": len(frames)}
        chunks = val["chunks"].flatten(0, 1)                                              # (N, n_q, L)
        size = model.config.codebook_size
        train_chunks = self.train_set.tensors["chunks"].flatten(0, 1).to(self.device)
        frequency = code_counts(train_chunks, size).sum(0) + 1.0                          # (n_q, C)
        log_frequency = (frequency / frequency.sum(1, keepdim=True)).log()
        counts = code_counts(chunks, size)
        n_codes = chunks.shape[0] * chunks.shape[1] * chunks.shape[2]
        baseline = float(-(counts * log_frequency).sum() / n_codes)
        log_p = torch.cat([model.chunk_logits(model.encode(chunks[i:i + BATCH_LATENTS]))
                           for i in range(0, len(chunks), BATCH_LATENTS)])
        cross_entropy = float(-(counts * log_p).sum() / n_codes)
        return {"val_cross_entropy": cross_entropy, "frequency_cross_entropy": baseline,
                "relative_cross_entropy": cross_entropy / baseline, "n_val_chunks": len(chunks)}

    def write_model(self) -> Path:
        """``autoencoder.pt`` (the best weights) and ``latents.npy`` with its sidecar."""
        weights, chosen = self._best_weights()
        self.model.load_state_dict(weights)
        self.model.eval()
        quality = self.quality(self.model)
        latents = self.encode_trs(self.model)
        path = write_autoencoder(self.out / "autoencoder.pt", self.kind, self.model, weights, quality=quality,
                                 weights=chosen, params=self.params, config_hash=self.config_hash,
                                 giblet_version=__import__("giblet").__version__)
        latents_path = self.out / "latents.npy"
        tmp = latents_path.with_name(".latents.tmp.npy")
        np.save(tmp, latents)
        tmp.replace(latents_path)
        write_sidecar(latents_path, latents, {"kind": self.kind, **{k: self.params[k] for k in MODEL_KEYS[self.kind]}},
                      {"stimulus": self.stimulus, **({"movie": self.movie} if self.movie else {})},
                      extra={"quality": quality, "autoencoder": str(path)})
        self._write_history(self.history)
        write_json(self.out / "pretrain.json", {"kind": self.kind, "steps": self.step, "epochs": self.epoch,
                                                "weights": chosen, "quality": quality, "config_hash": self.config_hash})
        log.info("wrote %s and %s %s: %s", path, latents_path, latents.shape,
                 " ".join(f"{k} {v:.4g}" for k, v in quality.items() if isinstance(v, float)))
        return path


def pretrain(kind: str, stimulus: str | Path, out_dir: str | Path, params: dict, tr: float,
             movie: str | Path | None = None, progress: bool = True, fault_at_step: int | None = None) -> int:
    """Pretrain (or resume) into ``out_dir``. Returns 0 when finished, 75 after a signal."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Pretrainer(kind, stimulus, out_dir, params, tr, movie, progress).run(fault_at_step)
