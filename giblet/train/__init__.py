"""Training: the autoencoder trainer and its checkpoint manager."""
