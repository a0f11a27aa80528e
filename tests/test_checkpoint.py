"""The checkpoint manager: exact round trips, fallbacks on damaged files, retention, config changes,
the free-disk check and the crash window of the latest/backup rotation."""

from __future__ import annotations

import logging
import os
import random
import shutil
import time

import numpy as np
import pytest
import torch

from giblet.train.checkpoint import CheckpointError, CheckpointManager

bnb = pytest.importorskip("bitsandbytes")


def manager(path, config="cfg-a", **kw):
    kw.setdefault("every_minutes", None)
    return CheckpointManager(path, config, **kw)


def assert_same(a, b, where="state"):
    """Recursive equality; tensors bit-exact (torch.equal), numpy arrays exact."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def trained_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 128)   # 8,192 weights: above AdamW8bit's 4,096 floor, so 8-bit state
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    adam8 = bnb.optim.AdamW8bit(model.parameters(), lr=1e-2)
    for opt in (adamw, adam8):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 64)).pow(2).mean().backward()
            opt.step()
    return model, adamw, adam8


def tiny(step):
    return {"model": {"w": torch.full((4,), float(step))}, "note": f"step {step}"}


def saves(m, steps, epoch=0):
    for s in steps:
        m.save(tiny(s), step=s, epoch=epoch)
    m.wait_for_purge()


def test_round_trip_model_optimizers_rng_metadata(tmp_path):
    model, adamw, adam8 = trained_state()
    assert adam8.state_dict()["state"][0]["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.uint8
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"model": model.state_dict(), "adamw": adamw.state_dict(), "adamw8bit": adam8.state_dict(),
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                     "torch": torch.get_rng_state()},
             "sampler": {"cursor": 1234, "order": [3, 1, 2]}, "history": [{"loss": 0.5}]}
    manager(tmp_path / "ck").save(state, step=7, epoch=1)
    loaded = manager(tmp_path / "ck").load_latest()
    for key in state:
        assert_same(state[key], loaded[key], key)
    assert (loaded["step"], loaded["epoch"], loaded["config_hash"]) == (7, 1, "cfg-a")

    # the restored 8-bit optimizer continues exactly like the original
    model2 = torch.nn.Linear(64, 128)
    model2.load_state_dict(loaded["model"])
    opt2 = bnb.optim.AdamW8bit(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(loaded["adamw8bit"])
    x = torch.randn(8, 64)
    for m, o in ((model, adam8), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert_same(model.state_dict(), model2.state_dict())
    assert_same(adam8.state_dict(), opt2.state_dict())


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("damage, reason", [(truncate, "truncated"), (flip_byte, "checksum mismatch")])
def test_damaged_latest_falls_back_to_backup(tmp_path, caplog, damage, reason):
    saves(manager(tmp_path), range(1, 6))
    damage(tmp_path / "latest.pt")
    with caplog.at_level(logging.WARNING, logger="giblet.train.checkpoint"):
        m = manager(tmp_path)
        state = m.load_latest()
    assert state["step"] == 4 and m.resumed_from() == tmp_path / "latest_backup.pt"
    assert f"latest.pt rejected: {reason}" in caplog.text


class Pickled:
    """Not a tensor, container or number: unpickling it would run code (its class's constructor)."""


def test_a_checkpoint_that_needs_unpickled_code_is_rejected_not_run(tmp_path, caplog):
    m = manager(tmp_path)
    saves(m, range(1, 4))
    m.save({**tiny(4), "object": Pickled()}, step=4, epoch=4)    # weights_only=True refuses it
    with caplog.at_level(logging.WARNING, logger="giblet.train.checkpoint"):
        m = manager(tmp_path)
        state = m.load_latest()
    assert state["step"] == 3 and m.resumed_from() == tmp_path / "latest_backup.pt"
    assert "latest.pt rejected: refused: it holds objects other than tensors" in caplog.text


def test_latest_and_backup_broken_falls_back_to_rolling(tmp_path, caplog):
    saves(manager(tmp_path), range(1, 6))
    for name in ("latest.pt", "latest_backup.pt"):    # replaced by garbage (new files)
        (tmp_path / name).unlink()
        (tmp_path / name).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        m = manager(tmp_path)
        assert m.load_latest()["step"] == 5
    assert m.resumed_from() == tmp_path / "rolling/step-00000005.pt"
    assert "latest_backup.pt rejected: truncated" in caplog.text


def test_corruption_in_place_skips_hard_linked_names(tmp_path, caplog):
    """Rolling files are hard links: damaging latest's bytes in place damages its rolling name too."""
    saves(manager(tmp_path), range(1, 6))
    flip_byte(tmp_path / "latest.pt")
    flip_byte(tmp_path / "latest_backup.pt")
    with caplog.at_level(logging.WARNING):
        m = manager(tmp_path)
        assert m.load_latest()["step"] == 3
    assert "step-00000005.pt rejected: checksum mismatch" in caplog.text


def files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def run_epochs(m, epochs, steps_per_epoch=5, losses=None):
    for e in epochs:
        for i in range(steps_per_epoch):
            s = e * steps_per_epoch + i + 1
            last = i == steps_per_epoch - 1
            m.save(tiny(s), step=s, epoch=e, end_of_epoch=last,
                   val_loss=(losses or {}).get(e) if last else None)
    m.wait_for_purge()


def test_retention_and_resume_never_deletes_resumed_file(tmp_path):
    run_epochs(manager(tmp_path, keep_rolling=3), range(4), losses={0: 3.0, 1: 1.0, 2: 2.0, 3: 4.0})
    expect = ["best.pt", "epoch/epoch-0000.pt", "epoch/epoch-0001.pt", "epoch/epoch-0002.pt",
              "epoch/epoch-0003.pt", "index.json", "latest.pt", "latest.pt.tmp", "latest_backup.pt",
              "rolling/step-00000018.pt", "rolling/step-00000019.pt", "rolling/step-00000020.pt"]
    assert files(tmp_path) == expect

    # a resume from an old rolling file (latest, backup and their rolling links damaged in place)
    flip_byte(tmp_path / "latest.pt")
    flip_byte(tmp_path / "latest_backup.pt")
    m = manager(tmp_path, keep_rolling=3)
    assert m.load_latest()["step"] == 18
    resumed = m.resumed_from()
    assert resumed == tmp_path / "rolling/step-00000018.pt"
    kept = resumed.read_bytes()
    run_epochs(m, range(4, 6))
    rolling = [f for f in files(tmp_path) if f.startswith("rolling/")]
    assert rolling == ["rolling/step-00000018.pt", "rolling/step-00000028.pt",
                       "rolling/step-00000029.pt", "rolling/step-00000030.pt"]
    assert resumed.read_bytes() == kept
    assert len([f for f in files(tmp_path) if f.startswith("epoch/")]) == 6

    # a normal resume from latest.pt: its bytes stay in a pinned rolling file
    m = manager(tmp_path, keep_rolling=3)
    assert m.load_latest()["step"] == 30 and m.resumed_from() == tmp_path / "latest.pt"
    kept = (tmp_path / "latest.pt").read_bytes()
    saves(m, range(31, 40), epoch=6)
    assert (tmp_path / "rolling/step-00000030.pt").read_bytes() == kept
    assert len([f for f in files(tmp_path) if f.startswith("rolling/")]) == 3 + 1


def test_best_tracks_lowest_val_loss(tmp_path):
    m = manager(tmp_path)
    for step, loss in enumerate([3.0, 1.0, 2.0, 0.5, 4.0], start=1):
        m.save(tiny(step), step=step, epoch=step, val_loss=loss)
    assert torch.load(tmp_path / "best.pt", weights_only=False)["step"] == 4
    m2 = manager(tmp_path)          # the best loss survives a resume
    m2.load_latest()
    m2.save(tiny(6), step=6, epoch=6, val_loss=0.7)
    assert torch.load(tmp_path / "best.pt", weights_only=False)["step"] == 4


@pytest.mark.parametrize("drop_index", [False, True])
def test_config_change_moves_old_set_aside(tmp_path, caplog, drop_index):
    ck = tmp_path / "ck"
    run_epochs(manager(ck, "aaaaaaaa1111"), range(2))
    if drop_index:
        (ck / "index.json").unlink()
    before = {f: (ck / f).read_bytes() for f in files(ck) if not f.endswith(".tmp")}  # .tmp: no checkpoint
    with caplog.at_level(logging.WARNING):
        m = manager(ck, "bbbbbbbb2222")
        assert m.load_latest() is None and m.resumed_from() is None
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("ck.stale-aaaaaaaa-")]
    assert len(stale) == 1 and "moved to" in caplog.text
    assert {f: (stale[0] / f).read_bytes() for f in files(stale[0]) if not f.endswith(".tmp")} == before
    assert not list(ck.rglob("*.pt"))
    m.save(tiny(1), step=1, epoch=0)
    assert manager(ck, "bbbbbbbb2222").load_latest()["step"] == 1


