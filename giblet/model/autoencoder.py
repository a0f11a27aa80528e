"""The brain autoencoder: stimulus window -> fMRI layer (V voxels) -> reconstructed stimulus.

With pretrained latents (the default pipeline) the encoders read the frame and code autoencoders'
latents and the decoders are :class:`~giblet.model.latent_decoder.LatentDecoder` (brain window ->
latents by ridge, drawn by the frozen autoencoders); without them the encoders read pixels and codes
and the decoders are heads learned from the brain (:mod:`giblet.model.decoders`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from giblet.model.config import BrainAutoencoderConfig
from giblet.model.decoders import Bottleneck, CodeHead, FrameHead, TextHead
from giblet.model.latent_decoder import LatentDecoder
from giblet.model.encoders import (CausalTemporal, CodeEncoder, FrameEncoder, FrameFeatureEncoder, HemodynamicFilters,
                                   ModalityFeatures, TextEncoder)


def _checkpointed(module: nn.Module, enabled: bool, *args):
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class BrainAutoencoder(nn.Module):
    """Encoders per modality -> causal fusion over ``lag`` TRs -> linear to V voxels (the brain) -> decoders.

    ``config`` (kept as ``cfg``; :class:`~giblet.model.config.BrainAutoencoderConfig` documents every
    field): the manifest's modalities (any subset of frames/frame_features/audio/text, or pretrained
    latents) and the architecture. ``frame_features`` (frozen CLIP image embeddings of the frames) is
    read and decoded like text: an MLP per frame, and a head that predicts the embeddings, scored by cosine.
    ``fusion``: ``"concat"`` puts the modalities' normalized per-TR features side by side, ``"sum"`` adds
    them. ``temporal``: ``"hrf"`` filters every feature over the window with ``hrf_filters`` learned,
    HRF-initialised filters (:class:`HemodynamicFilters`: linear in time, as BOLD is), ``"conv"`` runs the
    dilated causal conv stack (:class:`CausalTemporal`). ``tr`` (s) places the initial HRF.
    """

    def __init__(self, config: BrainAutoencoderConfig):
        super().__init__()
        c = self.cfg = config
        modalities = c.modalities
        self.modalities, self.n_voxels, self.lag = modalities, c.n_voxels, c.lag_trs
        # The decoders reconstruct the stimulus that drove the brain most: ``decode_delay_trs`` before
        # the window's last TR (the hemodynamic peak), not the last TR itself, which the brain at the
        # target has barely begun to respond to.
        self.decode_index = -1 - c.decode_delay_trs
        self.gradient_checkpointing = c.gradient_checkpointing
        self.encoders, self.heads = nn.ModuleDict(), nn.ModuleDict()
        # With pretrained latents (frame_latents, audio_latents) the encoders read them instead of the
        # pixels and codes, and the decoders are the closed-form LatentDecoder, not heads learned from
        # the brain: the stimulus spaces come from the whole movie, the brain fits only the maps.
        self.latent_decoding = any(k in modalities for k in ("frame_latents", "audio_latents"))
        for name in ("frame_latents", "audio_latents"):
            if name in modalities:
                self.encoders[name] = FrameFeatureEncoder(modalities[name]["dim"], c.dim)
        if "frames" in modalities and "frame_latents" not in modalities:
            m = modalities["frames"]
            self.encoders["frames"] = FrameEncoder(c.frame_channels, c.dim, c.frame_stem)
            self.heads["frames"] = FrameHead(c.hidden, m["frames_per_tr"], m["height"], m["width"],
                                             c.frame_head_channels, c.frame_head_up)
        if "frame_features" in modalities:
            m = modalities["frame_features"]
            self.encoders["frame_features"] = FrameFeatureEncoder(m["dim"], c.dim)
            self.heads["frame_features"] = TextHead(c.hidden, m["frames_per_tr"], m["dim"])
        if "audio" in modalities and "audio_latents" not in modalities:
            m = modalities["audio"]
            self.encoders["audio"] = CodeEncoder(m["n_q"], m["codebook_size"], c.dim, depth=c.code_depth)
            self.heads["audio"] = CodeHead(c.hidden, m["n_q"], m["frames_per_tr"], m["codebook_size"], c.code_rank)
        if "text" in modalities:
            m = modalities["text"]
            self.encoders["text"] = TextEncoder(m["dim"], c.dim)
            self.heads["text"] = TextHead(c.hidden, m["k"], m["dim"])
        self.decode_window = c.decode_window_trs if self.latent_decoding else 1
        if self.latent_decoding:
            self.heads = nn.ModuleDict()
            targets = {name: (modalities[name]["slots"], modalities[name]["dim"])
                       for name in ("frame_latents", "audio_latents") if name in modalities}
            # Text: the mean embedding of the TR's annotations (what identification scores), drawn in every slot.
            targets.update({name: (slots, modalities[name]["dim"]) for name, slots in
                            (("text", 1), ("frame_features", modalities.get("frame_features", {}).get("frames_per_tr")))
                            if name in modalities})
            frames = modalities.get("frames")
            self.latent_decoder = LatentDecoder(
                self.n_voxels, self.decode_window, c.decoder_components, targets, c.renderers,
                frames_shape=(frames["height"], frames["width"]) if frames else None,
                code_frames=modalities["audio"]["frames_per_tr"] if "audio" in modalities else None,
                text_slots=modalities["text"]["k"] if "text" in modalities else None)
        # Each modality's features are standardized over the batch before they are summed: a stimulus
        # embedding is mostly a constant (the background, the average code) with a small per-TR part,
        # and only the per-TR part predicts the brain (without this the encoders' output barely varied
        # across TRs and the fMRI layer learned the mean: validation r = 0.00).
        self.modality_norms = nn.ModuleDict({name: nn.BatchNorm1d(c.dim) for name in self.encoders})
        self.modality_features = nn.ModuleDict({name: ModalityFeatures(c.dim, c.modality_hidden, c.interactions)
                                                for name in self.encoders})
        per_modality = next(iter(self.modality_features.values())).out_dim
        # concat keeps each modality's features apart: the brain's feature space is their union
        # (a language voxel's conjunctions must not share dimensions with a visual voxel's products).
        self.fusion = c.fusion
        width = per_modality * (len(self.encoders) if c.fusion == "concat" else 1)
        # Products of standardized features are not standardized: one more normalization puts every
        # feature the hemodynamic filters see on the same scale.
        self.fused_norm = nn.BatchNorm1d(width) if c.interactions else nn.Identity()
        if c.temporal == "conv":
            self.temporal = CausalTemporal(width, self.lag, c.temporal_depth, c.kernel_size, c.dropout,
                                           c.gradient_checkpointing)
            self.n_features = width
        else:
            self.temporal = HemodynamicFilters(width, self.lag, c.hrf_filters, c.tr)
            self.n_features = width * c.hrf_filters
        self.drop = nn.Dropout(c.dropout)
        self.to_fmri = nn.Linear(self.n_features, self.n_voxels)  # the fMRI layer: the prediction of the brain
        # Start from predicting the mean (0 for z-scored data): a random init adds noise of variance
        # ~1/3 per voxel that the first epochs would only spend unlearning.
        nn.init.zeros_(self.to_fmri.weight)
        nn.init.zeros_(self.to_fmri.bias)
        # fmri_rank = K > 0: in training the brain is predicted through its K leading principal
        # components (``fmri_basis``, set from the training block and fixed): the encoders learn from
        # the brain's shared, reliable directions instead of 30k-70k noisy voxels each fitted from a
        # few thousand samples. ``to_fmri`` is then derived (:meth:`compose_fmri_layer`), not trained.
        self.fmri_rank = c.fmri_rank
        if self.fmri_rank:
            self.to_components = nn.Linear(self.n_features, self.fmri_rank)
            nn.init.zeros_(self.to_components.weight)
            nn.init.zeros_(self.to_components.bias)
            self.register_buffer("fmri_basis", torch.zeros(self.fmri_rank, self.n_voxels))
            self.register_buffer("fmri_mean", torch.zeros(self.n_voxels))
            self.to_fmri.requires_grad_(False)
        self.bottleneck = None if self.latent_decoding else Bottleneck(self.n_voxels, c.hidden, c.dropout)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: dict, preset: str = "tiny", gradient_checkpointing: bool = False,
                      dropout: float | None = None, **overrides) -> "BrainAutoencoder":
        """The model for ``manifest``'s data (a :class:`~giblet.data.manifest.Manifest`'s dict) with preset
        ``preset`` (:meth:`BrainAutoencoderConfig.from_manifest`); ``dropout`` None keeps the preset's. With
        pretrained latents, ``renderers`` ({kind: autoencoder config}) come in as ``overrides``."""
        if dropout is not None:
            overrides["dropout"] = dropout
        return cls(BrainAutoencoderConfig.from_manifest(manifest, preset, gradient_checkpointing=gradient_checkpointing,
                                                        **overrides))

    @classmethod
    def from_config(cls, config: dict | BrainAutoencoderConfig) -> "BrainAutoencoder":
        """Rebuild from :meth:`config` (e.g. as stored in model.pt next to the state dict) or from the dataclass."""
        return cls(config if isinstance(config, BrainAutoencoderConfig) else BrainAutoencoderConfig.from_dict(config))

    def config(self) -> dict:
        """Everything needed to rebuild this model (JSON-serializable): :meth:`BrainAutoencoderConfig.to_dict`."""
        return self.cfg.to_dict()

    # -- the two halves -----------------------------------------------------------------------------------
    def encode(self, batch: dict) -> torch.Tensor:
        """Stimulus window (every enabled modality, ``lag`` TRs) -> predicted fMRI ``(B, V)``."""
        return self.to_fmri(self.drop(self.features(batch)))

    def feature_groups(self) -> np.ndarray | None:
        """The modality (index in ``encoders``) of each of :meth:`features`' columns, ``(n_features,)`` int;
        None where the columns mix modalities (``fusion: sum`` or ``temporal: conv``)."""
        if self.fusion != "concat" or not isinstance(self.temporal, HemodynamicFilters):
            return None
        per_modality = next(iter(self.modality_features.values())).out_dim
        # HemodynamicFilters keeps each per-TR feature's filters side by side.
        return np.repeat(np.arange(len(self.encoders)), per_modality * self.temporal.n_filters)

    def features(self, batch: dict) -> torch.Tensor:
        """Stimulus window -> the shared features the fMRI layer reads, ``(B, n_features)``.

        With ``batch["stimulus_trs"]`` (B, lag) int (the movie TR of every window slot), each distinct
        TR is encoded once: windows of neighbouring targets share all but one TR, so a batch of
        consecutive targets costs ~1/lag of the encoder work.
        """
        first = inverse = None
        if "stimulus_trs" in batch:
            _, inverse = torch.unique(batch["stimulus_trs"].reshape(-1), return_inverse=True)
            # One slot per distinct TR (any of its slots: they hold the same stimulus).
            first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long, device=inverse.device)
            first.scatter_(0, inverse, torch.arange(len(inverse), device=inverse.device))
        parts = []
        for name, encoder in self.encoders.items():  # each appends (rows, dim)
            keys = {"frames": ("frames",), "frame_features": ("frame_features",), "audio": ("codes",),
                    "frame_latents": ("frame_latents",), "audio_latents": ("audio_latents",)}.get(name, ("text", "text_mask"))
            b, lag = batch[keys[0]].shape[:2]
            inputs = [batch[k].reshape(b * lag, *batch[k].shape[2:]) for k in keys]
            if first is not None:
                inputs = [x[first] for x in inputs]
            parts.append(_checkpointed(encoder, self.gradient_checkpointing, *inputs))
        if lag > self.lag:
            raise ValueError(f"window of {lag} TRs is longer than the model's lag_trs={self.lag}")
        normed = [self.modality_features[name](self.modality_norms[name](part)) for name, part in zip(self.encoders, parts)]
        per_tr = self.fused_norm(torch.cat(normed, dim=1) if self.fusion == "concat" else sum(normed))
        if inverse is not None:
            per_tr = per_tr[inverse]
        return self.temporal(per_tr.reshape(b, lag, -1))  # (B, lag, width) -> (B, n_features)

    def decoded_stimulus(self, batch: dict) -> dict:
        """The true stimulus the decoders reconstruct: each window's TR at ``decode_index``."""
        return {k: batch[k][:, self.decode_index] for k in ("frames", "frame_features", "codes", "text", "text_mask")
                if k in batch}

    def decode(self, fmri: torch.Tensor) -> dict:
        """Brain -> the stimulus at the window's ``decode_index`` (see :meth:`decoded_stimulus`): ``frames`` (B, F, H, W, 3)
        in [0, 1], ``frame_features`` (B, F, d), ``code_logits`` (B, n_q, Fa, codebook_size), ``text`` (B, k, d)
        (enabled modalities only).

        ``fmri``: the brain at the target ``(B, V)``, or with latent decoding the window of
        ``decode_window`` TRs ending at the target ``(B, decode_window, V)`` (a ``(B, V)`` is a window of 1).
        """
        if self.latent_decoding:
            window = fmri if fmri.dim() == 3 else fmri.unsqueeze(1)
            if window.shape[1] != self.decode_window:
                raise ValueError(f"the decoder reads {self.decode_window} brain TRs, got {window.shape[1]}")
            return self.latent_decoder(window)
        h = self.bottleneck(fmri)
        out = {}
        if "frames" in self.heads:
            out["frames"] = self.heads["frames"](h)
        if "frame_features" in self.heads:
            out["frame_features"] = self.heads["frame_features"](h)
        if "audio" in self.heads:
            out["code_logits"] = self.heads["audio"](h)
        if "text" in self.heads:
            out["text"] = self.heads["text"](h)
        return out

    def decoder_input(self, batch: dict) -> torch.Tensor:
        """What :meth:`decode` reads from a batch: ``fmri_window`` with latent decoding, else ``fmri``."""
        return batch["fmri_window"] if self.latent_decoding else batch["fmri"]

    @torch.no_grad()
    def compose_fmri_layer(self) -> None:
        """With ``fmri_rank``: write ``to_fmri`` as the product of ``to_components`` and the fixed basis."""
        if self.fmri_rank:
            basis = self.fmri_basis.t()                                            # (V, K)
            self.to_fmri.weight.copy_(basis @ self.to_components.weight)
            self.to_fmri.bias.copy_(self.fmri_mean + basis @ self.to_components.bias)

    def forward(self, batch: dict) -> dict:
        """``{"fmri": encode(batch), **decode(batch["fmri"])}``: the decoders read the TRUE brain.

        In training with ``fmri_rank`` the fMRI comes through the principal components (see __init__).
        """
        if self.fmri_rank and self.training:
            fmri = self.fmri_mean + self.to_components(self.drop(self.features(batch))) @ self.fmri_basis
        else:
            fmri = self.encode(batch)
        out = {"fmri": fmri}
        if self.latent_decoding:  # fitted in closed form after training: no decoder loss
            if "fmri_window" in batch and bool(self.latent_decoder.fitted):
                out.update(self.decode(batch["fmri_window"]))
        elif "fmri" in batch:
            out.update(self.decode(batch["fmri"]))
        return out

    def lesion(self, fmri: torch.Tensor, voxel_mask: torch.Tensor) -> dict:
        """Decode with the voxels where ``voxel_mask`` (V,) or (B, V) is True set to zero (in every TR of a window)."""
        mask = voxel_mask.to(device=fmri.device, dtype=torch.bool)
        if fmri.dim() == 3 and mask.dim() == 2:
            mask = mask[:, None]
        return self.decode(fmri.masked_fill(mask, 0.0))

    def n_parameters(self, exclude_voxel_layers: bool = False) -> int:
        """Parameter count, optionally without the two V-sized layers (fMRI layer and bottleneck linear)."""
        voxel_layers = [self.to_fmri] + ([self.bottleneck.linear] if self.bottleneck is not None else [])
        skip = {id(p) for layer in voxel_layers for p in layer.parameters()}
        return sum(p.numel() for p in self.parameters() if not (exclude_voxel_layers and id(p) in skip))


__all__ = ["BrainAutoencoder"]
