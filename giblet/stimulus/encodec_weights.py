"""Where the EnCodec 24 kHz weights come from: the torch hub cache, a local file, or demo seeding.

Every state dict, pretrained or local, goes through ``load_state_dict_file``, so a test that saves
a state dict exercises the same code as real weights. ``"demo-random"`` is for the built-in demo
only: a random-init network whose codebooks are seeded from the movie's own audio, so the demo
runs offline, with no weights to download. Its codes are deterministic and varied, but they mean
nothing acoustically.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from encodec import EncodecModel

from giblet.errors import InputError
from giblet.files import sha256_file

log = logging.getLogger(__name__)

PRETRAINED_FILE = "encodec_24khz-d7cc33bc.th"  # the name encodec downloads to
PRETRAINED_SHA256_PREFIX = "d7cc33bc"  # torch hub names cached files after their sha256
HOP = 320  # samples per code frame at 24 kHz
SEED_WINDOWS = 6  # demo seeding encodes at most SEED_WINDOWS windows of SEED_WINDOW_S seconds
SEED_WINDOW_S = 5.0
JITTER = 0.01  # demo codewords are offset by 1 % of the residual RMS, so none equals a latent frame


def pretrained_cache_path() -> Path:
    """``$TORCH_HOME/hub/checkpoints/encodec_24khz-d7cc33bc.th`` (where torch hub caches it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PRETRAINED_FILE


def _build(pretrained: bool) -> EncodecModel:
    with warnings.catch_warnings():  # encodec 0.1.1 uses torch's deprecated weight_norm: not our concern
        warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
        return EncodecModel.encodec_model_24khz(pretrained=pretrained)


def bare_model(seed: int = 0) -> EncodecModel:
    """The EnCodec 24 kHz architecture with random weights (and all-zero codebooks), in eval mode."""
    torch.manual_seed(seed)
    return _build(pretrained=False).eval()


def _shape_problems(model: EncodecModel, state: dict) -> list[str]:
    """Human-readable differences between a state dict and the model's own (empty when they match)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    return problems


def load_state_dict_file(model: EncodecModel, path: str | Path, expected_sha256: str | None = None,
                         sha256_prefix: str = "") -> str:
    """Load an EnCodec 24 kHz state dict file into ``model``; return the file's SHA-256.

    ``expected_sha256`` (64 hex) must match the whole digest; ``sha256_prefix`` only its start.

    Raises InputError (naming ``path``) when the file is missing, unreadable, has the wrong
    checksum, or does not match the architecture key for key and shape for shape.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "EnCodec weights file not found")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise InputError(path, f"checksum mismatch: expected {expected_sha256.lower()}, got {digest}")
    if not digest.startswith(sha256_prefix):
        raise InputError(path, f"checksum mismatch: expected {sha256_prefix}…, got {digest}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a usable state dict"
        raise InputError(path, f"cannot be read as a torch state dict ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "is not a state dict of tensors")
    problems = _shape_problems(model, state)
    if problems:
        raise InputError(path, "does not match the EnCodec 24 kHz model: " + "; ".join(problems))
    model.load_state_dict(state)
    return digest


def load_pretrained(model: EncodecModel) -> str:
    """Load the official weights from the torch hub cache (or download them); return the weights id."""
    cache = pretrained_cache_path()
    if not cache.is_file():
        log.info("EnCodec weights not in the torch hub cache (%s); trying to download them", cache)
        try:
            _build(pretrained=True)  # downloads into the cache
        except Exception as err:
            raise InputError(cache, f"pretrained EnCodec weights are not cached and could not be downloaded "
                                    f"({type(err).__name__}: {err}); put {PRETRAINED_FILE} there, set "
                                    f"stimulus.audio.weights to a local file, or use 'demo-random'") from None
    digest = load_state_dict_file(model, cache, sha256_prefix=PRETRAINED_SHA256_PREFIX)
    return f"{PRETRAINED_FILE} sha256={digest}"


def _seeding_latents(model: EncodecModel, audio: np.ndarray) -> torch.Tensor:
    """Encoder latents (n_frames, 128) float32 of a bounded, evenly spread sample of ``audio``.

    At most SEED_WINDOWS windows of SEED_WINDOW_S seconds are encoded (the whole audio when it is
    shorter), so seeding costs the same for a 2-minute demo and a 50-minute movie.
    """
    window = int(SEED_WINDOW_S * model.sample_rate) // HOP * HOP
    if len(audio) <= SEED_WINDOWS * window:
        pieces = [audio]
    else:  # window starts on the hop grid, spread from the start to the end of the audio
        starts = np.linspace(0, len(audio) - window, SEED_WINDOWS).astype(np.int64) // HOP * HOP
        pieces = [audio[s: s + window] for s in starts]
    latents = []
    with torch.inference_mode():
        for piece in pieces:
            x = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32)).view(1, 1, -1)
            latents.append(model.encoder(x)[0].T)  # (frames, 128)
    return torch.cat(latents)


def nearest_codeword(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (n,) int64 of the codeword (rows of ``codebook``, (1024, d)) nearest to each row of x (n, d).

    EnCodec's rule (squared Euclidean distance), computed in float64: in float32, |x|^2 - 2 x.e + |e|^2
    loses most of its digits to cancellation, so near-ties would be decided by rounding, which
    changes with the number of frames in a batch (and chunked codes would differ from one-shot ones).
    """
    x, codebook = x.double(), codebook.double()
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)
    return dist.argmin(1)


def seed_codebooks(model: EncodecModel, audio: np.ndarray, seed: int) -> None:
    """DEMO ONLY: fill every residual-VQ codebook from latent frames of ``audio`` (float32, 24 kHz).

    Codeword k of layer 1 is the midpoint of latent frames i_k and i_k + 1 plus a small jitter
    (JITTER of the latents' RMS), with the i_k and the jitter drawn by ``np.random.default_rng(seed)``.
    Never a frame itself: the seeding frames are frames the stage will encode, and a frame equal to
    a codeword (say, two identical frames of silence) leaves a zero residual whose deeper codes
    would then be decided by float rounding. Each latent's residual (latent minus its nearest
    codeword) then seeds layer 2 the same way, and so on, like EnCodec's k-means initialisation
    without the k-means iterations. Runs on the CPU, so the codebooks do not depend on the device.
    """
    rng = np.random.default_rng(seed)
    residual = _seeding_latents(model, audio).double()
    n = residual.shape[0]
    if n < 2:
        raise ValueError(f"demo-random seeding needs at least 2 latent frames ({2 * HOP} samples), got {n}")
    with torch.inference_mode():
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            i = torch.from_numpy(rng.choice(n - 1, size=book.codebook_size, replace=n - 1 < book.codebook_size))
            jitter = torch.from_numpy(rng.standard_normal(tuple(book.embed.shape)))
            codewords = (residual[i] + residual[i + 1]) / 2 + JITTER * residual.pow(2).mean().sqrt() * jitter
            codewords = codewords.float().double()  # as stored, so residuals match those of encoding
            # The buffers EuclideanCodebook keeps: inited stops k-means from running in training mode;
            # embed_avg / cluster_size make the EMA update consistent with embed.
            book.embed.copy_(codewords)
            book.embed_avg.copy_(codewords)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
            residual = residual - codewords[nearest_codeword(residual, codewords)]


def audio_fingerprint(audio: np.ndarray) -> str:
    """Short SHA-256 of float32 samples: identifies the audio a demo codebook was seeded from."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:16]
