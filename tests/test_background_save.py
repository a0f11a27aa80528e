"""Checkpoints written in the background (giblet/train/background_save.py): the loop waits only for a
CPU copy; what is written is the state at the copy, whatever training does next; a failed write is
raised, never lost. (A SIGKILL in the middle of a background write: tests/test_train.py.)"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from giblet.train import background_save
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


def test_the_optimizers_tensors_are_copied_in_the_thread_and_its_next_step_waits_for_them(tmp_path, monkeypatch):
    """Given the optimizer, save returns before the parameters and the optimizer's state are copied
    (they are nearly all the bytes); a buffer that a forward pass changes is copied before it returns;
    the optimizer's next step waits for the copies, so the checkpoint holds the weights of the save."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 64)).square().mean().backward()
    opt.step()
    at_save = {k: v.clone() for k, v in model.state_dict().items()}
    adam_at_save = opt.state_dict()["state"][0]["exp_avg"].clone()

    copying = threading.Event()
    run = background_save.DeferredCopies.run

    def slow_run(self):
        copying.set()
        time.sleep(0.3)  # a long copy: the step below must wait for it
        run(self)

    monkeypatch.setattr(background_save.DeferredCopies, "run", slow_run)
    saver = BackgroundSaver(CheckpointManager(tmp_path / "ck", "h", every_minutes=None))
    t0 = time.perf_counter()
    saver.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step=1, epoch=0, optimizer=opt)
    assert time.perf_counter() - t0 < 0.25  # returned without waiting for the deferred copies
    model(torch.randn(8, 64)).square().mean().backward()  # the next step: running statistics change
    assert copying.wait(5)
    opt.step()  # waits for the copies
    assert not torch.equal(model[0].weight, at_save["0.weight"])
    saver.wait()

    saved = load_checkpoint(tmp_path / "ck" / "latest.pt")
    for key, value in at_save.items():
        assert torch.equal(saved["model"][key], value), key
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], adam_at_save)
    # Without the optimizer, everything is copied before save returns.
    saver.save({"model": model.state_dict()}, step=2, epoch=0)
    weights = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    saver.wait()
    assert torch.equal(load_checkpoint(tmp_path / "ck" / "latest.pt")["model"]["0.weight"], weights)
