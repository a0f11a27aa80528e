"""The pretrained stimulus autoencoders by kind: what ``autoencoder.pt`` files and the brain model build."""

from __future__ import annotations

from torch import nn

from giblet.autoencoders.codes import CodeAutoencoder, CodeAutoencoderConfig
from giblet.autoencoders.frames import FrameAutoencoder, FrameAutoencoderConfig

KINDS = {"frames": (FrameAutoencoder, FrameAutoencoderConfig), "audio": (CodeAutoencoder, CodeAutoencoderConfig)}


def build_autoencoder(kind: str, config: dict) -> nn.Module:
    """A fresh autoencoder of ``kind`` (``frames`` or ``audio``) from its config dict."""
    if kind not in KINDS:
        raise ValueError(f"unknown stimulus autoencoder kind {kind!r} (have {sorted(KINDS)})")
    model_class, config_class = KINDS[kind]
    return model_class(config_class(**config))


__all__ = ["KINDS", "build_autoencoder"]
