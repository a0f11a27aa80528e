"""Hidden latent time series that drive the demo movie and the demo brains.

Three groups of latents, mutually independent, on a fine time grid (step ``dt``, t = 0 first):

- **visual** (continuous, in [0, 1]): position x, position y, size and hue of a moving disk, and
  the overall brightness;
- **auditory** (continuous, in [0, 1]): pitch, loudness and noisiness of the soundtrack;
- **scenes** (discrete): a sequence of segments of a few seconds, each with a character, a place
  and an action; some segments are gaps with no annotation.

Continuous latents are smooth Gaussian processes (two cascaded Ornstein-Uhlenbeck filters) mapped to
a uniform marginal with the normal CDF, so every value of a latent is equally common.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr

VISUAL_NAMES = ("x", "y", "size", "hue", "brightness")
AUDITORY_NAMES = ("pitch", "loudness", "noisiness")
CHARACTERS = ("Ada", "Bruno", "Chidi", "Dora", "Emil")
PLACES = ("kitchen", "street", "library", "taxi", "garden")
ACTIONS = ("reads a letter", "runs", "argues", "laughs", "waits", "makes a phone call")

# Time constants (s) of the smooth processes: visual changes over seconds, sound a little faster.
VISUAL_TAU_S = 3.0
AUDITORY_TAU_S = 2.0
# At a segment boundary each scene variable changes with this probability (places change rarest:
# a change of place is a scene cut).
CHANGE_PROBABILITY = {"character": 0.6, "place": 0.3, "action": 0.8}


@dataclass
class Segments:
    """Annotation segments on the fine grid.

    All arrays have shape (n_segments,); onsets/offsets are fine-grid sample indices, so
    ``onset * dt`` is the time in seconds. Character, place and action are defined in every
    segment (the story goes on), but a gap segment has no annotation, so its words are unseen.
    """

    onset: np.ndarray
    offset: np.ndarray
    character: np.ndarray
    place: np.ndarray
    action: np.ndarray
    is_gap: np.ndarray


@dataclass
class Latents:
    dt: float
    visual: np.ndarray  # (n_fine, 5) float32 in [0, 1]
    auditory: np.ndarray  # (n_fine, 3) float32 in [0, 1]
    segments: Segments

    @property
    def n_fine(self) -> int:
        return self.visual.shape[0]

    def scene_codes(self) -> np.ndarray:
        """Per fine sample, (character, place, action) indices; (n_fine, 3) int, -1 in gaps."""
        codes = np.full((self.n_fine, 3), -1, dtype=np.int64)
        seg = self.segments
        for i in np.flatnonzero(~seg.is_gap):
            codes[seg.onset[i] : seg.offset[i]] = (seg.character[i], seg.place[i], seg.action[i])
        return codes

    def place_per_sample(self) -> np.ndarray:
        """The place of every fine sample, gaps included (the set does not vanish in a gap)."""
        seg = self.segments
        return np.repeat(seg.place, seg.offset - seg.onset)


def smooth_uniform(rng: np.random.Generator, n: int, k: int, dt: float, tau_s: float) -> np.ndarray:
    """k independent smooth processes of n samples with a Uniform(0, 1) marginal.

    White noise through two cascaded first-order low-pass filters (time constant ``tau_s``), started
    after a burn-in of 10 tau so the start is stationary, standardized, then mapped through the
    normal CDF.
    """
    burn = int(np.ceil(10 * tau_s / dt))
    a = np.exp(-dt / tau_s)
    noise = rng.standard_normal((n + burn, k))
    smooth = lfilter([1 - a], [1, -a], lfilter([1 - a], [1, -a], noise, axis=0), axis=0)[burn:]
    smooth = (smooth - smooth.mean(0)) / smooth.std(0)
    return ndtr(smooth).astype(np.float32)


def scene_segments(
    rng: np.random.Generator, n: int, dt: float, min_s: float, max_s: float, gap_fraction: float
) -> Segments:
    """Contiguous segments covering [0, n*dt) with durations ~ U(min_s, max_s) on the dt grid."""
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(bounds[-1] + max(1, int(round(rng.uniform(min_s, max_s) / dt))))
    bounds[-1] = n
    n_seg = len(bounds) - 1
    values = {"character": [rng.integers(len(CHARACTERS))], "place": [rng.integers(len(PLACES))],
              "action": [rng.integers(len(ACTIONS))]}
    sizes = {"character": len(CHARACTERS), "place": len(PLACES), "action": len(ACTIONS)}
    for _ in range(n_seg - 1):
        for name, seq in values.items():
            if rng.random() < CHANGE_PROBABILITY[name]:
                # Change to a different value, uniformly among the others.
                seq.append((seq[-1] + rng.integers(1, sizes[name])) % sizes[name])
            else:
                seq.append(seq[-1])
    is_gap = rng.random(n_seg) < gap_fraction
    is_gap[0] = False  # the movie opens on an annotated scene
    arrays = {name: np.array(seq, dtype=np.int64) for name, seq in values.items()}
    return Segments(onset=np.array(bounds[:-1]), offset=np.array(bounds[1:]), is_gap=is_gap, **arrays)


def make_latents(rng: np.random.Generator, duration_s: float, dt: float, scenes: dict) -> Latents:
    """All latents for a movie of ``duration_s`` seconds on a grid of step ``dt``."""
    n = int(round(duration_s / dt))
    visual = smooth_uniform(rng, n, len(VISUAL_NAMES), dt, VISUAL_TAU_S)
    auditory = smooth_uniform(rng, n, len(AUDITORY_NAMES), dt, AUDITORY_TAU_S)
    segments = scene_segments(rng, n, dt, scenes["min_segment_s"], scenes["max_segment_s"],
                              scenes["gap_fraction"])
    return Latents(dt=dt, visual=visual, auditory=auditory, segments=segments)


def annotation_text(rng: np.random.Generator, character: int, place: int, action: int) -> str:
    """A one-sentence scene description; the wording varies, the meaning is the latent."""
    who, where, what = CHARACTERS[character], PLACES[place], ACTIONS[action]
    templates = (f"{who} {what} in the {where}.", f"In the {where}, {who} {what}.",
                 f"{who} {what}; the scene is set in the {where}.")
    return templates[rng.integers(len(templates))]
