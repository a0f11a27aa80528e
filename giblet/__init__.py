"""giblet: movie + fMRI -> a multimodal autoencoder whose middle layer is the brain."""

__version__ = "0.1.0"
