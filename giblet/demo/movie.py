"""Render the demo movie from the latents: H.264 video + AAC audio in an mp4, with PyAV.

Picture: a flat background whose colour is set by the scene's place (a change of place is a scene
cut) and scaled by the ``brightness`` latent, and a disk whose centre, radius and hue follow the
``x``, ``y``, ``size`` and ``hue`` latents.

Sound: a harmonic tone whose pitch (110-880 Hz, log scale) and level (-30 to -6 dBFS) follow the
``pitch`` and ``loudness`` latents, mixed with white noise in the proportion of ``noisiness``.
Stereo with identical channels, like a film soundtrack downmixed later.

The movie is rendered and muxed one TR at a time, so memory stays flat for any length.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import av
import numpy as np

from giblet.demo.latents import Latents
from giblet.logs import progress as progress_bar

PLACE_COLOURS = np.array(
    [(200, 170, 120), (90, 100, 120), (120, 80, 60), (230, 200, 40), (60, 140, 70)], dtype=np.float32
)
# ultrafast: the flat synthetic picture compresses well anyway, and encoding dominates render time.
VIDEO_CODEC_OPTIONS = {"crf": "18", "preset": "ultrafast"}
AUDIO_BIT_RATE = 128_000


def _latents_at(latents: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
    """Linearly interpolate fine-grid latents (n_fine, k) at ``times`` (s) -> (len(times), k)."""
    grid = np.arange(latents.shape[0]) * dt
    return np.stack([np.interp(times, grid, col) for col in latents.T], axis=1)


def hue_to_rgb(hue: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.85, 1.0)
    return 255 * r, 255 * g, 255 * b


class FrameRenderer:
    """Draws frames of ``height`` x ``width`` from per-frame latent values."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.cols = np.arange(width, dtype=np.float32)
        self.rows = np.arange(height, dtype=np.float32)

    def disk_geometry(self, x: float, y: float, size: float) -> tuple[float, float, float]:
        """Centre (cx, cy) and radius in pixels; the disk never leaves the frame."""
        return (self.width * (0.15 + 0.7 * x), self.height * (0.15 + 0.7 * y),
                self.height * (0.06 + 0.14 * size))

    def render(self, visual: np.ndarray, place: int) -> np.ndarray:
        """One RGB frame, uint8 (height, width, 3), from the 5 visual latents and the place index."""
        x, y, size, hue, brightness = visual
        frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
        frame[:] = (PLACE_COLOURS[place] * (0.35 + 0.65 * brightness)).astype(np.uint8)
        cx, cy, r = self.disk_geometry(x, y, size)
        # Only the disk's bounding box needs the distance test.
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, self.height)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, self.width)
        inside = (self.cols[x0:x1] - cx) ** 2 + ((self.rows[y0:y1] - cy) ** 2)[:, None] <= r * r
        frame[y0:y1, x0:x1][inside] = hue_to_rgb(hue)
        return frame


class SoundSynth:
    """Synthesizes the soundtrack chunk by chunk, keeping the oscillator phase continuous."""

    def __init__(self, sample_rate: int, rng: np.random.Generator):
        self.rate, self.rng, self.phase = sample_rate, rng, 0.0

    def render(self, auditory: np.ndarray) -> np.ndarray:
        """Mono float32 samples in [-1, 1] from per-sample latents (n, 3): pitch, loudness, noisiness."""
        pitch, loudness, noisiness = auditory.T
        freq = 110.0 * 2.0 ** (3.0 * pitch)
        phase = self.phase + 2 * np.pi * np.cumsum(freq) / self.rate
        self.phase = float(phase[-1] % (2 * np.pi))
        tone = (np.sin(phase) + 0.3 * np.sin(2 * phase)) / 1.3
        noise = np.clip(0.35 * self.rng.standard_normal(len(phase)), -1, 1)
        mix = 0.8 * noisiness
        level = 10.0 ** ((-30.0 + 24.0 * loudness) / 20.0)
        return (level * ((1 - mix) * tone + mix * noise)).astype(np.float32)


def write_movie(path: str | Path, latents: Latents, duration_s: float, tr: float, video: dict,
                sample_rate: int, rng: np.random.Generator, progress: bool = True) -> dict:
    """Render and write ``path`` (mp4). Returns a description: frame and sample counts, codecs."""
    fps = video["fps"]
    n_frames, n_samples = int(round(duration_s * fps)), int(round(duration_s * sample_rate))
    renderer = FrameRenderer(video["width"], video["height"])
    synth = SoundSynth(sample_rate, rng)
    places = latents.place_per_sample()
    n_chunks = int(np.ceil(duration_s / tr))

    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=stream_rate(fps), options=VIDEO_CODEC_OPTIONS)
        vstream.width, vstream.height, vstream.pix_fmt = video["width"], video["height"], "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate, layout="stereo")
        astream.bit_rate = AUDIO_BIT_RATE
        for chunk in progress_bar(range(n_chunks), "render movie", "TR", progress):
            frames = np.arange(int(round(chunk * tr * fps)), min(int(round((chunk + 1) * tr * fps)), n_frames))
            visual = _latents_at(latents.visual, frames / fps, latents.dt)
            fine_index = np.minimum((frames / fps / latents.dt).astype(np.int64), latents.n_fine - 1)
            for j, values, place in zip(frames, visual, places[fine_index]):
                frame = av.VideoFrame.from_ndarray(renderer.render(values, place), format="rgb24")
                frame.pts = int(j)
                container.mux(vstream.encode(frame))

            start = int(round(chunk * tr * sample_rate))
            stop = min(int(round((chunk + 1) * tr * sample_rate)), n_samples)
            samples = synth.render(_latents_at(latents.auditory, np.arange(start, stop) / sample_rate,
                                               latents.dt))
            aframe = av.AudioFrame.from_ndarray(np.stack([samples, samples]), format="fltp", layout="stereo")
            aframe.sample_rate, aframe.pts = sample_rate, start
            container.mux(astream.encode(aframe))
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))
    return {"n_frames": n_frames, "fps": fps, "width": video["width"], "height": video["height"],
            "n_audio_samples": n_samples, "sample_rate": sample_rate, "audio_channels": 2,
            "video_codec": "h264", "audio_codec": "aac"}


def stream_rate(fps: float):
    """PyAV wants an int or a Fraction for the stream rate; 29.97 becomes 30000/1001."""
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
