"""The multimodal brain autoencoder: stimulus encoders -> fMRI layer (V voxels) -> stimulus decoders."""

from giblet.model.autoencoder import MODEL_PRESETS, BrainAutoencoder
from giblet.model.losses import DEFAULT_WEIGHTS, losses, pearson_per_voxel

__all__ = ["MODEL_PRESETS", "BrainAutoencoder", "DEFAULT_WEIGHTS", "losses", "pearson_per_voxel"]
