"""Video frames per TR: one sequential decode, frames assigned to TRs by their timestamps.

Output: uint8 ``(T, frames_per_tr, height, width, 3)`` RGB, written TR by TR into the ``.npy``
(:class:`TrWriter`) so a feature-length movie never has to fit in RAM. Frames are scaled on a
worker thread while the next ones decode (:func:`write_scaled`).

TR ``i`` holds the frames whose presentation time lies in ``[i*tr, (i+1)*tr)``: every
``frame_skip``-th of them, starting with the first. ``frames_per_tr = ceil(fps * tr / frame_skip)``
from the nominal frame rate; a window that holds fewer frames (the rate does not divide the TR, or
the rate varies) repeats its last frame in the spare slots, and a window with more (variable frame
rate) drops its extras. The sidecar counts both. Timestamps, not frame counts, decide, so 25,
29.97 and variable frame rates all land in the right TR.

The sampling (:func:`sample_frames`, :func:`slot_sources`) is shared with ``embed_frames``
(:mod:`giblet.stimulus.frame_features`), which embeds the very same frames with CLIP.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from giblet.errors import InputError
from giblet.files import atomic_output_dir, write_sidecar
from giblet.logs import progress as progress_bar
from giblet.stimulus.media import open_media, probe_movie
from giblet.timing import n_trs as count_trs
from giblet.timing import tr_index

log = logging.getLogger(__name__)

# Area averaging: the right filter for downscaling (no aliasing of fine detail).
INTERPOLATION = "AREA"
# Frames handed to the scaling thread at a time, and batches in flight: measured on 2 cores, 8 and 2
# beat 4, 16 and 38 (a whole TR), and keep at most 24 decoded frames alive (write_scaled).
SCALE_BATCH, SCALE_AHEAD = 8, 2


def frames_per_tr(fps: float, tr: float, frame_skip: int) -> int:
    """Frame slots per TR: ``ceil(fps * tr / frame_skip)`` (38 for 25 fps, 1.5 s, skip 1)."""
    return max(1, math.ceil(fps * tr / frame_skip - 1e-6))


@dataclass
class FrameCounts:
    """What one decode of a movie found on a grid of ``n`` TRs (filled in while :func:`sample_frames` runs).

    Attributes
    ----------
    kept : ndarray of int64, shape (n,)
        Frames kept per TR (written to slots ``0 .. kept[i] - 1``).
    seen : ndarray of int64, shape (n,)
        Frames whose timestamp fell in each TR's window.
    dropped : int
        Kept frames beyond a TR's slots (a variable frame rate), not written.
    last_time : float or None
        Timestamp (s, from the container's start) of the last frame decoded.
    """

    kept: np.ndarray
    seen: np.ndarray
    dropped: int = 0
    last_time: float | None = None

    @classmethod
    def zeros(cls, n_trs: int) -> "FrameCounts":
        return cls(np.zeros(n_trs, dtype=np.int64), np.zeros(n_trs, dtype=np.int64))


def sample_frames(movie: Path, tr: float, slots: int, frame_skip: int, counts: FrameCounts,
                  progress: bool = True, desc: str = "extract frames",
                  decode_threads: int = 0) -> Iterator[tuple[int, int, av.VideoFrame]]:
    """Decode ``movie`` once and yield ``(tr_index, slot, frame)`` for every frame the TR grid keeps.

    TR ``i`` keeps every ``frame_skip``-th frame whose timestamp lies in ``[i*tr, (i+1)*tr)``, starting
    with the first, in slots ``0, 1, ...`` up to ``slots``; ``counts`` (its length is the number of
    TRs) records what was kept, seen and dropped. Every stage that samples frames goes through here,
    so ``frames.npy`` and ``frame_features.npy`` hold the same frames. ``decode_threads``: FFmpeg's
    decoding threads (0: its choice, one per core; decoded frames are the same bytes either way).
    Raises InputError naming the movie when a frame has no timestamp or decoding fails.
    """
    n_trs = len(counts.kept)
    current = 0
    with open_media(movie) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: the decode is the bottleneck
        stream.codec_context.thread_count = decode_threads
        # Time 0 is the container's start, the origin the audio codes use too.
        origin = container.start_time / av.time_base if container.start_time is not None else 0.0
        bar = progress_bar(None, desc, "TR", progress, total=n_trs)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    raise InputError(movie, f"frame {frame.index} has no timestamp")
                counts.last_time = frame.time - origin
                i = tr_index(counts.last_time, tr)
                if i >= n_trs:
                    break
                if i < 0:
                    continue
                if i > current:
                    bar.update(i - current)
                    current = i
                position = counts.seen[i]
                counts.seen[i] += 1
                if position % frame_skip:
                    continue
                if counts.kept[i] >= slots:
                    counts.dropped += 1
                    continue
                counts.kept[i] += 1
                yield i, int(counts.kept[i]) - 1, frame
        except av.error.FFmpegError as err:
            where = f" after {counts.last_time:.2f} s" if counts.last_time is not None else ""
            raise InputError(movie, f"video decoding failed{where} ({err}); the file is corrupt") from None
        finally:
            bar.close()


def check_complete(movie: Path, counts: FrameCounts, duration_s: float) -> None:
    """InputError naming ``movie`` when its last TR got no frame: the file ends before its header says."""
    if len(counts.kept) and counts.kept[-1] == 0:
        end = counts.last_time or 0.0
        raise InputError(movie, f"decoded video ends at {end:.2f} s but the header says "
                                f"{duration_s:.2f} s: the file is truncated")


def slot_sources(kept: np.ndarray, slots: int) -> np.ndarray:
    """Which decoded frame every slot shows, int64 ``(T, slots)``: a flat index ``i * slots + s``.

    A TR with fewer frames than slots repeats its last frame in the spare slots; a TR with none (a
    gap in a variable-frame-rate movie: the picture has not changed) shows the previous TR's last
    frame; -1 where there is nothing before (an empty first TR: a black frame).
    """
    n_trs = len(kept)
    sources = np.empty((n_trs, slots), dtype=np.int64)
    for i in range(n_trs):
        if kept[i]:
            sources[i] = i * slots + np.minimum(np.arange(slots), kept[i] - 1)
        else:
            sources[i] = sources[i - 1, -1] if i else -1
    return sources


def sampling_summary(counts: FrameCounts, slots: int) -> dict:
    """The sidecar's account of the sampling: frames per window, repeated slots, filled TRs, drops."""
    empty = np.flatnonzero(counts.kept == 0)
    filled = counts.kept.copy()
    filled[empty[empty > 0]] = 1  # an empty TR shows one (earlier) frame, repeated in its other slots
    return {"frames_in_window": {"min": int(counts.seen.min()), "max": int(counts.seen.max())},
            "repeated_slots": int((slots - np.minimum(filled, slots)).sum()),
            "empty_trs_filled": int(len(empty)), "dropped_frames": counts.dropped}


def write_scaled(sampled: Iterator[tuple[int, int, av.VideoFrame]], writer: "TrWriter", width: int,
                 height: int) -> None:
    """Scale every sampled frame to ``(height, width, 3)`` uint8 RGB and put it in ``writer``, in order,
    both on one worker thread while this thread decodes the next frames.

    Scaling (swscale, which releases the GIL) costs about as much CPU as decoding; done on the
    decoding thread it leaves cores idle while that thread waits for frames. Batches of
    ``SCALE_BATCH`` frames, at most ``SCALE_AHEAD`` of them queued, keep both threads busy, and the
    writes go with the scaling, the lighter of the two. Measured on 2 cores, a 30 s clip, 13 runs
    each: 121-132 ms best and 135-141 ms median with the writes on the worker; 129-140 and 155-156
    with them on the decoding thread; 120-129 and 170-177 for a loop that only decodes and scales.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    # One reformatter for the whole movie: it keeps its scaler context, 10x cheaper than
    # frame.reformat(), which builds a new one per frame. Only the worker thread uses it and writer.
    reformatter = VideoReformatter()

    def scale_and_put(batch):
        for i, slot, frame in batch:
            writer.put(i, slot, reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                                     interpolation=INTERPOLATION).to_ndarray())

    # Leaving the block waits for every queued batch, so nothing writes once this returns or raises.
    with ThreadPoolExecutor(max_workers=1) as pool:
        queued, batch = deque(), []
        for item in sampled:
            batch.append(item)
            if len(batch) == SCALE_BATCH:
                queued.append(pool.submit(scale_and_put, batch))
                batch = []
                while len(queued) > SCALE_AHEAD:
                    queued.popleft().result()
        queued.append(pool.submit(scale_and_put, batch))
        while queued:
            queued.popleft().result()


def movie_grid(movie: Path, tr: float, frame_skip: int):
    """``(info, n_trs, slots)`` of a movie's video on the TR grid; InputError naming the movie when it
    has no video stream, no frame rate or is shorter than one TR."""
    info = probe_movie(movie)
    if not info.has_video:
        raise InputError(movie, "has no video stream")
    if not info.fps:
        raise InputError(movie, "has no frame rate in its headers")
    n_trs = count_trs(info.duration_s, tr)
    if n_trs == 0:
        raise InputError(movie, f"is {info.duration_s:.2f} s long, shorter than one TR ({tr} s)")
    return info, n_trs, frames_per_tr(info.fps, tr, frame_skip)


class TrWriter:
    """Writes ``frames.npy`` TR by TR, in order, straight from the frames' own buffers.

    Spare slots repeat the TR's last frame; a TR without frames shows the previous TR's last frame
    (black at the start), as :func:`slot_sources` says. A TR's frames go out in one ``writev`` (no
    copy into an array of the output, and no memory map: no page fault per page of a fresh file),
    and the disk is started early: a thread runs fdatasync every ``SYNC_EVERY`` bytes while decoding
    goes on, so the final fsync has little left to do.
    """

    SYNC_EVERY = 4 << 20  # measured: the final fsync of 21 MB takes 3 ms instead of 13

    def __init__(self, path: Path, n_trs: int, slots: int, height: int, width: int):
        from concurrent.futures import ThreadPoolExecutor

        self.file = open(path, "wb", buffering=0)
        np.lib.format.write_array_header_1_0(self.file, {"descr": "|u1", "fortran_order": False,
                                                         "shape": (n_trs, slots, height, width, 3)})
        self.n_trs, self.slots = n_trs, slots
        self.frames: list[np.ndarray] = []  # the current TR's, in slot order
        self.previous_last = np.zeros((height, width, 3), dtype=np.uint8)
        self.current = self.unsynced = 0
        self._syncer, self._sync = ThreadPoolExecutor(max_workers=1), None

    def put(self, i: int, slot: int, image: np.ndarray) -> None:
        """Frame ``image`` (H, W, 3) uint8 goes to slot ``slot`` of TR ``i`` (TRs and slots in order)."""
        while self.current < i:
            self._write_tr()
        self.frames.append(np.ascontiguousarray(image))

    def _write_tr(self) -> None:
        last = self.frames[-1] if self.frames else self.previous_last
        buffers = [memoryview(f).cast("B") for f in self.frames + [last] * (self.slots - len(self.frames))]
        total = sum(len(b) for b in buffers)
        done = os.writev(self.file.fileno(), buffers)
        if done < total:  # a short write (rare for a file): the rest one by one
            rest = b"".join(bytes(b) for b in buffers)[done:]
            while rest:
                rest = rest[self.file.write(rest):]
        self.previous_last, self.frames = last, []
        self.current += 1
        self.unsynced += total
        if self.unsynced >= self.SYNC_EVERY and (self._sync is None or self._sync.done()):
            self._sync, self.unsynced = self._syncer.submit(os.fdatasync, self.file.fileno()), 0

    def __enter__(self) -> "TrWriter":
        return self

    def __exit__(self, error_type, *_) -> None:
        """On success, write the TRs left (empty ones at the end) and fsync; then close. After an error
        the file is only closed: the stage's temporary folder goes with it."""
        try:
            if error_type is None:
                while self.current < self.n_trs:
                    self._write_tr()
                if self._sync is not None:
                    self._sync.result()
                os.fsync(self.file.fileno())
        finally:
            self._syncer.shutdown()
            self.file.close()


