"""Stimulus features per TR: video frames, EnCodec audio codes and CLIP text embeddings."""
