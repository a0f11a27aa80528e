"""Checkpoints written in the background (giblet/train/background_save.py): the loop waits only for a
CPU copy; what is written is the state at the copy, whatever training does next; a failed write is
raised, never lost; and a SIGKILL in the middle of a background write leaves the previous checkpoint
intact, from which the run resumes bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from giblet.train.background_save import BackgroundSaver, cpu_snapshot
from giblet.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from tests.test_train import PARAMS, assert_identical, final_state, make_bundle, run_training


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


KILLER = textwrap.dedent("""
    import os, signal, sys, threading, json
    from giblet.train import durable_write
    from giblet.train.loop import train

    target, written = sys.argv[3], [0]
    original = durable_write.HashingWriter._write_all

    def write_then_die(self, data):
        # In the background write of the chosen step: die once some of its bytes are in the file.
        if threading.current_thread().name == target and written[0] > 100_000:
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, data)
        if threading.current_thread().name == target:
            written[0] += len(memoryview(data).cast("B"))

    durable_write.HashingWriter._write_all = write_then_die
    sys.exit(train(sys.argv[1], sys.argv[2], json.loads(sys.argv[4]), progress=False))
""")


@pytest.mark.slow
def test_sigkill_during_a_background_write_keeps_the_previous_checkpoint_and_resumes_bitwise(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    uninterrupted = tmp_path / "uninterrupted"
    assert run_training(bundle, uninterrupted).returncode == 0
    assert PARAMS["checkpoint"]["every_steps"] == 2  # saves at steps 2, 4, ...: kill inside step 4's

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(bundle), str(out), "checkpoint-step-4",
                             json.dumps(PARAMS)], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = out / "checkpoints"
    partial = checkpoints / "latest.pt.tmp"
    assert partial.exists() and partial.stat().st_size > 100_000  # died mid-write
    index = json.loads((checkpoints / "index.json").read_text())
    assert index["files"]["latest.pt"]["step"] == 2
    state = CheckpointManager(checkpoints, index["config_hash"]).load_latest()
    assert state is not None and state["step"] == 2  # the previous checkpoint, verified by its checksum

    resumed = run_training(bundle, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 2" in resumed.stderr
    assert_identical(final_state(uninterrupted), final_state(out))
