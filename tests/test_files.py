"""Outputs appear whole or not at all, and never damage what was there."""

import pytest

from giblet import files


def test_atomic_output_dir_moves_files_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with files.atomic_output_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("new")
        (tmp / "b.txt").write_text("new")
        assert not (out / "b.txt").exists()  # nothing visible before the end
    assert (out / "sub" / "a.txt").read_text() == "new" and (out / "b.txt").read_text() == "new"
    assert (out / "keep.txt").read_text() == "earlier work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_output_dir_leaves_everything_as_it_was_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("earlier work")
    with pytest.raises(RuntimeError):
        with files.atomic_output_dir(out) as tmp:
            (tmp / "b.txt").write_text("half-written")
            (tmp / "c.txt").write_text("half-written")
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert (out / "b.txt").read_text() == "earlier work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_demo_generation_leaves_no_partial_output(tmp_path, monkeypatch, small_config):
    """A crash after the movie and one subject were written: nothing of it appears."""
    from giblet.demo import generate
    from giblet.demo.generate import make_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "movie.mp4").write_bytes(b"the movie from an earlier, complete run")
    calls = []

    def failing_write_bold(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(path, *args, **kwargs)

    original = generate.write_bold
    monkeypatch.setattr(generate, "write_bold", failing_write_bold)
    with pytest.raises(OSError, match="disk full"):
        make_demo(small_config["demo"], small_config["tr"], out, progress=False)
    assert [p.name for p in out.iterdir()] == ["movie.mp4"]
    assert (out / "movie.mp4").read_bytes() == b"the movie from an earlier, complete run"
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]

