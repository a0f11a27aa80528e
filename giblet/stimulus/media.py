"""What a movie file holds: streams, duration, rates. Every stimulus stage probes through here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from giblet.errors import InputError


@dataclass(frozen=True)
class MovieInfo:
    path: Path
    duration_s: float  # of the video stream when there is one, else of the audio stream
    has_video: bool
    has_audio: bool
    fps: float | None = None  # average frame rate of the video stream
    width: int | None = None
    height: int | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    audio_duration_s: float | None = None  # of the audio stream, which may differ from the video's


def _stream_duration(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def open_media(path: str | Path):
    """``av.open`` for reading, turning a missing or unreadable file into an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(path, f"cannot be read as a movie ({err})") from None


def probe_movie(path: str | Path) -> MovieInfo:
    """Streams, duration and rates of a movie, from its headers (no decoding)."""
    path = Path(path)
    with open_media(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise InputError(path, "has neither a video nor an audio stream")
        duration = _stream_duration(video or audio, container)
        if duration is None or duration <= 0:
            raise InputError(path, "has no usable duration in its headers")
        return MovieInfo(
            path=path, duration_s=duration, has_video=video is not None, has_audio=audio is not None,
            fps=float(video.average_rate) if video is not None and video.average_rate else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            audio_rate=audio.rate if audio is not None else None,
            audio_channels=audio.channels if audio is not None else None,
            audio_duration_s=_stream_duration(audio, container) if audio is not None else None,
        )
