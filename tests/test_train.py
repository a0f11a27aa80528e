"""The trainer: resume is bitwise exact after SIGKILL, signals save and exit 75, and it learns."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from giblet.train.loop import EXIT_RESUME, SELECTION_KEY, TIMING_KEYS
from tests.bundles import write_bundle

N_VOXELS = 50
PARAMS = {"preset": "tiny", "epochs": 3, "batch_size": 4, "grad_accum": 2, "optimizer": "adamw8bit",
          "dropout": 0.2, "warmup_steps": 2, "device": "cpu", "early_stopping_patience": 0, "histogram_every_steps": 3,
          "checkpoint": {"every_steps": 2, "every_minutes": None, "keep_rolling": 2}}


def brightness_fmri(rng: np.random.Generator, frames: np.ndarray, n_voxels: int) -> np.ndarray:
    """The fMRI follows the frames' brightness with a delay, plus noise."""
    brightness = frames.mean(axis=(1, 2, 3, 4))
    drive = np.convolve((brightness - brightness.mean()) / brightness.std(), [0, 0.5, 1, 0.5], mode="full")
    drive = drive[:len(frames)]
    return np.outer(drive, rng.standard_normal(n_voxels)) + 0.5 * rng.standard_normal((len(frames), n_voxels))


def make_bundle(root: Path) -> Path:
    """All four modalities, small; the fMRI follows the frames' brightness with a delay."""
    return write_bundle(root, N_VOXELS, brightness_fmri)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def run_training(manifest: Path, out: Path, params=PARAMS, fault_at_step=None, nproc=1, timeout=300):
    args = [str(manifest), str(out), "--params", json.dumps(params), "--quiet"]
    if fault_at_step is not None:
        args += ["--fault-at-step", str(fault_at_step)]
    if nproc > 1:
        # giblet's torchrun agent, as launch() starts it for train.gpus > 1
        command = [sys.executable, "-m", "giblet.train.torchrun", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "giblet.train.loop", *args]
    else:
        command = [sys.executable, "-m", "giblet.train.loop", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def final_state(out: Path) -> dict:
    model = torch.load(out / "model.pt", weights_only=False)
    latest = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
               for line in (out / "history.jsonl").read_text().splitlines()]
    return {"model": model["state_dict"], "optimizer": latest["optimizer"], "history": history}


def same(a, b) -> bool:
    """Bitwise equality of nested tensors, containers and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_identical(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert same(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"], "no optimizer state to compare"
    assert same(a["optimizer"], b["optimizer"]), "optimizer state differs"
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def uninterrupted_dir(bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_a")
    result = run_training(bundle, out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir) -> dict:
    return final_state(uninterrupted_dir)


def tensorboard(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()


def steps_per_epoch(out: Path) -> int:
    history = final_state(out)["history"]
    return next(h["step"] for h in history if "val/total" in h)


KILL_AT = [1, 3, "epoch_end", 8]


@pytest.fixture(scope="module")
def killed_then_resumed(bundle, uninterrupted_dir, tmp_path_factory) -> dict:
    """For each KILL_AT: a run SIGKILLed at that step, whether model.pt existed after the kill, and the
    rerun in the same folder. Every training process here is single-threaded (OMP_NUM_THREADS=1), so the
    cases run two at a time, one per core; each case is still its own folder and its own processes."""
    def case(kill_at):
        step = steps_per_epoch(uninterrupted_dir) if kill_at == "epoch_end" else kill_at
        out = tmp_path_factory.mktemp(f"killed_at_{kill_at}")
        killed = run_training(bundle, out, fault_at_step=step)
        model_after_kill = (out / "model.pt").exists()
        resumed = run_training(bundle, out)
        return {"step": step, "out": out, "killed": killed, "model_after_kill": model_after_kill,
                "resumed": resumed}

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(KILL_AT, pool.map(case, KILL_AT)))


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_AT)
def test_resume_after_sigkill_is_bitwise_identical(killed_then_resumed, uninterrupted, kill_at):
    """Killed mid-epoch (before and after the first save) and right after an epoch's last step."""
    run = killed_then_resumed[kill_at]
    kill_at, out, resumed = run["step"], run["out"], run["resumed"]
    assert run["killed"].returncode == -signal.SIGKILL
    assert not run["model_after_kill"]
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stderr or kill_at < PARAMS["checkpoint"]["every_steps"]
    assert_identical(uninterrupted, final_state(out))
    # The TensorBoard curve is whole (replayed from the checkpoint's history), each step once.
    n_steps = len([h for h in uninterrupted["history"] if "train/total" in h])
    assert [e.step for e in tensorboard(out).Scalars("train/total")] == list(range(1, n_steps + 1))


