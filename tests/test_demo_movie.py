"""The demo movie and annotations: decodable, of the declared shape, and driven by the latents."""

import csv

import av
import numpy as np
import pytest

from giblet.demo.latents import ACTIONS, CHARACTERS, PLACES


def _decode_video(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames, rate


def _decode_audio(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return samples, rate, channels


def test_movie_has_declared_duration_fps_size_and_audio_rate(small_demo):
    demo = small_demo["config"]["demo"]
    duration = demo["n_trs"] * small_demo["config"]["tr"]
    frames, rate = _decode_video(small_demo["movie"])
    assert float(rate) == demo["video"]["fps"]
    assert frames.shape == (round(duration * demo["video"]["fps"]), demo["video"]["height"],
                            demo["video"]["width"], 3)
    samples, sample_rate, channels = _decode_audio(small_demo["movie"])
    assert sample_rate == demo["audio"]["sample_rate"] and channels == 2
    # AAC may pad the end to a whole 1024-sample frame, never more.
    assert 0 <= samples.shape[1] - duration * sample_rate <= 1024


def test_disk_position_follows_the_x_latent(small_demo):
    """Find the disk in each decoded frame; its horizontal centre must track the x latent."""
    from giblet.demo.movie import FrameRenderer

    frames, rate = _decode_video(small_demo["movie"])
    truth = np.load(small_demo["truth"])
    times = np.arange(len(frames)) / float(rate)
    x_latent = np.interp(times, np.arange(len(truth["visual_latents"])) * truth["latent_dt"],
                         truth["visual_latents"][:, 0])
    renderer = FrameRenderer(frames.shape[2], frames.shape[1])
    expected_cx = np.array([renderer.disk_geometry(x, 0.5, 0.5)[0] for x in x_latent])
    # The background is flat: the disk is where a pixel differs most from the frame's modal colour.
    background = np.median(frames.reshape(len(frames), -1, 3), axis=1)
    distance = np.abs(frames.astype(np.int16) - background[:, None, None, :]).sum(-1)
    found_cx = np.array([np.mean(np.nonzero(d > 60)[1]) if (d > 60).any() else np.nan for d in distance])
    ok = np.isfinite(found_cx)
    assert ok.mean() > 0.95
    assert np.corrcoef(found_cx[ok], expected_cx[ok])[0, 1] > 0.97
    assert np.median(np.abs(found_cx[ok] - expected_cx[ok])) < 2.0  # pixels


def test_sound_level_follows_the_loudness_latent(small_demo):
    samples, rate, _ = _decode_audio(small_demo["movie"])
    truth = np.load(small_demo["truth"])
    tr = float(truth["tr"])
    per_tr = int(rate * tr)
    n = samples.shape[1] // per_tr
    rms_db = 20 * np.log10(np.sqrt((samples[0, : n * per_tr].reshape(n, per_tr) ** 2).mean(1)))
    loud = truth["auditory_latents"][:, 1]
    step = int(round(tr / float(truth["latent_dt"])))
    loud_per_tr = loud[: n * step].reshape(n, step).mean(1)
    assert np.corrcoef(rms_db, loud_per_tr)[0, 1] > 0.8


def test_annotations_describe_the_scene_latents(small_demo):
    demo = small_demo["config"]["demo"]
    with open(small_demo["annotations"]) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows and list(rows[0]) == ["onset", "offset", "text"]
    truth = np.load(small_demo["truth"])
    codes, dt = truth["scene_codes"], float(truth["latent_dt"])
    duration = demo["n_trs"] * small_demo["config"]["tr"]
    for row in rows:
        onset, offset = float(row["onset"]), float(row["offset"])
        assert 0 <= onset < offset <= duration + 1e-9
        if offset < duration:  # the last segment is cut by the end of the movie
            assert demo["scenes"]["min_segment_s"] - dt <= offset - onset <= demo["scenes"]["max_segment_s"] + dt
        character, place, action = codes[int(round((onset + offset) / 2 / dt))]
        assert CHARACTERS[character] in row["text"]
        assert PLACES[place] in row["text"] and ACTIONS[action] in row["text"]
    # Gaps (no annotation) exist and are masked as -1 in the truth.
    assert (codes[:, 0] == -1).any()
    onsets = np.array([float(r["onset"]) for r in rows])
    assert np.all(np.diff(onsets) > 0)


@pytest.mark.slow
def test_same_seed_gives_identical_files_and_another_seed_does_not(small_demo, tmp_path):
    from giblet.demo.generate import make_demo

    config = small_demo["config"]
    again = make_demo(config["demo"], config["tr"], tmp_path / "again", progress=False)
    for key in ("movie", "annotations", "bold"):
        for a, b in zip(np.atleast_1d(small_demo[key]), np.atleast_1d(again[key])):
            assert open(a, "rb").read() == open(b, "rb").read(), f"{a.name} differs between runs"
    first, second = np.load(small_demo["truth"]), np.load(again["truth"])
    assert set(first.files) == set(second.files)
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    other = make_demo({**config["demo"], "seed": 1}, config["tr"], tmp_path / "other", progress=False)
    assert not np.array_equal(np.load(other["truth"])["signal"], first["signal"])
    assert open(other["movie"], "rb").read() != open(small_demo["movie"], "rb").read()