def extract_frames(movie: str | Path, out_npy: str | Path, tr: float, params: dict,
                   progress: bool = True, threads: int | None = None) -> Path:
    """The ``extract_frames`` stage: write ``out_npy`` (uint8, T x F x H x W x 3) and its sidecar.

    ``params`` is the validated ``stimulus.frames`` config section (width, height, frame_skip).
    ``threads``: the CPUs the job may use (default: this process's); one scales, the rest decode.
    Raises InputError naming the movie when it has no video stream, is corrupt or is truncated.
    """
    from giblet.files import sha256_in_background

    movie, out_npy = Path(movie), Path(out_npy)
    skip, height, width = params["frame_skip"], params["height"], params["width"]
    info, n_trs, slots = movie_grid(movie, tr, skip)
    log.info("%s: %.2f s at %.3f fps -> %d TRs x %d frames of %dx%d", movie, info.duration_s, info.fps,
             n_trs, slots, width, height)
    movie_sha256 = sha256_in_background(movie)  # while it decodes

    with atomic_output_dir(out_npy.parent) as tmp:
        counts = FrameCounts.zeros(n_trs)
        with TrWriter(tmp / out_npy.name, n_trs, slots, height, width) as writer:
            # One thread per CPU in all: FFmpeg's frame threads beside the scaling thread only
            # contend (measured, 2 CPUs: 117 ms for a 30 s clip with one decoding thread, 134 ms
            # with FFmpeg's automatic three).
            decode_threads = max(1, (threads or len(os.sched_getaffinity(0))) - 1)
            sampled = sample_frames(movie, tr, slots, skip, counts, progress, decode_threads=decode_threads)
            write_scaled(sampled, writer, width, height)
        check_complete(movie, counts, info.duration_s)
        frames = np.load(tmp / out_npy.name, mmap_mode="r")
        write_sidecar(tmp / out_npy.name, frames, parameters={**params, "tr": tr},
                      sources={"movie": movie}, packages=("av",), source_hashes={"movie": movie_sha256.result()},
                      extra={
                          "n_trs": n_trs, "duration_s": info.duration_s, "fps": info.fps,
                          "frames_per_tr": slots, "source_size": [info.width, info.height],
                          **sampling_summary(counts, slots), "interpolation": INTERPOLATION,
                      })
        del frames
    return out_npy