def test_tensorboard_has_every_tag(uninterrupted_dir, uninterrupted):
    """Read back with TensorBoard's own EventAccumulator."""
    events = tensorboard(uninterrupted_dir)
    tags = events.Tags()
    losses = {f"{split}/{name}" for split in ("train", "val") for name in
              ("total", "fmri", "fmri_corr", "codes", "text", "frames")}
    assert losses | {"train/lr", "train/grad_norm", "train/samples_per_s", "train/step_time_s",
                     "val/fmri_r_mean"} <= set(tags["scalars"])
    assert {"reconstruction/frames", "reconstruction/codes"} <= set(tags["images"])
    # the fMRI layer is trained through the principal components (fmri_rank): its gradient is to_components's
    assert {"weights/to_fmri.weight", "grads/to_components.weight"} <= set(tags["histograms"])
    n_steps = len([h for h in uninterrupted["history"] if "train/total" in h])
    assert [e.step for e in events.Histograms("weights/to_fmri.weight")] == list(range(3, n_steps + 1, 3))
    recorded = [e.value for e in events.Scalars("train/total")]
    assert recorded == pytest.approx([h["train/total"] for h in uninterrupted["history"] if "train/total" in h])
    assert len(events.Scalars("val/total")) == PARAMS["epochs"]
    assert list((uninterrupted_dir / "tensorboard").glob("hparams/events.out.tfevents.*"))


def test_sigterm_saves_exits_75_and_resumes(bundle, tmp_path):
    """A run signalled mid-way: it checkpoints, exits 75, and a rerun finishes every step once."""
    # 10 epochs of 4 steps; the signal comes once the first epoch is saved (history.jsonl written), so
    # it always lands after step 4 and with 9 epochs still to go.
    params = {**PARAMS, "epochs": 10, "checkpoint": {"every_steps": 1000, "every_minutes": None, "keep_rolling": 2}}
    n_steps = 10 * 4
    command = [sys.executable, "-m", "giblet.train.loop", str(bundle), str(tmp_path), "--params", json.dumps(params)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (tmp_path / "history.jsonl").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_RESUME, stderr
    assert "signal SIGTERM: saving at step" in stderr
    saved = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=False)
    assert 0 < saved["step"] < n_steps and not (tmp_path / "model.pt").exists()
    resumed = run_training(bundle, tmp_path, params=params)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {saved['step']}" in resumed.stderr
    steps = [h["step"] for h in final_state(tmp_path)["history"] if "train/total" in h]
    assert steps == list(range(1, n_steps + 1))  # every step exactly once across the two runs


@pytest.mark.slow
def test_two_gloo_ranks_resume_bitwise_after_sigkill(bundle, uninterrupted, tmp_path):
    """DDP over 2 gloo processes (torchrun): a rank SIGKILLed mid-epoch; the rerun equals the unbroken run."""
    whole = run_training(bundle, tmp_path / "whole", nproc=2)
    assert whole.returncode == 0, whole.stderr
    killed = run_training(bundle, tmp_path / "broken", nproc=2, fault_at_step=5)
    assert killed.returncode != 0
    resumed = run_training(bundle, tmp_path / "broken", nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "broken"))
    assert "resumed at step 4" in resumed.stderr  # the last save before step 5 (every 2 steps)
    # Two ranks see different data and dropout: the result must differ from one process (the module's
    # uninterrupted run: the same bundle and params in one process).
    assert not same(final_state(tmp_path / "whole")["model"], uninterrupted["model"])


@pytest.mark.slow
def test_early_stopping_stops_both_ranks_at_the_same_step(bundle, tmp_path):
    """A learning rate that makes validation worse every epoch: both ranks stop after `patience`, no hang."""
    params = {**PARAMS, "epochs": 30, "lr": 0.5, "warmup_steps": 1, "optimizer": "adamw",
              "early_stopping_patience": 2}
    result = run_training(bundle, tmp_path, params=params, nproc=2, timeout=240)
    assert result.returncode == 0, result.stderr
    stops = re.findall(r"early stopping at epoch (\d+)", result.stderr)
    assert len(stops) == 2 and stops[0] == stops[1], result.stderr  # one line per rank, same epoch
    history = final_state(tmp_path)["history"]
    val = [h[SELECTION_KEY] for h in history if SELECTION_KEY in h]
    assert len(val) == int(stops[0]) < params["epochs"]
    assert min(val[-2:]) >= min(val[:-2])  # the last `patience` validations did not improve
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["epochs"] == len(val) and saved["steps"] == history[-1]["step"]


def test_asking_for_more_gpus_than_visible_fails_before_training(bundle, tmp_path, monkeypatch):
    from giblet.errors import ConfigError
    from giblet.train.launch import launch, training_command

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"train.gpus is 2 but this job sees 0 GPU\(s\) \(CUDA_VISIBLE_DEVICES=''\)"):
        launch(str(bundle), str(tmp_path), {**PARAMS, "gpus": 2, "device": "auto"})
    with pytest.raises(ConfigError, match="train.device is 'cuda' but train.gpus is 0"):
        launch(str(bundle), str(tmp_path), {**PARAMS, "gpus": 0, "device": "cuda"})
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
    command = training_command("m.json", "out", {"gpus": 4}, 4)
    assert command[1:5] == ["-m", "giblet.train.torchrun", "--standalone", "--nproc-per-node=4"]
    assert command[command.index("giblet.train.torchrun") + 4:][:2] == ["-m", "giblet.train.loop"]
    assert training_command("m.json", "out", {}, 1) is None


