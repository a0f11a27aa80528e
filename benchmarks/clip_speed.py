"""How fast the embed_text stage embeds annotations on CPU (ViT-B-32 text tower, random init).

    python -m benchmarks.clip_speed [--quick]

giblet's encoder (``giblet.stimulus.text.embed_texts``) sorts texts by length and runs CLIP's
causal text transformer only up to the longest text of each batch. The reference, timed in the
same run on the same texts and batch size, is open_clip's own ``encode_text``, which always runs
the full 77-token context. The ratio is the speed-up; the outputs are checked to be equal.
Tokenization alone is timed too, to show it is not the bottleneck.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH_SIZE = 64  # the config default (stimulus.text.batch_size)


def demo_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` scene descriptions worded like the demo's annotations."""
    from giblet.demo.latents import ACTIONS, CHARACTERS, PLACES, annotation_text

    rng = np.random.default_rng(seed)
    return [annotation_text(rng, rng.integers(len(CHARACTERS)), rng.integers(len(PLACES)),
                            rng.integers(len(ACTIONS))) for _ in range(n)]


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def clip_throughput(quick: bool) -> dict:
    """Annotations per second on CPU: giblet's embed_texts vs open_clip's encode_text."""
    from giblet.stimulus.text import embed_texts, load_text_model

    n, n_reference = (64, 64) if quick else (512, 128)  # the reference is slow: time fewer texts
    texts = demo_texts(n)
    model, tokenizer, _ = load_text_model("ViT-B-32", "none", "cpu", seed=0)
    embed_texts(texts[:8], model, tokenizer, BATCH_SIZE, "cpu", progress=False)  # warm-up

    tokenize_s, tokens = _timed(lambda: tokenizer(texts))
    giblet_s, embeddings = _timed(
        lambda: embed_texts(texts, model, tokenizer, BATCH_SIZE, "cpu", progress=False))

    def reference():
        with torch.inference_mode():
            return torch.cat([model.encode_text(tokens[i : i + BATCH_SIZE], normalize=True)
                              for i in range(0, n_reference, BATCH_SIZE)]).numpy()

    reference_s, reference_out = _timed(reference)
    max_diff = float(np.abs(embeddings[:n_reference] - reference_out).max())
    giblet_rate, reference_rate = n / giblet_s, n_reference / reference_s
    return {
        "n_texts": n, "n_reference_texts": n_reference, "batch_size": BATCH_SIZE,
        "torch_threads": torch.get_num_threads(),
        "mean_tokens_per_text": round(float((tokens != 0).sum(dim=1).float().mean()), 1),
        "annotations_per_second": round(giblet_rate, 2),
        "reference_encode_text_per_second": round(reference_rate, 2),
        "ratio_vs_encode_text": round(giblet_rate / reference_rate, 2),
        "tokenize_per_second": round(n / tokenize_s, 1),
        "tokenize_fraction_of_embed": round(tokenize_s / giblet_s, 4),
        "max_abs_diff_vs_encode_text": max_diff,
        "seconds_for_1000_annotations": round(1000 / giblet_rate, 1),
    }


if __name__ == "__main__":
    print(json.dumps({"benchmark": "clip_throughput", **clip_throughput("--quick" in sys.argv)}, indent=2))
