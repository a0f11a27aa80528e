"""The dataset bundle: one manifest that describes every array, and windowed samples from it."""
