"""Decoders from the V-voxel brain: a bottleneck, then one head per modality (the stimulus at the last TR)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """Linear V -> hidden (the only V-sized decoder layer), LayerNorm, GELU, dropout."""

    def __init__(self, n_voxels: int, hidden: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(n_voxels, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        return self.drop(F.gelu(self.norm(self.linear(fmri))))


class FrameHead(nn.Module):
    """hidden -> the F frames of the last TR, ``(B, F, H, W, 3)`` in [0, 1].

    A linear layer makes a coarse ``(C, ceil(H / 2^n), ceil(W / 2^n))`` grid, ``n = n_up`` stride-2 transposed
    convs upsample it (halving the channels), a 3x3 conv makes ``F * 3`` channels, and when the grid is not
    exactly H x W (e.g. 90 x 160 from 12 x 20 * 8 = 96 x 160) it is bilinearly resized to H x W before the sigmoid.
    """

    def __init__(self, hidden: int, frames_per_tr: int, height: int, width: int, channels: int, n_up: int):
        super().__init__()
        self.f, self.h, self.w = frames_per_tr, height, width
        scale = 2 ** n_up
        self.h0, self.w0, self.c0 = math.ceil(height / scale), math.ceil(width / scale), channels
        self.linear = nn.Linear(hidden, channels * self.h0 * self.w0)
        layers, c = [], channels
        for _ in range(n_up):
            c_out = max(c // 2, 8)
            layers += [nn.ConvTranspose2d(c, c_out, kernel_size=4, stride=2, padding=1), nn.GELU()]
            c = c_out
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, frames_per_tr * 3, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        x = F.gelu(self.linear(h)).reshape(b, self.c0, self.h0, self.w0)
        x = self.out(self.up(x))
        if x.shape[-2:] != (self.h, self.w):
            x = F.interpolate(x, size=(self.h, self.w), mode="bilinear", align_corners=False)
        x = torch.sigmoid(x).reshape(b, self.f, 3, self.h, self.w)
        return x.permute(0, 1, 3, 4, 2)


class CodeHead(nn.Module):
    """hidden -> code logits ``(B, n_q, Fa, codebook_size)``, factorized through a small rank ``r``.

    hidden -> (n_q, Fa, r) by one linear layer, GELU, then a per-codebook ``r -> codebook_size`` projection.
    """

    def __init__(self, hidden: int, n_q: int, frames_per_tr: int, codebook_size: int, rank: int):
        super().__init__()
        self.n_q, self.fa, self.rank = n_q, frames_per_tr, rank
        self.linear = nn.Linear(hidden, n_q * frames_per_tr * rank)
        self.weight = nn.Parameter(torch.randn(n_q, rank, codebook_size) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.zeros(n_q, codebook_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.gelu(self.linear(h)).reshape(h.shape[0], self.n_q, self.fa, self.rank)
        return torch.einsum("bqfr,qrc->bqfc", z, self.weight.to(z.dtype)) + self.bias.to(z.dtype)[None, :, None]


class TextHead(nn.Module):
    """hidden -> the k CLIP embeddings of the last TR, ``(B, k, d)`` (compared by cosine, so unnormalized)."""

    def __init__(self, hidden: int, k: int, dim: int):
        super().__init__()
        self.k, self.dim = k, dim
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, k * dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h).reshape(h.shape[0], self.k, self.dim)
