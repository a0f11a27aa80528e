"""The brain model's configuration: :class:`BrainAutoencoderConfig`, everything that builds a
:class:`~giblet.model.BrainAutoencoder`, and the size presets (:data:`PRESETS` of :class:`ModelSize`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from giblet.timing import decode_delay_trs, decode_window_trs

MODALITIES = ("frames", "frame_features", "audio", "text", "frame_latents", "audio_latents")
# Scalar fields are cast to their annotated type: a manifest's numpy integers or a YAML ``0`` for a
# dropout would otherwise reach model.pt (not JSON-serializable) or the checkpoint hash (0 != 0.0).
_CASTS = {"int": int, "float": float, "bool": bool}


@dataclass(frozen=True, kw_only=True)
class ModelSize:
    """The architecture fields of :class:`BrainAutoencoderConfig` a preset sets (meanings and units there).
    The defaults are those of the model before a field existed, so older model.pt files rebuild."""

    dim: int
    frame_channels: tuple[int, ...]
    frame_stem: int
    code_depth: int
    temporal_depth: int
    kernel_size: int
    hidden: int
    frame_head_channels: int
    frame_head_up: int
    code_rank: int
    dropout: float
    fusion: str = "sum"
    temporal: str = "conv"
    hrf_filters: int = 2
    modality_hidden: int = 0
    interactions: int = 0
    fmri_rank: int = 0


# ``tiny`` trains on CPU in CI (~1 M parameters excluding the V-sized layers).
# Every preset concatenates the modalities' features, gives each modality a residual MLP
# (``modality_hidden``) and the pairwise products of an ``interactions``-dimensional projection, filters
# every feature with learned hemodynamic filters, and trains through the brain's ``fmri_rank``
# leading principal components (see BrainAutoencoder). Measured for ``tiny`` on the Sherlock-sized
# benchmark's validation block (seed 0, 4 mm): fraction of the ceiling 0.40 (sum + conv stack, dim 32)
# -> 0.54 (concat + HRF filters) -> 0.59 (+ MLP, interactions, principal components). ``base`` and
# ``large`` scale the same design; they have not been measured here (no GPU).
PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(dim=64, frame_channels=(8, 16, 32), frame_stem=4, code_depth=1, temporal_depth=2, kernel_size=3,
                      hidden=64, frame_head_channels=16, frame_head_up=3, code_rank=8, dropout=0.1, fusion="concat",
                      temporal="hrf", hrf_filters=2, modality_hidden=128, interactions=8, fmri_rank=64),
    "base": ModelSize(dim=256, frame_channels=(32, 64, 128, 256), frame_stem=2, code_depth=2, temporal_depth=4,
                      kernel_size=3, hidden=512, frame_head_channels=128, frame_head_up=3, code_rank=32, dropout=0.1,
                      fusion="concat", temporal="hrf", hrf_filters=2, modality_hidden=512, interactions=16,
                      fmri_rank=256),
    "large": ModelSize(dim=768, frame_channels=(64, 128, 256, 512, 768), frame_stem=2, code_depth=3, temporal_depth=6,
                       kernel_size=3, hidden=1024, frame_head_channels=256, frame_head_up=4, code_rank=64, dropout=0.1,
                       fusion="concat", temporal="hrf", hrf_filters=2, modality_hidden=1024, interactions=24,
                       fmri_rank=512),
}


@dataclass(frozen=True, kw_only=True)
class BrainAutoencoderConfig(ModelSize):
    """Everything that builds a :class:`~giblet.model.BrainAutoencoder` (stored in model.pt as
    :meth:`to_dict`, the model's ``config()``).

    The Parameters come from the data (the manifest, see :meth:`from_manifest`); the Other Parameters
    are the architecture: a preset's :class:`ModelSize` (:meth:`from_preset`), the decoder's width and
    the run's options. The defaults are those of the keyword arguments the model used to take, so that
    older model.pt files, written before a field existed, rebuild the model they describe.

    Parameters
    ----------
    modalities : dict[str, dict]
        The manifest's modalities, a non-empty subset of :data:`MODALITIES`, each with its per-TR shape:
        ``frames`` {frames_per_tr, height, width (pixels)}; ``frame_features`` {frames_per_tr, dim: CLIP
        image embedding size}; ``audio`` {n_q: codebooks, frames_per_tr: code frames, codebook_size};
        ``text`` {k: annotation slots, dim: CLIP text embedding size}; ``frame_latents`` and
        ``audio_latents`` {slots, dim}: the pretrained autoencoders' latents (these switch the decoders to
        the closed-form latent decoder).
    n_voxels : int
        V, the voxels of the brain: the width of the fMRI layer.
    lag_trs : int
        The stimulus window in TRs; its last TR is the target's.
    tr : float, default 1.5
        Repetition time in seconds; places the hemodynamic filters' initial HRF.
    decode_delay_trs : int, default 0
        How many TRs before the window's last TR the decoded stimulus lies (the hemodynamic peak), in
        ``[0, lag_trs)``; :meth:`from_manifest` takes :func:`giblet.timing.decode_delay_trs`.
    decode_window_trs : int, default 1
        Brain TRs, ending at the target, that the latent decoder reads (used only with latents);
        :meth:`from_manifest` takes :func:`giblet.timing.decode_window_trs`.
    renderers : dict[str, dict], default {}
        ``{"frames" | "audio": the pretrained autoencoder's config dict}``: the frozen decoders that draw
        decoded latents.

    Other Parameters
    ----------------
    preset : str, default "tiny"
        The name of the :data:`PRESETS` entry the architecture started from (a record; the fields count).
    dim : int
        Each modality encoder's per-TR embedding size.
    frame_channels : tuple[int, ...]
        Output channels of the frame encoder's convolutions, one per stride-2 stage.
    frame_stem : int
        Stride (pixels) of the frame encoder's first convolution.
    code_depth : int
        Residual convolutions over the code frames in the audio encoder.
    temporal_depth : int
        Causal conv blocks of the ``"conv"`` temporal stack (more are added until it covers the window).
    kernel_size : int
        Kernel size (TRs) of the ``"conv"`` temporal stack.
    hidden : int
        Width of the decoders: the bottleneck from the V voxels and the heads' input.
    frame_head_channels : int
        Channels of the frame head's coarse grid, halved by every upsampling.
    frame_head_up : int
        Stride-2 upsamplings in the frame head (the grid grows ``2 ** frame_head_up`` times).
    code_rank : int
        Rank of the code head's factorized logits.
    dropout : float
        Dropout probability (features before the fMRI layer, the bottleneck, the conv stack).
    fusion : {"sum", "concat"}, default "sum"
        ``"concat"`` puts the modalities' normalized per-TR features side by side, ``"sum"`` adds them.
    temporal : {"conv", "hrf"}, default "conv"
        The fusion over the window: ``"hrf"`` learned hemodynamic filters per feature, ``"conv"`` a
        dilated causal conv stack.
    hrf_filters : int, default 2
        Learned filters per feature with ``temporal="hrf"``.
    modality_hidden : int, default 0
        Hidden width of each modality's residual MLP (0: none).
    interactions : int, default 0
        Size k of the projection whose ``k (k + 1) / 2`` pairwise products are appended to each modality's
        features (0: none).
    fmri_rank : int, default 0
        K: training predicts the brain through the training block's K leading principal components
        (0: the voxels directly).
    decoder_components : int, default 256
        Brain principal components per TR that the latent decoder reads.
    gradient_checkpointing : bool, default False
        Recompute the encoders' activations in the backward pass (less memory, more compute).
    """

    modalities: dict[str, dict]
    n_voxels: int
    lag_trs: int
    tr: float = 1.5
    decode_delay_trs: int = 0
    decode_window_trs: int = 1
    renderers: dict[str, dict] = field(default_factory=dict)

    preset: str = "tiny"
    decoder_components: int = 256
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for f in fields(self):
            if f.type in _CASTS:
                object.__setattr__(self, f.name, _CASTS[f.type](getattr(self, f.name)))
        # Copies: the caller's (the manifest's) dicts must not change the model's record, nor the reverse.
        object.__setattr__(self, "modalities", {k: dict(v) for k, v in self.modalities.items()})
        object.__setattr__(self, "renderers", {k: dict(v) for k, v in (self.renderers or {}).items()})
        object.__setattr__(self, "frame_channels", tuple(int(c) for c in self.frame_channels))
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError("modalities must be a non-empty subset of frames/frame_features/audio/text/"
                             f"frame_latents/audio_latents, got {sorted(self.modalities)}")
        if not 0 <= self.decode_delay_trs < self.lag_trs:
            raise ValueError(f"decode_delay_trs={self.decode_delay_trs} must be in [0, lag_trs={self.lag_trs})")
        if self.fusion not in ("sum", "concat"):
            raise ValueError(f"fusion must be 'sum' or 'concat', not {self.fusion!r}")
        if self.temporal not in ("conv", "hrf"):
            raise ValueError(f"temporal must be 'conv' or 'hrf', not {self.temporal!r}")

    @classmethod
    def from_dict(cls, config: dict) -> BrainAutoencoderConfig:
        """From :meth:`to_dict` (model.pt's ``model_config``); a key that is no field raises ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown brain model config key(s) {unknown}; the fields are {sorted(known)}")
        return cls(**config)

    @classmethod
    def from_preset(cls, name: str, **values: object) -> BrainAutoencoderConfig:
        """Preset ``name``'s architecture (:data:`PRESETS`), with ``values`` (the data fields, overrides) on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset '{name}' (have {sorted(PRESETS)})")
        return cls.from_dict({**asdict(PRESETS[name]), "preset": name, **values})

    @classmethod
    def from_manifest(cls, manifest: dict, preset: str = "tiny", **values: object) -> BrainAutoencoderConfig:
        """The config for ``manifest``'s data (a :class:`~giblet.data.manifest.Manifest`'s dict) with preset
        ``preset``: the TR, and with it the decoded delay and brain window (:mod:`giblet.timing`), come from
        the manifest unless ``values`` sets them."""
        derived = {"tr": float(manifest.get("tr", 1.5))}
        if "tr" in manifest:
            derived["decode_delay_trs"] = decode_delay_trs(manifest["tr"], manifest["lag_trs"])
            derived["decode_window_trs"] = decode_window_trs(manifest["tr"], manifest["lag_trs"])
        return cls.from_preset(preset, modalities=manifest["modalities"], n_voxels=manifest["n_voxels"],
                               lag_trs=manifest["lag_trs"], **{**derived, **values})

    def to_dict(self) -> dict:
        """The fields as a JSON-serializable dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


__all__ = ["MODALITIES", "PRESETS", "BrainAutoencoderConfig", "ModelSize"]