def test_should_save_by_steps_and_minutes(tmp_path):
    m = CheckpointManager(tmp_path, "c", every_steps=10, every_minutes=None)
    assert [s for s in range(1, 25) if m.should_save(s)] == list(range(10, 25))
    m.save(tiny(10), step=10, epoch=0)
    assert not m.should_save(19) and m.should_save(20)
    t = CheckpointManager(tmp_path / "t", "c", every_steps=None, every_minutes=2.0)
    t0 = t._last_time
    assert not t.should_save(1, now=t0 + 119) and t.should_save(1, now=t0 + 120)
    assert not CheckpointManager(tmp_path, "c", every_steps=None, every_minutes=None).should_save(10**6)


def test_free_disk_check_touches_nothing(tmp_path, monkeypatch):
    saves(manager(tmp_path), [1, 2])
    before = {f: (tmp_path / f).read_bytes() for f in files(tmp_path)}
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(CheckpointError, match="1000 bytes free"):
        manager(tmp_path).save(tiny(3), step=3, epoch=0)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="min_free_bytes"):
        manager(tmp_path, min_free_bytes=usage.free * 10).save(tiny(3), step=3, epoch=0)
    assert {f: (tmp_path / f).read_bytes() for f in files(tmp_path)} == before


@pytest.mark.parametrize("crash_at", range(1, 7))
def test_crash_at_any_replace_leaves_latest_loadable(tmp_path, monkeypatch, crash_at):
    """os.replace calls of a save: 1 pending index, 2 backup rotation, 3 latest, 4+ tiers and index."""
    saves(manager(tmp_path), [1, 2])
    real, calls = os.replace, []

    def crashing(src, dst):
        calls.append(str(dst))
        if len(calls) == crash_at:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crashing)
    with pytest.raises(OSError, match="simulated crash"):
        manager(tmp_path).save(tiny(3), step=3, epoch=0, val_loss=1.0)
    monkeypatch.undo()
    m = manager(tmp_path)
    state = m.load_latest()
    committed = any(c.endswith("/latest.pt") for c in calls[:crash_at - 1])
    assert state["step"] == (3 if committed else 2)
    assert m.resumed_from() == tmp_path / "latest.pt"
    if crash_at == 3:   # between the backup rotation and the replace of latest.pt
        assert calls[-1].endswith("/latest.pt") and calls[-2].endswith("/latest_backup.pt")
        assert torch.load(tmp_path / "latest_backup.pt", weights_only=False)["step"] == 2
    m.save(tiny(4), step=4, epoch=0)       # and the next save works
    assert manager(tmp_path).load_latest()["step"] == 4


