"""Which ``train`` config keys change what is learned, and which only say how the run is carried out.

The split decides two things: what a checkpoint must match to be resumed (``giblet.train.loop``'s
config hash), and what the ``train`` rule declares as params (so Snakemake reruns training only when
a learning key changes). Kept free of heavy imports: the Snakefile reads it at every start.
"""

from __future__ import annotations

# Keys that do not change the learned weights. Editing one resumes (or leaves a finished model alone)
# instead of starting over. `gpus` and `nodes` are here because a checkpoint records its world size
# (nodes x gpus processes) and refuses, with a clear message, to resume under another; the rule still
# reruns when either changes.
RUN_KEYS = ("checkpoint", "device", "hold_on_device", "tensorboard_every_steps", "histogram_every_steps",
            "gpus", "nodes", "restarts")


def learning_params(train: dict) -> dict:
    """The ``train`` section without the keys in RUN_KEYS."""
    return {key: value for key, value in train.items() if key not in RUN_KEYS}


def rule_params(train: dict) -> dict:
    """What the ``train`` rule's staleness depends on: the learning keys and the world size (the GPU
    count, and the node count when it is not 1: single-node configs keep the params they always had,
    so adding the key reruns nothing)."""
    nodes = train.get("nodes", 1)
    return {**learning_params(train), "gpus": train["gpus"], **({"nodes": nodes} if nodes != 1 else {})}
