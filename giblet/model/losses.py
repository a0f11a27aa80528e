"""Training losses (each component separately, plus the weighted ``total``) and validation metrics.

Targets are the true fMRI and the stimulus at the window's TR ``decode_index`` (what the decoders
reconstruct; the model's ``decode_index``, -1 being the window's last TR).
Components (missing modalities are skipped):
- ``fmri``: MSE between predicted and true z-scored fMRI;
- ``fmri_corr``: mean over samples of 1 - Pearson r across voxels (logged; weight ``fmri_corr``, default 0);
- ``codes``: cross-entropy per codebook, mean over codebooks (codes are categorical: never MSE);
- ``text``: 1 - cosine similarity, mean over the non-masked slots only (0 when a batch has none);
- ``frames``: MSE on [0, 1];
- ``frame_features``: 1 - cosine similarity of the CLIP image embeddings, mean over every frame of the TR.
Losses are computed in float32 (safe under bf16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_WEIGHTS = {"fmri": 1.0, "fmri_corr": 0.0, "codes": 1.0, "text": 1.0, "frames": 1.0, "frame_features": 1.0}


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    # eps inside the square root: a constant input (e.g. the fMRI layer's zero init) must give r = 0
    # with a finite gradient, not 0 * inf = NaN (which poisons the total even at weight 0).
    return (a * b).sum(dim) / (a.square().sum(dim) * b.square().sum(dim) + eps).sqrt()


def losses(outputs: dict, batch: dict, weights: dict | None = None, decode_index: int = -1) -> dict[str, torch.Tensor]:
    """Per-component losses and ``total`` = sum of ``weights[name] * component`` (see DEFAULT_WEIGHTS)."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    out: dict[str, torch.Tensor] = {}
    if "fmri" in outputs and "fmri" in batch:
        pred, true = outputs["fmri"].float(), batch["fmri"].float()
        out["fmri"] = F.mse_loss(pred, true)
        out["fmri_corr"] = (1.0 - _pearson(pred, true, dim=1)).mean()
    if "code_logits" in outputs and "codes" in batch:
        logits, target = outputs["code_logits"].float(), batch["codes"][:, decode_index].long()  # (B, n_q, Fa, C), (B, n_q, Fa)
        per_q = [F.cross_entropy(logits[:, q].reshape(-1, logits.shape[-1]), target[:, q].reshape(-1))
                 for q in range(logits.shape[1])]
        out["codes"] = torch.stack(per_q).mean()
    if "text" in outputs and "text" in batch:
        pred, true = outputs["text"].float(), batch["text"][:, decode_index].float()             # (B, k, d)
        mask = batch["text_mask"][:, decode_index].bool() if "text_mask" in batch else torch.ones(pred.shape[:2], dtype=torch.bool,
                                                                                         device=pred.device)
        if mask.any():
            out["text"] = (1.0 - F.cosine_similarity(pred[mask], true[mask], dim=-1)).mean()
        else:
            out["text"] = pred.sum() * 0.0  # keeps the graph (and DDP) happy
    if "frames" in outputs and "frames" in batch:
        true = batch["frames"][:, decode_index].float() / 255.0                                    # (B, F, H, W, 3)
        out["frames"] = F.mse_loss(outputs["frames"].float(), true)
    if "frame_features" in outputs and "frame_features" in batch:
        pred, true = outputs["frame_features"].float(), batch["frame_features"][:, decode_index].float()  # (B, F, d)
        out["frame_features"] = (1.0 - F.cosine_similarity(pred, true, dim=-1)).mean()
    if not out:
        raise ValueError("no loss component: outputs and batch share no modality")
    out["total"] = sum(weights.get(name, 1.0) * value for name, value in out.items())
    return out


def pearson_per_voxel(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Pearson r of each voxel over the batch/time axis: ``(N, V), (N, V) -> (V,)``; constant voxels give 0."""
    return _pearson(pred.float(), true.float(), dim=0)