def test_module_prefix_stripped(tmp_path):
    model = torch.nn.Linear(3, 2)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    manager(tmp_path).save({"model": wrapped}, step=1, epoch=0)
    loaded = manager(tmp_path).load_latest()["model"]
    assert sorted(loaded) == ["bias", "weight"]
    torch.nn.Linear(3, 2).load_state_dict(loaded)


def test_ranks_only_rank0_writes_and_every_rank_reads_its_state(tmp_path):
    rank_states = [{"torch": torch.get_rng_state(), "cursor": r * 100} for r in range(2)]
    r1 = manager(tmp_path, rank=1, world_size=2)
    assert r1.save({"rank_states": rank_states}, step=1, epoch=0) == tmp_path / "latest.pt"
    assert not tmp_path.exists() or not files(tmp_path)
    manager(tmp_path, rank=0, world_size=2).save({"rank_states": rank_states}, step=1, epoch=0)
    before = {f: (tmp_path / f).read_bytes() for f in files(tmp_path)}
    state = manager(tmp_path, rank=1, world_size=2).load_latest()
    assert_same(state["rank_states"][1], rank_states[1])
    assert {f: (tmp_path / f).read_bytes() for f in files(tmp_path)} == before


@pytest.fixture
def small_chunks(monkeypatch):
    """The hashing writer with tiny chunk sizes, so small states take every path (collected small
    writes, large writes in pieces, early fdatasyncs); each write sleeps a little, as a long
    serialization would, so the threads run before torch.save ends."""
    from giblet.train.durable_write import HashingWriter
    monkeypatch.setattr(HashingWriter, "SMALL", 256)
    monkeypatch.setattr(HashingWriter, "CHUNK", 1000)
    monkeypatch.setattr(HashingWriter, "SYNC_EVERY", 5000)
    write = HashingWriter.write

    def slow_write(self, data):
        time.sleep(0.001)
        return write(self, data)
    monkeypatch.setattr(HashingWriter, "write", slow_write)


def mixed_state():
    torch.manual_seed(0)
    return {"model": {f"w{i}": torch.randn(n) for i, n in enumerate([1, 7, 60, 250, 3001, 20000])},
            "view": torch.arange(100.0)[10:20], "history": [{"loss": 0.5}] * 3}


