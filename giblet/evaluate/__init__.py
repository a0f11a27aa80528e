"""Evaluation: weights, checkpoint verification, metrics, baselines, reconstructions, lesions."""
