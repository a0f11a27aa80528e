"""open_clip weights for the stages that embed with CLIP (``embed_text``, ``embed_frames``): one loader.

``pretrained`` names where the weights come from, with the same meaning under every config key that
takes it (``stimulus.text.pretrained``, ``stimulus.frames.clip.pretrained``):

- ``"none"``: random init after ``torch.manual_seed(seed)``. DEMO ONLY: the embeddings are
  deterministic and distinct per input but carry no meaning; the weights id says so.
- a local file (``.safetensors``, ``.pt``, ``.bin``): loaded through open_clip's own path with strict
  key and shape checks; a missing or mismatched file is an InputError naming it.
- an open_clip pretrained tag (e.g. ``openai``): from the HF hub cache or a download. Offline without
  a cached copy this is a ConfigError that suggests a local file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from giblet.errors import ConfigError, InputError
from giblet.files import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def is_weights_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a file (rather than an open_clip tag)."""
    return (os.sep in pretrained or pretrained.startswith(("~", "."))
            or pretrained.lower().endswith(WEIGHT_SUFFIXES) or Path(pretrained).exists())


def first_line(err: Exception, limit: int = 300) -> str:
    """The start of an exception's message (load_state_dict lists every mismatched key)."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


def load_clip(model_name: str, pretrained: str, seed: int, key: str):
    """A whole open_clip model on the CPU in eval mode, and its weights id.

    Parameters
    ----------
    model_name : str
        An open_clip model name (``open_clip.list_models()``), e.g. ``ViT-B-32``.
    pretrained : str
        ``"none"``, a local weights file or an open_clip tag (see the module docstring).
    seed : int
        Seeds the random init of ``"none"``; the caller's RNG state is left untouched.
    key : str
        The config section being loaded (``stimulus.text``), named in every error.

    Returns
    -------
    (model, weights_id)
        ``weights_id`` is ``open_clip:<model>/<tag>``, ``file:<name> sha256:<hex>`` or a random-init
        label that says DEMO ONLY.

    Raises
    ------
    ConfigError
        An unknown model, an unknown tag, or a tag whose weights cannot be had (offline).
    InputError
        Naming the weights file: missing, or not weights of ``model_name``.
    """
    import open_clip

    if ":" not in model_name and model_name not in open_clip.list_models():
        raise ConfigError(f"{key}.model: unknown open_clip model {model_name!r} (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    # The seed matters only for random init; fork_rng keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pretrained == "none":
            model = open_clip.create_model(model_name, pretrained=None)
            weights_id = f"random-init seed={seed} (DEMO ONLY: not pretrained CLIP weights)"
        elif pretrained in tags:
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained)
            except Exception as err:
                offline = os.environ.get("HF_HUB_OFFLINE")
                raise ConfigError(
                    f"{key}.pretrained: cannot get open_clip weights {pretrained!r} for {model_name} "
                    f"({first_line(err)}). Without internet (HF_HUB_OFFLINE={offline}) "
                    f"the weights must already be cached: download them on a machine with internet and set "
                    f"{key}.pretrained to the local file (.safetensors, .bin or .pt), or use 'none' "
                    f"for seeded random weights (demo only)") from None
            weights_id = f"open_clip:{model_name}/{pretrained}"
        elif is_weights_path(pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise InputError(path, "weights file not found")
            try:
                model = open_clip.create_model(model_name, pretrained=str(path))
            except Exception as err:
                problem = f"cannot be loaded as {model_name} weights: {first_line(err)}"
                raise InputError(path, problem) from None
            weights_id = f"file:{path.name} sha256:{sha256_file(path)}"
        else:
            raise ConfigError(f"{key}.pretrained: {pretrained!r} is neither 'none', an existing file, "
                              f"nor an open_clip tag of {model_name} ({', '.join(tags) or 'none known'})")
    return model.eval(), weights_id
