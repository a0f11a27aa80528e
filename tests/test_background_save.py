"""Checkpoints written in the background (giblet/train/background_save.py): the loop waits only for a
CPU copy; what is written is the state at the copy, whatever training does next; a failed write is
raised, never lost. (A SIGKILL in the middle of a background write: tests/test_train.py.)"""

from __future__ import annotations

import pytest
import torch

from giblet.train.background_save import BackgroundSaver, cpu_snapshot
from giblet.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint


def test_the_snapshot_is_what_is_written_whatever_training_does_next(tmp_path):
    weights = torch.arange(1_000_000, dtype=torch.float32)
    history = [{"step": 1, "loss": 0.5}]
    state = {"model": {"w": weights, "tied": weights}, "history": history, "note": "x"}
    saver = BackgroundSaver(CheckpointManager(tmp_path / "ck", "h", every_minutes=None))
    saver.save(state, step=1, epoch=0)
    weights.add_(1.0)  # the next optimizer step, while the write may still run
    history.append({"step": 2, "loss": 0.4})
    saver.wait()
    saved = load_checkpoint(tmp_path / "ck" / "latest.pt")
    assert torch.equal(saved["model"]["w"], torch.arange(1_000_000, dtype=torch.float32))
    assert saved["history"] == [{"step": 1, "loss": 0.5}] and saved["step"] == 1
    # The next save reuses the copy's memory, only once the first write is done.
    buffer = saver._buffers[("model", "w")]
    saver.save(state, step=2, epoch=0)
    weights.add_(1.0)
    saver.wait()
    assert saver._buffers[("model", "w")] is buffer
    second = load_checkpoint(tmp_path / "ck" / "latest.pt")
    assert torch.equal(second["model"]["w"], torch.arange(1_000_000, dtype=torch.float32) + 1)
    first = load_checkpoint(tmp_path / "ck" / "rolling" / "step-00000001.pt")
    assert torch.equal(first["model"]["w"], torch.arange(1_000_000, dtype=torch.float32))
    copy = cpu_snapshot(state)
    assert copy["model"]["w"] is copy["model"]["tied"]  # shared once, as in the live state
    assert copy["model"]["w"] is not weights and torch.equal(copy["model"]["w"], weights)


def test_a_failed_background_write_is_raised_by_the_next_save_or_wait(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", "h", every_minutes=None, min_free_bytes=1 << 62)
    saver = BackgroundSaver(manager)
    saver.save({"w": torch.zeros(3)}, step=1, epoch=0)  # returns: the copy is taken
    with pytest.raises(CheckpointError, match="bytes free"):
        saver.wait()
    saver.wait()  # raised once
    saver.save({"w": torch.zeros(3)}, step=2, epoch=0)
    with pytest.raises(CheckpointError):
        saver.save({"w": torch.zeros(3)}, step=3, epoch=0, background=False)
    assert not (tmp_path / "ck" / "latest.pt").exists()
