"""Stimulus pretraining: autoencoders learned from the whole movie, no brain involved.

The brain is a few hundred to a few thousand samples; the movie is tens of thousands of frames and
its whole soundtrack. The stimulus representations are learned here, from the movie alone (rules
``pretrain_frames`` and ``pretrain_audio``), then frozen; the brain model fits only the maps between
their latent spaces and the brain (``giblet.model``, ``giblet.train``).

- :mod:`giblet.pretrain.data`: the samples (frames of the movie at a rate, chunks of its codes);
- :mod:`giblet.pretrain.trainer`: the training engine's task for them, and the outputs
  (``autoencoder.pt``, ``latents.npy``);
- :mod:`giblet.pretrain.launch`: one process, or one per GPU under torchrun.
"""
