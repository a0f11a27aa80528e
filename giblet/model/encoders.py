"""Stimulus encoders: one embedding per TR for each modality, and the causal fusion over the window.

Every encoder takes the per-TR tensors of a batch flattened to ``N = B * lag`` rows and returns
``(N, dim)``; :class:`CausalTemporal` then runs over the ``lag`` axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameEncoder(nn.Module):
    """A small strided conv net per frame (uint8 -> float / 255), mean-pooled over the TR's frames.

    The conv features are average-pooled to a coarse ``grid`` (rows, columns), not globally: a global
    pool cannot tell where on the screen something is. Input ``(N, F, H, W, 3)`` uint8; output ``(N, dim)``.
    """

    def __init__(self, channels: list[int], dim: int, stem_stride: int = 2, grid: tuple[int, int] = (3, 5)):
        super().__init__()
        # The first conv has stride ``stem_stride`` (kernel = stride + 1): 4 cuts the cost of full-size
        # frames ~4x for the CPU-sized model; the rest are 3x3 stride 2.
        layers, c_in = [], 3
        for i, c_out in enumerate(channels):
            stride = stem_stride if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, kernel_size=stride + 1, stride=stride, padding=stride // 2), nn.GELU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(c_in * grid[0] * grid[1], dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, f, h, w, c = frames.shape
        x = frames.reshape(n * f, h, w, c).permute(0, 3, 1, 2).float() / 255.0
        x = self.pool(self.convs(x)).flatten(1)            # (N*F, C * rows * columns)
        return self.proj(x).reshape(n, f, -1).mean(dim=1)  # pool the TR's frames


class CodeEncoder(nn.Module):
    """EnCodec codes: one embedding table per codebook (summed), a temporal conv over the code frames, pooled.

    The per-codebook tables are stored as one ``n_q * codebook_size`` table indexed with per-codebook
    offsets (identical to separate tables, one lookup). Input ``(N, n_q, Fa)`` int64; output ``(N, dim)``.
    """

    def __init__(self, n_q: int, codebook_size: int, dim: int, depth: int = 2, kernel_size: int = 3):
        super().__init__()
        self.n_q, self.codebook_size = n_q, codebook_size
        self.embed = nn.Embedding(n_q * codebook_size, dim)
        self.register_buffer("offsets", torch.arange(n_q).view(1, n_q, 1) * codebook_size, persistent=False)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2) for _ in range(depth))
        self.proj = nn.Linear(dim, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes.long() + self.offsets).sum(dim=1)  # (N, Fa, dim): summed over codebooks
        x = x.transpose(1, 2)                                     # (N, dim, Fa)
        for conv in self.convs:
            x = x + F.gelu(conv(x))
        return self.proj(x.mean(dim=2))


class TextEncoder(nn.Module):
    """An MLP over the k CLIP slots, masked mean; a TR with no annotation gets a learned "no text" vector.

    Input ``text (N, k, d)``, ``mask (N, k)`` bool; masked slots never reach the output (whatever they hold).
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.no_text = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        text = torch.where(mask.unsqueeze(-1), text.float(), torch.zeros((), dtype=torch.float32, device=text.device))
        h = self.mlp(text)
        h = torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        count = mask.sum(dim=1, keepdim=True)
        pooled = h.sum(dim=1) / count.clamp(min=1).to(h.dtype)
        return torch.where(count > 0, pooled, self.no_text.to(h.dtype).expand_as(pooled))


class FrameFeatureEncoder(nn.Module):
    """Frozen CLIP image embeddings of a TR's F frames: the text encoder's MLP per frame, mean over the frames.

    The sibling of :class:`TextEncoder` without its mask (every frame slot is filled). Input ``(N, F, d)``
    (float16 on disk, any float here); output ``(N, dim)``.
    """

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings.float()).mean(dim=1)