def test_model_pt_holds_the_best_validation_weights_with_a_ridge_fmri_layer(uninterrupted_dir):
    """The encoders of the validation with the best reliable-voxel r; the batch-norm statistics recomputed
    and the fMRI layer refitted by banded ridge."""
    saved = torch.load(uninterrupted_dir / "model.pt", weights_only=False)
    history = final_state(uninterrupted_dir)["history"]
    validations = [h for h in history if SELECTION_KEY in h]
    for h in validations:  # the selection is 1 - the mean r, which is over every voxel here (no ceiling)
        assert h[SELECTION_KEY] == pytest.approx(1 - h["val/fmri_r_mean"])
    best = min(validations, key=lambda h: h[SELECTION_KEY])
    assert {k: saved["weights"][k] for k in ("weights", "step", "epoch")} == \
        {"weights": "best", "step": best["step"], "epoch": best["epoch"]}
    readout = saved["weights"]["readout"]
    assert readout["readout"] == "banded" and readout["batch_norm"]["recalibrated_on"] == "train"
    assert set(readout["log_scaling_median"]) == set(saved["model_config"]["modalities"])
    assert saved["best_val_loss"] == best[SELECTION_KEY]
    epoch_file = uninterrupted_dir / "checkpoints" / "epoch" / f"epoch-{best['epoch']:04d}.pt"
    reference = torch.load(epoch_file, weights_only=False)["model"]
    statistics = {k for k in reference if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics and all(torch.equal(saved["state_dict"][k], reference[k]) for k in reference
                              if not k.startswith("to_fmri.") and k not in statistics)
    assert not torch.equal(saved["state_dict"]["to_fmri.weight"], reference["to_fmri.weight"])
    assert not torch.equal(saved["state_dict"]["modality_norms.text.running_var"],
                           reference["modality_norms.text.running_var"])


@pytest.mark.parametrize("world", [1, 2])
def test_contiguous_batches_are_runs_of_consecutive_windows_covering_every_sample(world):
    from giblet.train.sampler import ResumableSampler

    n, size = 23, 5
    samplers = [ResumableSampler(n, size, rank, world, seed=3, contiguous=True) for rank in range(world)]
    for epoch in (0, 1):
        batches = [b for s in samplers for b in s.batches(epoch)]
        assert all(len(list(s.batches(epoch))) == len(s) for s in samplers)  # every rank: the same count
        assert set().union(*map(set, batches)) == set(range(n))             # every window, every epoch
        for b in batches:                                                   # consecutive, wrapping at n
            assert all((b1 - b0) % n == 1 for b0, b1 in zip(b, b[1:]))
        resumed = list(samplers[0].batches(epoch, start=2))
        assert resumed == list(samplers[0].batches(epoch))[2:]
    assert list(samplers[0].batches(0)) != list(samplers[0].batches(1))     # a new order each epoch


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
def test_sigkill_during_a_background_write_keeps_the_previous_checkpoint_and_resumes_bitwise(
        bundle, uninterrupted, tmp_path):
    """Checkpoints are written in a thread (train.checkpoint.background): killed inside one such write,
    the run leaves the previous checkpoint whole and the rerun resumes from it, bit for bit."""
    from giblet.train.checkpoint import CheckpointManager

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
    assert_identical(uninterrupted, final_state(out))


@pytest.mark.parametrize("best_is_last", [True, False])
def test_best_weights_are_read_back_only_when_training_went_on_after_the_best_validation(tmp_path, best_is_last):
    """The best validation was the last (nothing trained since): the current weights, without waiting for
    the write of best.pt in flight. An earlier one: best.pt, after that write."""
    from giblet.train.checkpoint import CheckpointManager
    from giblet.train.engine import Engine

    model = torch.nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path / "checkpoints", "hash", every_minutes=None)
    history = [{"step": 4, "epoch": 1, SELECTION_KEY: 0.5}]
    manager.save({"model": model.state_dict(), "history": history}, step=4, epoch=1, val_loss=0.5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    if best_is_last:
        history.append({"step": 8, "epoch": 2, SELECTION_KEY: 0.25})
    else:
        history.append({"step": 8, "epoch": 2, SELECTION_KEY: 0.75})
    with torch.no_grad():
        model.weight.add_(1.0)  # epoch 2 trained on
    waits = []
    engine = Engine.__new__(Engine)
    engine.model, engine.history, engine.step, engine.epoch = model, history, 8, 2
    engine.early = {"best": min(h[SELECTION_KEY] for h in history)}
    engine.checkpoints = manager
    engine.saver = type("Saver", (), {"wait": lambda self: waits.append(1)})()
    weights, which = engine._best_weights()
    if best_is_last:
        assert which == {"weights": "best", "step": 8, "epoch": 2} and not waits
        assert torch.equal(weights["weight"], model.weight) and not torch.equal(weights["weight"], saved["weight"])
    else:
        assert which == {"weights": "best", "step": 4, "epoch": 1} and waits
        assert all(torch.equal(weights[k], saved[k]) for k in saved)
