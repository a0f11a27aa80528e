"""Brain -> stimulus through the pretrained latent spaces: the decoding half of the brain model.

A window of ``window`` brain TRs ``(B, window, V)`` is projected onto the training block's leading
principal components (``basis``, fixed), and one linear map (fitted in closed form by ridge after
training: :func:`giblet.train.latent_decoder.fit_latent_decoder`) gives every decoded target at
once: the latents of the frame and code autoencoders, and the CLIP embeddings of the text (and of
the frames, with ``frame_features``). The frozen pretrained decoders (``renderers``) draw the
decoded latents as frames and code logits. Nothing here is trained by gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from giblet.autoencoders.kinds import build_autoencoder

# Decoded target -> the renderer that draws it (targets without one are decoded as they are).
RENDERED = {"frame_latents": "frames", "audio_latents": "audio"}


class LatentDecoder(nn.Module):
    """``(B, window, V)`` brain -> ``{"frames", "code_logits", "text", "frame_features"}`` (those the
    targets make).

    ``targets``: {name: per-TR shape}, e.g. ``{"frame_latents": (4, 16), "text": (2, 512)}``;
    ``renderers``: {"frames" | "audio": the autoencoder's config dict}; ``frames_shape`` ``(H, W)`` the
    rendered frames are resized to (the dataset's frames); ``code_frames`` the code frames per TR;
    ``text_slots`` the annotation slots per TR (a decoded text target ``(1, d)`` fills each).
    """

    def __init__(self, n_voxels: int, window: int, n_components: int, targets: dict, renderers: dict,
                 frames_shape: tuple[int, int] | None = None, code_frames: int | None = None,
                 text_slots: int | None = None):
        super().__init__()
        self.window, self.n_components = int(window), int(n_components)
        self.targets = {name: tuple(int(n) for n in shape) for name, shape in targets.items()}
        self.frames_shape, self.code_frames, self.text_slots = frames_shape, code_frames, text_slots
        self.register_buffer("basis", torch.zeros(self.n_components, n_voxels))
        self.register_buffer("brain_mean", torch.zeros(n_voxels))
        width = sum(math.prod(shape) for shape in self.targets.values())
        self.register_buffer("weight", torch.zeros(width, self.window * self.n_components))
        self.register_buffer("bias", torch.zeros(width))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.renderers = nn.ModuleDict({kind: build_autoencoder(kind, config) for kind, config in renderers.items()})
        self.renderers.requires_grad_(False)

    def components(self, brain: torch.Tensor) -> torch.Tensor:
        """``(B, window, V)`` -> ``(B, window * n_components)``: each TR on the fixed principal components."""
        return ((brain.float() - self.brain_mean) @ self.basis.t()).flatten(1)

    def latents(self, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoded targets, each ``(B, *shape)``, before rendering."""
        flat = self.components(brain) @ self.weight.t() + self.bias
        out, start = {}, 0
        for name, shape in self.targets.items():
            size = math.prod(shape)
            out[name] = flat[:, start:start + size].reshape(-1, *shape)
            start += size
        return out

    def render(self, latents: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Decoded targets -> what the model's decoders return: ``frames`` ``(B, F, H, W, 3)`` in [0, 1],
        ``code_logits`` ``(B, n_q, Fa, C)``, ``text`` ``(B, k, d)``, ``frame_features`` ``(B, F, d)``."""
        out = {name: value for name, value in latents.items() if name not in RENDERED}
        if "text" in out and self.text_slots:  # one decoded mean embedding, in every annotation slot
            out["text"] = out["text"].expand(-1, self.text_slots, -1)
        if "frame_latents" in latents:
            z = latents["frame_latents"]
            b, f = z.shape[:2]
            frames = self.renderers["frames"].decode(z.flatten(0, 1))                     # (B*F, h, w, 3)
            if self.frames_shape is not None and tuple(frames.shape[1:3]) != tuple(self.frames_shape):
                frames = F.interpolate(frames.permute(0, 3, 1, 2), size=tuple(self.frames_shape), mode="bilinear",
                                       align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
            out["frames"] = frames.reshape(b, f, *frames.shape[1:])
        if "audio_latents" in latents:
            z = latents["audio_latents"]
            b, s = z.shape[:2]
            logits = self.renderers["audio"].decode(z.flatten(0, 1))                       # (B*S, n_q, L, C)
            n_q, length, size = logits.shape[1:]
            logits = logits.reshape(b, s, n_q, length, size).permute(0, 2, 1, 3, 4).reshape(b, n_q, s * length, size)
            if self.code_frames is not None and self.code_frames > s * length:  # a TR's remainder repeats its end
                pad = logits[:, :, -1:].expand(b, n_q, self.code_frames - s * length, size)
                logits = torch.cat([logits, pad], dim=2)
            out["code_logits"] = logits
        return out

    def forward(self, brain: torch.Tensor) -> dict[str, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError("the latent decoder is not fitted yet (giblet.train.latent_decoder.fit_latent_decoder)")
        return self.render(self.latents(brain))


__all__ = ["LatentDecoder", "RENDERED"]
