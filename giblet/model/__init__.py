"""The multimodal brain autoencoder: stimulus encoders -> fMRI layer (V voxels) -> stimulus decoders."""

from giblet.model.autoencoder import BrainAutoencoder
from giblet.model.config import PRESETS, BrainAutoencoderConfig, ModelSize
from giblet.model.losses import DEFAULT_WEIGHTS, losses, pearson_per_voxel

__all__ = ["PRESETS", "BrainAutoencoder", "BrainAutoencoderConfig", "ModelSize", "DEFAULT_WEIGHTS", "losses",
           "pearson_per_voxel"]