def test_index_sha256_is_the_files_and_weights_only_load_works(tmp_path, small_chunks, monkeypatch):
    from giblet.files import sha256_file
    syncs, real = [], os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd) or real(fd))
    state = mixed_state()
    for step in (1, 2):
        manager(tmp_path).save(state, step=step, epoch=0)
    index = manager(tmp_path)._read_index()["files"]
    for name in ("latest.pt", "latest_backup.pt", "rolling/step-00000002.pt"):
        assert index[name]["sha256"] == sha256_file(tmp_path / name)
        assert index[name]["bytes"] == (tmp_path / name).stat().st_size
    assert syncs                                        # the disk started before the final fsync
    loaded = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert_same(state["model"], loaded["model"])
    assert_same(state["view"], loaded["view"])
    assert loaded["step"] == 2


@pytest.mark.parametrize("fails", ["fdatasync", "preadv", "pickle"])
def test_failed_write_hash_or_sync_commits_nothing(tmp_path, small_chunks, monkeypatch, fails):
    saves(manager(tmp_path), [1, 2])
    before = {f: (tmp_path / f).read_bytes() for f in files(tmp_path)}

    def broken(*args):
        raise OSError(f"simulated {fails} error")
    state = mixed_state()
    if fails == "pickle":
        state["unpicklable"] = lambda: None
    else:
        monkeypatch.setattr(os, fails, broken)
    with pytest.raises(Exception, match="simulated|pickle|lambda"):
        manager(tmp_path).save(state, step=3, epoch=0)
    monkeypatch.undo()
    after = {f: (tmp_path / f).read_bytes() for f in files(tmp_path) if not f.endswith(".tmp")}
    assert after == before
    assert manager(tmp_path).load_latest()["step"] == 2


def test_pruned_files_leave_the_index_at_once_and_the_disk_in_a_thread_or_are_recycled(tmp_path, monkeypatch):
    """A pruned rolling file another tier links to loses its name in a thread (save() does not wait; the
    index omits it at once). One with no other name is parked as latest.pt.tmp and the
    next save overwrites its blocks, cut to the new size. A file a crash left behind goes next time."""
    import threading

    from giblet.files import sha256_file
    from giblet.train import checkpoint

    release, unlinking = threading.Event(), threading.Event()
    real = checkpoint._unlink_all

    def slow_unlink(paths):
        unlinking.set()
        release.wait(10)
        real(paths)

    monkeypatch.setattr(checkpoint, "_unlink_all", slow_unlink)
    m = manager(tmp_path, keep_rolling=2)
    m.save(tiny(1), step=1, epoch=0, end_of_epoch=True)  # rolling/step-1 and epoch-0000: one inode
    big = {**tiny(2), "extra": torch.zeros(5000)}       # larger than what will overwrite it
    for s, state in ((2, big), (3, tiny(3))):
        m.save(state, step=s, epoch=1)                    # the third save prunes step 1: its unlink blocks
    assert unlinking.wait(10) and (tmp_path / "rolling/step-00000001.pt").exists()
    assert "rolling/step-00000001.pt" not in m._read_index()["files"]
    release.set()
    m.wait_for_purge()
    assert not (tmp_path / "rolling/step-00000001.pt").exists()
    assert manager(tmp_path, keep_rolling=2).load_latest()["step"] == 3
    assert torch.load(tmp_path / "epoch/epoch-0000.pt", weights_only=True)["step"] == 1

    inode = (tmp_path / "rolling/step-00000002.pt").stat().st_ino
    m.save(tiny(4), step=4, epoch=1)                      # prunes step 2, which has no other name
    assert (tmp_path / "latest.pt.tmp").stat().st_ino == inode
    m.save(tiny(5), step=5, epoch=1)                      # ... and writes into it
    latest, entry = tmp_path / "latest.pt", m._read_index()["files"]["latest.pt"]
    assert latest.stat().st_ino == inode and latest.stat().st_size == entry["bytes"]
    assert sha256_file(latest) == entry["sha256"]
    assert manager(tmp_path, keep_rolling=2).load_latest()["step"] == 5

    os.link(tmp_path / "rolling/step-00000004.pt", tmp_path / "rolling/step-00000000.pt")  # a crash's leftover
    m.save(tiny(6), step=6, epoch=1)
    m.wait_for_purge()
    assert [f for f in files(tmp_path) if f.startswith("rolling/")] == ["rolling/step-00000005.pt",
                                                                       "rolling/step-00000006.pt"]
