"""The stimulus autoencoders, learned from the movie alone (:mod:`giblet.pretrain`), frozen afterwards.

- :mod:`giblet.autoencoders.frames`: frames <-> a latent per frame;
- :mod:`giblet.autoencoders.codes`: EnCodec code chunks <-> a latent per chunk;
- :mod:`giblet.autoencoders.kinds`: each by its kind's name;
- :mod:`giblet.autoencoders.file`: ``autoencoder.pt``, their file.

Apart from the brain model (:mod:`giblet.model`), which reads their latents and renders with their
decoders: editing the brain model never reruns pretraining.
"""