def frames_to_grid(frames: np.ndarray, path: str | Path, columns: int = 8) -> Path:
    """Tile frames (N, H, W, 3) uint8 into one PNG, ``columns`` per row (the inverse, for eyes)."""
    from PIL import Image

    frames = np.asarray(frames)
    n, h, w, _ = frames.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * h, min(n, columns) * w, 3), 255, dtype=np.uint8)
    for k, frame in enumerate(frames):
        r, c = divmod(k, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = frame
    Image.fromarray(grid).save(path)
    return Path(path)


def frames_to_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Write frames (N, H, W, 3) uint8 as an H.264 mp4, or an animated GIF if ``path`` ends in .gif."""
    path = Path(path)
    frames = np.asarray(frames)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    from giblet.demo.movie import stream_rate

    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=stream_rate(fps), options={"crf": "18"})
        # yuv420p needs even sizes; pad by one pixel where the frames are odd.
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        for k, image in enumerate(frames):
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def preview_frames(frames_npy: str | Path, out: str | Path, first_tr: int = 0, n_trs: int = 8) -> Path:
    """The inverse of extract_frames: TRs ``[first_tr, first_tr + n_trs)`` as a PNG grid (one row
    per TR) or, for .mp4/.gif, as a movie at the frames' own rate."""
    from giblet.files import read_sidecar

    frames = np.load(frames_npy, mmap_mode="r")
    if not 0 <= first_tr < len(frames):
        raise ValueError(f"{frames_npy}: first_tr {first_tr} is outside 0..{len(frames) - 1}")
    chosen = np.asarray(frames[first_tr:first_tr + n_trs])
    if Path(out).suffix.lower() == ".png":
        return frames_to_grid(chosen.reshape(-1, *chosen.shape[2:]), out, columns=chosen.shape[1])
    sidecar = read_sidecar(frames_npy)
    rate = sidecar["frames_per_tr"] / sidecar["parameters"]["tr"]
    return frames_to_video(chosen.reshape(-1, *chosen.shape[2:]), out, rate)
