"""The soundtrack's code autoencoder: a chunk of EnCodec code frames -> latent vector -> code probabilities.

Pretrained on the codes of the whole soundtrack (rule ``pretrain_audio``), then frozen: the brain
model reads the latents of each TR's chunks and turns decoded latents back into code logits with
:meth:`CodeAutoencoder.decode`. Codes are categorical, so it is trained by cross-entropy, never MSE.

What the brain can follow of a sound over 0.2 s is which codes occur, not their order, so the
design is the smoothest one that keeps that (measured on the demo against per-frame and MLP
decoders, which memorised the soundtrack: validation cross-entropy 5.69 against 4.79 nats):

- the encoder averages the codebook embeddings over the chunk's frames (a bag of codes), then an MLP;
- the latent is a VAE's (``beta`` weighs its KL term), and neighbouring chunks of a TR are pulled
  together (``smooth``), so that nearby latents mean nearby sounds and a linear map from the brain
  can reach them (the latents' predictability from the demo's brain: r 0.33 -> 0.57);
- the decoder is log-linear: one table of logits per chunk, ``bias + W z``, shared by its frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CodeAutoencoderConfig:
    """Shape and width of :class:`CodeAutoencoder`.

    ``n_q`` codebooks of ``codebook_size`` entries; ``chunk_frames`` code frames per latent (75 per
    second at 24 kHz); ``latent_dim``; ``embed_dim`` per codebook entry; ``hidden`` the encoder's width.
    """

    n_q: int = 4
    codebook_size: int = 1024
    chunk_frames: int = 14
    latent_dim: int = 16
    embed_dim: int = 64
    hidden: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class CodeAutoencoder(nn.Module):
    """Codes ``(N, n_q, chunk_frames)`` int <-> latents ``(N, latent_dim)``; decode gives logits
    ``(N, n_q, chunk_frames, codebook_size)``."""

    def __init__(self, config: CodeAutoencoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.n_q * c.codebook_size, c.embed_dim)
        self.register_buffer("offsets", torch.arange(c.n_q)[:, None] * c.codebook_size, persistent=False)
        self.body = nn.Sequential(nn.Linear(c.embed_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.hidden), nn.GELU())
        self.mean = nn.Linear(c.hidden, c.latent_dim)
        self.log_variance = nn.Linear(c.hidden, c.latent_dim)
        self.out = nn.Linear(c.latent_dim, c.n_q * c.codebook_size)

    def posterior(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, n_q, L)`` int -> the latent's mean and log-variance, each ``(N, latent_dim)``."""
        bag = self.embed(codes.long() + self.offsets).sum(dim=1).mean(dim=1)        # (N, embed_dim)
        h = self.body(bag)
        return self.mean(h), self.log_variance(h).clamp(-10.0, 5.0)

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, n_q, L)`` int -> ``(N, latent_dim)``: the posterior mean."""
        return self.posterior(codes)[0]

    def chunk_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` -> log-probabilities of one chunk's codes ``(N, n_q, codebook_size)``."""
        c = self.config
        return self.out(latents).view(-1, c.n_q, c.codebook_size).log_softmax(dim=-1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` -> logits ``(N, n_q, chunk_frames, codebook_size)`` (the chunk's frames share them)."""
        table = self.chunk_logits(latents)
        return table[:, :, None].expand(-1, -1, self.config.chunk_frames, -1)

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, n_q, L)`` -> (each chunk's code log-probabilities ``(N, n_q, C)``, the posterior mean and
        log-variance): the latent is sampled in training (reparametrised), the mean otherwise."""
        mean, log_variance = self.posterior(codes)
        z = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if self.training else mean
        return self.chunk_logits(z), mean, log_variance


def code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``(N, n_q, L)`` int -> how often each code occurs in each chunk ``(N, n_q, codebook_size)``."""
    counts = torch.zeros(*codes.shape[:2], codebook_size, device=codes.device)
    return counts.scatter_add_(2, codes.long(), torch.ones(codes.shape, device=codes.device))


def code_autoencoder_loss(model: nn.Module, chunks: torch.Tensor, code_weights: torch.Tensor | None,
                          beta: float, smooth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective on runs of consecutive chunks ``(B, S, n_q, L)`` (a TR each) and the plain
    cross-entropy per code (nats).

    Objective per code: cross-entropy (each code weighted by ``code_weights`` ``(n_q, C)``, rarer codes
    more) + ``beta`` x the KL of the posterior to N(0, 1) + ``smooth`` x the squared distance between
    the latent means of neighbouring chunks. ``model``: a :class:`CodeAutoencoder`, or DDP around one.
    """
    b, s, n_q, length = chunks.shape
    flat = chunks.flatten(0, 1)
    log_p, mean, log_variance = model(flat)                                           # (B*S, n_q, C), ...
    counts = code_counts(flat, log_p.shape[-1])
    nll = -(counts * log_p)
    cross_entropy = nll.sum(dim=(1, 2)) / (n_q * length)
    if code_weights is not None:
        weighted = (nll * code_weights).sum(dim=(1, 2)) / (counts * code_weights).sum(dim=(1, 2))
    else:
        weighted = cross_entropy
    kl = 0.5 * (mean ** 2 + log_variance.exp() - 1.0 - log_variance).sum(dim=1)
    means = mean.view(b, s, -1)
    neighbours = ((means[:, 1:] - means[:, :-1]) ** 2).sum(dim=(1, 2))
    objective = weighted.mean() + (beta * kl.sum() + smooth * neighbours.sum()) / (flat.shape[0] * n_q * length)
    return objective, cross_entropy.mean().detach()


def rare_code_weights(chunks: torch.Tensor, codebook_size: int, power: float) -> torch.Tensor | None:
    """``(n_q, C)`` weights ``frequency ** -power`` (frequencies + 1 over ``chunks`` ``(..., n_q, L)``), scaled
    to a mean of 1 over the codes that occur; None when ``power`` is 0."""
    if not power:
        return None
    n_q = chunks.shape[-2]
    flat = chunks.transpose(-2, -1).reshape(-1, n_q)
    counts = torch.stack([torch.bincount(flat[:, q].long(), minlength=codebook_size) for q in range(n_q)]).double()
    weights = (counts + 1.0) ** -power
    weights /= ((weights * counts).sum(1, keepdim=True) / counts.sum(1, keepdim=True))
    return weights.float()


def chunk_codes(codes: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Per-TR codes ``(T, n_q, Fa)`` -> chunks ``(T, S, n_q, chunk_frames)``, ``S = Fa // chunk_frames``
    (a remainder of code frames at each TR's end is left out)."""
    t, n_q, fa = codes.shape
    s = fa // chunk_frames
    if s < 1:
        raise ValueError(f"{fa} code frames per TR hold no chunk of {chunk_frames}")
    return codes[:, :, :s * chunk_frames].reshape(t, n_q, s, chunk_frames).permute(0, 2, 1, 3)


__all__ = ["CodeAutoencoder", "CodeAutoencoderConfig", "chunk_codes", "code_autoencoder_loss", "code_counts",
           "rare_code_weights"]
