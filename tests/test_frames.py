"""extract_frames: frames land in the TR their timestamp falls in, match an independent decode,
and bad movies fail clearly without leaving partial output."""

import json
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from giblet.errors import InputError
from giblet.stimulus.frames import extract_frames, frames_per_tr, preview_frames

WIDTH, HEIGHT, BITS = 160, 90, 16  # 16 blocks of 10 px: each frame shows its index in binary


def numbered_frame(k: int) -> np.ndarray:
    bits = (k >> np.arange(BITS)) & 1
    row = np.repeat(bits * 255, WIDTH // BITS).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], HEIGHT, 0), 3, 2)


def read_number(frame: np.ndarray) -> int:
    blocks = frame.mean(axis=(0, 2)).reshape(BITS, WIDTH // BITS).mean(axis=1) > 128
    return int((blocks.astype(int) << np.arange(BITS)).sum())


def write_numbered_clip(path, times_s, fps=25, faststart=False):
    """A clip whose frame k is shown at times_s[k] and draws k. Returns path."""
    from giblet.demo.movie import stream_rate

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=stream_rate(fps), options={"crf": "10", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30000)
        for k, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(numbered_frame(k), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 30000)), Fraction(1, 30000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def params(skip=1, width=WIDTH, height=HEIGHT):
    return {"enabled": True, "width": width, "height": height, "frame_skip": skip}


def expected_numbers(times_s, tr, n_trs, skip, slots):
    """Reference assignment: frames whose time lies in [i*tr, (i+1)*tr), every skip-th, padded."""
    out = np.zeros((n_trs, slots), dtype=int)
    for i in range(n_trs):
        window = [k for k, t in enumerate(times_s) if i * tr <= t + 1e-9 < (i + 1) * tr][::skip][:slots]
        out[i] = window + [window[-1]] * (slots - len(window))
    return out


@pytest.mark.parametrize("fps, skip", [(25, 1), (25, 3), (30000 / 1001, 1), (30000 / 1001, 4)])
def test_each_tr_holds_the_frames_whose_timestamps_fall_in_it(tmp_path, fps, skip):
    tr, seconds = 1.5, 9.0
    times = np.arange(int(np.ceil(seconds * fps))) / fps
    clip = write_numbered_clip(tmp_path / "clip.mp4", times, fps)
    out = extract_frames(clip, tmp_path / "out" / "frames.npy", tr, params(skip), progress=False)
    frames = np.load(out)
    slots = frames_per_tr(fps, tr, skip)
    n_trs = int(np.floor(len(times) / fps / tr))  # floor(duration / tr)
    assert n_trs == 6
    assert frames.shape == (n_trs, slots, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    found = np.array([[read_number(f) for f in tr_frames] for tr_frames in frames])
    np.testing.assert_array_equal(found, expected_numbers(times, tr, n_trs, skip, slots))


def test_variable_frame_rate_uses_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.02, 0.07, size=200))  # 20-50 fps, irregular
    times = times[times < 7.4] - times[0]
    clip = write_numbered_clip(tmp_path / "vfr.mp4", times)
    tr = 1.5
    out = extract_frames(clip, tmp_path / "frames.npy", tr, params(1), progress=False)
    frames = np.load(out)
    sidecar = json.loads((tmp_path / "frames.json").read_text())
    for i in range(len(frames)):
        for f in frames[i]:
            k = read_number(f)
            assert i * tr <= times[k] + 1e-6 < (i + 1) * tr, f"frame {k} at {times[k]:.3f} s in TR {i}"
    assert sidecar["frames_in_window"]["min"] < sidecar["frames_in_window"]["max"]


def test_a_tr_without_frames_shows_the_previous_trs_last_frame(tmp_path):
    """A gap in a variable-frame-rate movie spans TR 2 ([3, 4.5) s): the picture has not changed, so
    TR 2 repeats TR 1's last frame in every slot (giblet.stimulus.frames.slot_sources)."""
    times = np.concatenate([np.arange(0, 2.95, 0.1), np.arange(4.6, 7.45, 0.1)])
    clip = write_numbered_clip(tmp_path / "gap.mp4", times, fps=10)
    frames = np.load(extract_frames(clip, tmp_path / "frames.npy", 1.5, params(1), progress=False))
    found = np.array([[read_number(f) for f in tr_frames] for tr_frames in frames])
    tr1 = [k for k, t in enumerate(times) if 1.5 <= t < 3.0]
    assert found[1][0] == tr1[0] and found[1][-1] in tr1  # (the header's mean rate gives fewer slots)
    assert (found[2] == found[1][-1]).all()
    assert found[3][0] == min(k for k, t in enumerate(times) if 4.5 <= t < 6.0)
    assert json.loads((tmp_path / "frames.json").read_text())["empty_trs_filled"] == 1


def test_frames_match_an_independent_ffmpeg_decode(small_demo, tmp_path):
    """imageio-ffmpeg's own ffmpeg binary, scaling with the same area filter, gives the same pixels."""
    import imageio_ffmpeg

    movie, tr = small_demo["movie"], small_demo["config"]["tr"]
    width, height = 32, 18
    out = extract_frames(movie, tmp_path / "frames.npy", tr, params(1, width, height), progress=False)
    ours = np.load(out)
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(movie), "-vf",
                          f"scale={width}:{height}:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    fps = small_demo["config"]["demo"]["video"]["fps"]
    times = np.arange(len(reference)) / fps
    index = expected_numbers(times, tr, ours.shape[0], 1, ours.shape[1])
    difference = np.abs(ours.astype(float) - reference[index].astype(float))
    assert difference.mean() < 2.0, difference.mean()
    # The comparison can fail: one frame off in time is far from the reference.
    shifted = np.abs(ours[:, 1:].astype(float) - reference[index[:, :-1]].astype(float)).mean()
    assert shifted > difference.mean() + 0.5


def test_sidecar_and_preview(small_demo, tmp_path):
    tr = small_demo["config"]["tr"]
    out = extract_frames(small_demo["movie"], tmp_path / "frames.npy", tr, params(4, 32, 18), progress=False)
    sidecar = json.loads((tmp_path / "frames.json").read_text())
    frames = np.load(out, mmap_mode="r")
    assert sidecar["shape"] == list(frames.shape) and sidecar["dtype"] == "uint8"
    assert sidecar["n_trs"] == small_demo["config"]["demo"]["n_trs"] == frames.shape[0]
    assert sidecar["frames_per_tr"] == 10 and sidecar["parameters"]["frame_skip"] == 4
    assert len(sidecar["sources"]["movie"]["sha256"]) == 64
    from PIL import Image

    grid = preview_frames(out, tmp_path / "grid.png", first_tr=2, n_trs=3)
    assert Image.open(grid).size == (10 * 32, 3 * 18)
    np.testing.assert_array_equal(np.asarray(Image.open(grid))[:18, :32], frames[2, 0])
    video = preview_frames(out, tmp_path / "clip.mp4", first_tr=0, n_trs=3)
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30


def _assert_untouched(directory, before):
    assert sorted(p.name for p in directory.iterdir()) == before


def test_corrupt_movie_fails_naming_the_file(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("earlier")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a movie" * 1000)
    with pytest.raises(InputError, match="bad.mp4: cannot be read as a movie"):
        extract_frames(bad, out_dir / "frames.npy", 1.5, params(), progress=False)
    with pytest.raises(InputError, match="missing.mp4: file not found"):
        extract_frames(tmp_path / "missing.mp4", out_dir / "frames.npy", 1.5, params(), progress=False)
    _assert_untouched(out_dir, ["keep.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "out"]


def test_truncated_movie_fails_and_leaves_nothing(tmp_path):
    clip = write_numbered_clip(tmp_path / "full.mp4", np.arange(300) / 25, faststart=True)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # headers intact (faststart), half the frames gone
    with pytest.raises(InputError, match=r"cut.mp4: .*(truncated|corrupt)"):
        extract_frames(cut, tmp_path / "out" / "frames.npy", 1.5, params(), progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_movie_without_video_or_too_short(tmp_path):
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=24000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 24000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InputError, match="audio.m4a: has no video stream"):
        extract_frames(audio_only, tmp_path / "frames.npy", 1.5, params(), progress=False)
    short = write_numbered_clip(tmp_path / "short.mp4", np.arange(20) / 25)
    with pytest.raises(InputError, match="short.mp4: is 0.80 s long, shorter than one TR"):
        extract_frames(short, tmp_path / "frames.npy", 1.5, params(), progress=False)
    assert not (tmp_path / "frames.npy").exists()