class CausalBlock(nn.Module):
    """A residual, dilated, causal 1-D conv (left padding only) over the TR axis: ``(B, dim, lag)``."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.norm = nn.LayerNorm(dim)  # per TR (over channels only): statistics never mix TRs
        self.conv = nn.Conv1d(dim, 2 * dim, kernel_size, dilation=dilation)
        self.out = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(self.norm(x.transpose(1, 2)).transpose(1, 2), (self.pad, 0)))
        h = F.glu(h, dim=1)
        return x + self.drop(self.out(h))


def causal_dilations(depth: int, kernel_size: int, lag: int) -> list[int]:
    """Dilations 1, 2, 4, ... for ``depth`` blocks, extended until the receptive field covers ``lag`` TRs."""
    dilations = []
    while len(dilations) < depth or 1 + (kernel_size - 1) * sum(dilations) < lag:
        dilations.append(2 ** len(dilations))
    return dilations


class CausalTemporal(nn.Module):
    """The fusion over the window: a dilated causal conv stack; the output at the last TR is used.

    A learned position embedding per window slot lets the model tell TRs apart (hemodynamic delay).
    Input ``(B, lag, dim)``; output ``(B, dim)``.
    """

    def __init__(self, dim: int, lag: int, depth: int, kernel_size: int, dropout: float,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(lag, dim))
        self.blocks = nn.ModuleList(CausalBlock(dim, kernel_size, d, dropout)
                                    for d in causal_dilations(depth, kernel_size, lag))
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + self.position[-x.shape[1]:]).transpose(1, 2)  # (B, dim, lag)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x[:, :, -1])


class HemodynamicFilters(nn.Module):
    """The fusion over the window as the brain does it: a causal linear filter per feature, no mixing.

    Each of the ``dim`` per-TR features gets ``n_filters`` learned filters over the ``lag`` TRs of the
    window (a depthwise convolution whose kernel spans the window); the first filter of every
    feature starts as nilearn's Glover HRF sampled at the TR, the others near zero (room for
    temporal derivatives, earlier or later peaks). A voxel's BOLD is a linear mix of HRF-filtered
    neural features, so this has the right form with ``dim * n_filters * lag`` parameters, where a
    free weight per voxel and lag (the ridge baseline's form) needs ``V * dim * lag``.

    Input ``(B, lag, dim)`` (a shorter window is left-padded with zeros); output ``(B, dim * n_filters)``.
    """

    def __init__(self, dim: int, lag: int, n_filters: int, tr: float):
        super().__init__()
        from giblet.timing import hrf_kernel

        self.lag, self.n_filters = lag, n_filters
        hrf = torch.as_tensor(hrf_kernel(tr)[:lag], dtype=torch.float32)
        weight = torch.randn(dim * n_filters, 1, lag) * 0.01
        weight[::n_filters, 0] = hrf.flip(0) / hrf.abs().max()  # kernel slot j multiplies TR t - lag + 1 + j
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)                                             # (B, dim, lag')
        if x.shape[-1] < self.lag:
            x = F.pad(x, (self.lag - x.shape[-1], 0))
        return F.conv1d(x, self.weight.to(x.dtype), groups=x.shape[1]).squeeze(-1)



class ModalityFeatures(nn.Module):
    """What a modality's per-TR embedding becomes before the hemodynamic filters: more nonlinear capacity.

    A residual MLP (``hidden`` wide; 0 = none), then, with ``interactions = k > 0``, the pairwise
    products of a learned ``k``-dimensional projection appended to the features (``k (k + 1) / 2``
    of them, squares included). A voxel that responds to a conjunction (a character *and* an
    action) or to the product of two stimulus properties needs that product *before* the HRF
    smears it over time: a linear readout of HRF-filtered features cannot form it afterwards.
    Input ``(N, dim)``; output ``(N, dim + k (k + 1) / 2)``.
    """

    def __init__(self, dim: int, hidden: int, interactions: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) if hidden else None
        self.project = nn.Linear(dim, interactions) if interactions else None
        rows, cols = torch.triu_indices(interactions, interactions) if interactions else (None, None)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.out_dim = dim + (interactions * (interactions + 1) // 2 if interactions else 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            z = z + self.mlp(z)
        if self.project is None:
            return z
        p = self.project(z)
        return torch.cat([z, p[:, self.rows] * p[:, self.cols]], dim=1)
