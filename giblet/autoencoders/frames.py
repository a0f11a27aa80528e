"""The movie's frame autoencoder: frame -> latent vector -> frame, learned from the movie alone.

Pretrained on every frame of the movie at ``pretrain.frames.rate`` (rule ``pretrain_frames``), then
frozen: the brain model reads the latents of each TR's frames and renders decoded latents back into
frames with :meth:`FrameAutoencoder.decode`. Nothing about the brain enters it.

The decoder is a spatial broadcast decoder (Watters et al. 2019): the latent is copied to every
position of a half-resolution grid beside the position's coordinates, and a small per-position
network draws the picture. An object's position then has to be a smooth function of the latent,
which a linear map from the brain can reach; a dense decoder is free to scatter positions across
the latent space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class FrameAutoencoderConfig:
    """Shape and width of :class:`FrameAutoencoder`.

    ``height`` x ``width``: the frames it reads and draws (pixels, each a multiple of 4);
    ``latent_dim``: the size of a frame's latent vector; ``channels``: the convolution width;
    ``hidden``: the width of the decoder's per-position network.
    """

    height: int = 36
    width: int = 64
    latent_dim: int = 16
    channels: int = 32
    hidden: int = 64

    def __post_init__(self):
        if self.height % 4 or self.width % 4:
            raise ValueError(f"frame autoencoder size {self.height}x{self.width}: both must be multiples of 4")

    def to_dict(self) -> dict:
        return asdict(self)


class FrameAutoencoder(nn.Module):
    """Frames ``(N, H, W, 3)`` in [0, 1] <-> latents ``(N, latent_dim)``."""

    def __init__(self, config: FrameAutoencoderConfig):
        super().__init__()
        self.config = config
        c, h, w = config.channels, config.height, config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, 1, 1), nn.GELU(),
            nn.Flatten(), nn.Linear(2 * c * (h // 4) * (w // 4), config.latent_dim))
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, h // 2), torch.linspace(-1, 1, w // 2), indexing="ij")
        self.register_buffer("grid", torch.stack([rows, cols])[None], persistent=False)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.latent_dim + 2, config.hidden, 1), nn.GELU(),
            nn.Conv2d(config.hidden, config.hidden, 3, 1, 1), nn.GELU(),
            nn.Conv2d(config.hidden, 3 * 4, 1))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` in [0, 1] -> ``(N, latent_dim)``."""
        return self.encoder(frames.permute(0, 3, 1, 2))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` -> frames ``(N, H, W, 3)`` in [0, 1]."""
        n = latents.shape[0]
        _, _, h, w = self.grid.shape
        broadcast = torch.cat([latents[:, :, None, None].expand(n, -1, h, w), self.grid.expand(n, -1, -1, -1)], 1)
        return torch.sigmoid(F.pixel_shuffle(self.decoder(broadcast), 2)).permute(0, 2, 3, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))


def foreground_weighted_mse(decoded: torch.Tensor, frames: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """Mean squared error with each pixel weighted by ``1 + foreground_weight * |pixel - frame median|_1``.

    ``decoded``, ``frames``: ``(N, H, W, 3)`` in [0, 1]. A small object (the demo's disk covers 1-3 %
    of the frame) adds almost nothing to a plain MSE, and an autoencoder trained on it draws only the
    background; weighting the pixels that differ from their frame's median colour makes the objects
    count, with no label. Normalized by the mean weight, so 0 gives the plain MSE.
    """
    median = frames.flatten(1, 2).median(dim=1).values[:, None, None, :]
    weight = 1.0 + foreground_weight * (frames - median).abs().sum(dim=-1, keepdim=True)
    return (weight * (decoded - frames) ** 2).mean() / weight.mean()


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H0, W0, 3)`` uint8 or float -> float ``(N, height, width, 3)`` in [0, 1] (area averaging)."""
    x = frames.float()
    if frames.dtype == torch.uint8:
        x = x / 255.0
    if x.shape[1:3] != (height, width):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="area").permute(0, 2, 3, 1)
    return x


__all__ = ["FrameAutoencoder", "FrameAutoencoderConfig", "foreground_weighted_mse", "resize_frames"]
