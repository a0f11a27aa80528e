"""The training engine: the Trainer's overhead over a bare PyTorch loop, checkpoint cost, optimizer memory.

Every benchmark builds a synthetic dataset manifest with demo-like dimensions (440 TRs, frames
(10, 90, 160, 3) per TR, EnCodec codes (4, 112), text (2, 512), 29,398 voxels; ``--quick``: smaller)
and times a reference in the same process; absolute seconds are context only. CPU unless noted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from giblet.config import load_config
from giblet.data.assemble import assemble_dataset
from giblet.data.batch import collate
from giblet.data.manifest import read_manifest
from giblet.data.samples import WindowDataset
from giblet.files import sha256_file, write_json, write_sidecar
from giblet.model import BrainAutoencoder, losses
from giblet.splits import plan_split
from giblet.train.background_save import BackgroundSaver
from giblet.train.bottleneck import fix_principal_components
from giblet.train.checkpoint import CheckpointManager
from giblet.train.loop import Trainer, default_params
from giblet.train.optim import lr_factor, make_optimizer
from giblet.train.readout import fit_ridge_readout
from giblet.train.sampler import ResumableSampler

FULL = {"n_trs": 440, "frames": (10, 90, 160, 3), "n_voxels": 29398}
QUICK = {"n_trs": 120, "frames": (4, 45, 80, 3), "n_voxels": 2000}
SHERLOCK = {"n_trs": 1976, "frames": (10, 90, 160, 3), "n_voxels": 69000}
# Trainer settings that time only training: no validation, no early stopping, no periodic checkpoints.
NO_EXTRAS = {"device": "cpu", "batch_size": 16, "val_every_epochs": 1000, "early_stopping_patience": 0,
             "checkpoint": {"every_steps": None, "every_minutes": None}}


def write_manifest(root: Path, n_trs: int, frames: tuple, n_voxels: int) -> Path:
    """A synthetic dataset (random stimulus and fMRI, all four modalities) and its manifest."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    text = rng.standard_normal((n_trs, 2, 512), dtype=np.float32)
    mask = rng.random((n_trs, 2)) > 0.3
    text[~mask] = 0
    arrays = {"frames": rng.integers(0, 256, (n_trs, *frames), dtype=np.uint8),
              "audio_codes": rng.integers(0, 1024, (n_trs, 4, 112), dtype=np.int16),
              "text": text, "text_mask": mask,
              "group": rng.standard_normal((n_trs, n_voxels), dtype=np.float32)}
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    write_sidecar(root / "audio_codes.npy", arrays["audio_codes"], {}, {}, models={"encodec": {"codebook_size": 1024}})
    nib.save(nib.Nifti1Image(np.ones((n_voxels, 1, 1), np.uint8), np.eye(4)), root / "mask.nii.gz")
    split = load_config(None, ["split.lag_trs=10", "split.fractions={train: 0.7, val: 0.1, test: 0.2}"])["split"]
    write_json(root / "split.json", plan_split(n_trs, n_trs, split).to_dict())
    assemble_dataset({k: root / f"{k}.npy" for k in ("frames", "audio_codes", "text", "text_mask")},
                     root / "group.npy", root / "mask.nii.gz", root / "split.json", root / "manifest.json", tr=1.5)
    return root / "manifest.json"


def _now() -> np.ndarray:
    """(wall, CPU) seconds: CPU time of this process barely moves when other processes load the machine."""
    return np.array([time.perf_counter(), time.process_time()])


def _step_clock(optimizer: torch.optim.Optimizer) -> list[np.ndarray]:
    """_now() at the end of every optimizer step (a post-hook: not part of any state dict)."""
    stamps: list[np.ndarray] = []
    optimizer.register_step_post_hook(lambda *_: stamps.append(_now()))
    return stamps


def _summary(t0: np.ndarray, stamps: list[np.ndarray], **extra) -> dict:
    """Run (wall, CPU) seconds and the median (wall, CPU) seconds between steps (the first from t0)."""
    return {"run": _now() - t0, "step": np.median(np.diff(np.stack([t0, *stamps]), axis=0), axis=0), **extra}


def _timed(method, acc: dict):
    """``method``, adding its (wall, CPU) seconds and calls to ``acc``."""
    def wrapped(*args, **kwargs):
        t = _now()
        try:
            return method(*args, **kwargs)
        finally:
            acc["s"] = acc["s"] + _now() - t
            acc["calls"] += 1
    return wrapped


def timed_trainer(manifest: Path, out: Path, params: dict) -> dict:
    """Construct a Trainer, then time ``run()`` with its ``save`` and ``write_model`` calls timed apart."""
    trainer = Trainer(manifest, out, params, progress=False)
    spent = {name: {"s": np.zeros(2), "calls": 0} for name in ("save", "write_model")}
    for name, acc in spent.items():
        setattr(trainer, name, _timed(getattr(trainer, name), acc))
    stamps = _step_clock(trainer.optimizer)
    t0 = _now()
    trainer.run()
    return _summary(t0, stamps, save=spent["save"]["s"], n_saves=spent["save"]["calls"],
                    write_model=spent["write_model"]["s"], steps=trainer.step, trainer=trainer)


def bare_loop(manifest: Path, params: dict) -> dict:
    """The same training as the Trainer (seeds, model, optimizer, schedule, batch order, collate) in
    plain PyTorch: no history, logging, signals or checkpoints. Times the loop only."""
    p = default_params(params)
    data_set = read_manifest(manifest)
    torch.manual_seed(p["seed"])
    model = BrainAutoencoder.from_manifest(data_set.to_dict(), p["preset"], dropout=p["dropout"]).to(p["device"])
    seed = p["seed"] + 1000  # the Trainer's dropout seed on rank 0
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    data = WindowDataset(data_set, "train")
    fmri = np.load(data_set.array_path("fmri"), mmap_mode="r")
    fix_principal_components(model, np.asarray(fmri[list(data.targets)]))
    sampler = ResumableSampler(len(data), p["batch_size"], seed=p["seed"], contiguous=p["batch_order"] == "consecutive")
    optimizer = make_optimizer(p["optimizer"], model.parameters(), p["lr"], p["weight_decay"])
    total = p["epochs"] * len(sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, p["warmup_steps"], total))
    stamps = _step_clock(optimizer)
    model.train()
    t0 = _now()
    for epoch in range(p["epochs"]):
        for indices in sampler.batches(epoch):
            batch = collate(data, indices, p["device"])
            # Kept to the next step, as in the Trainer: dropping the loss graph right after backward
            # changes glibc's reuse of the large buffers (+40 % page faults, ~15 % slower on CPU here).
            parts = losses(model(batch), batch, p["loss_weights"], model.decode_index)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    # The end of the run, as write_model does it: the composed fMRI layer, then the readout refitted
    # (batch-norm statistics recomputed, banded ridge) on the training and validation windows.
    model.compose_fmri_layer()
    if p["readout"] in ("banded", "ridge"):
        fit_ridge_readout(model, {"train": data, "val": WindowDataset(data_set, "val")}, collate, p["device"],
                          model.lag, p["batch_size"], banded=p["readout"] == "banded")
    return _summary(t0, stamps, model=model)


@contextlib.contextmanager
def _one_thread():
    """Torch and BLAS (the readout's ridge) on one thread: on this shared 2-core machine another
    process stalls a 2-thread run's OpenMP barriers (a tiny step took ~3x longer on 2 threads than on
    1) and wall times swing 2x."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs included, unlike torch.equal)."""
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def trainer_overhead(quick: bool) -> dict:
    """Time of ``Trainer.run()`` (tiny preset, CPU, batch 16, one epoch: 18 steps; quick: 4) relative
    to a bare PyTorch loop doing the same steps and the same end-of-run readout refit. Goal: overhead
    <= 5 % of the whole run's wall time, saves included.

    Runs alternate bare, Trainer, bare, Trainer (quick: 6 of each, 1.3 s runs; full: 3); each side's best run counts. Torch uses one thread
    (see _one_thread) and CPU seconds (``*_cpu``) are the primary measure. ``median_step_*``
    compares the median time between optimizer steps (excludes the end-of-epoch save).
    ``weights_match``: both did the same work (bitwise, every tensor). TensorBoard is imported beforehand (a
    one-time cost, reported as context).
    """
    dims = QUICK if quick else FULL
    params = {**NO_EXTRAS, "preset": "tiny", "epochs": 1}  # ~4 s a step on one thread
    t0 = time.perf_counter()
    import torch.utils.tensorboard  # the Trainer imports it inside run()
    tensorboard_import_s = time.perf_counter() - t0
    bare, runs = [], []
    with _one_thread(), tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp) / "data", dims["n_trs"], dims["frames"], dims["n_voxels"])
        for i in range(6 if quick else 3):  # the machine is noisy: each side's best run counts
            bare.append(bare_loop(manifest, params))
            runs.append(timed_trainer(manifest, Path(tmp) / f"run{i}", params))
    trained = runs[0]["trainer"].model.state_dict()
    # Every tensor, the refitted readout and batch-norm statistics included.
    match = all(_same_bytes(v, trained[k]) for b in bare for k, v in b["model"].state_dict().items())
    finite = all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    results = {"n_trs": dims["n_trs"], "n_voxels": dims["n_voxels"], "steps": runs[0]["steps"],
               "torch_threads": 1, "weights_match": match, "weights_finite": bool(finite),
               "n_saves": runs[0]["n_saves"]}
    for i, clock in enumerate(("wall", "cpu")):
        ref = min(b["run"][i] for b in bare)
        run = min(runs, key=lambda r: r["run"][i])
        ref_step, step = min(b["step"][i] for b in bare), min(r["step"][i] for r in runs)
        results.update({
            f"bare_runs_{clock}_s": [round(b["run"][i], 3) for b in bare],
            f"trainer_runs_{clock}_s": [round(r["run"][i], 3) for r in runs],
            f"trainer_save_{clock}_s": round(run["save"][i], 3),
            f"trainer_write_model_{clock}_s": round(run["write_model"][i], 3),
            f"ratio_trainer_vs_bare_{clock}": round(run["run"][i] / ref, 4),
            f"overhead_pct_{clock}": round(100 * (run["run"][i] / ref - 1), 2),
            f"overhead_pct_excluding_saves_{clock}": round(100 * ((run["run"][i] - run["save"][i]) / ref - 1), 2),
            f"median_step_bare_{clock}_s": round(ref_step, 4), f"median_step_trainer_{clock}_s": round(step, 4),
            f"median_step_overhead_pct_{clock}": round(100 * (step / ref_step - 1), 2)})
    results["tensorboard_import_s"] = round(tensorboard_import_s, 3)
    return results


def one_batch_training(manifest: Path, preset: str, optimizer: str = "adamw"):
    """``(model, optimizer, forward_backward)`` on CPU: ``forward_backward()`` runs the loss's forward
    and backward pass on one batch of 4 windows (the optimizer step is the caller's)."""
    data_set = read_manifest(manifest)
    torch.manual_seed(0)
    model = BrainAutoencoder.from_manifest(data_set.to_dict(), preset)
    opt = make_optimizer(optimizer, model.parameters(), 1e-3, 0.01)
    data = WindowDataset(data_set, "train")
    batch = collate(data, list(range(min(4, len(data)))), "cpu")
    return model, opt, lambda: losses(model(batch), batch)["total"].backward()


def trained_state(manifest: Path, preset: str, optimizer: str = "adamw") -> tuple[dict, torch.optim.Optimizer]:
    """Model and optimizer state dicts after one optimizer step on one batch (CPU)."""
    model, opt, forward_backward = one_batch_training(manifest, preset, optimizer)
    forward_backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}, opt


def benchmark_save(directory: Path, state: dict, repeats: int = 6, training=None) -> dict:
    """Seconds of :meth:`CheckpointManager.save` vs plain ``torch.save`` (with and without fsync) of
    ``state`` in ``directory``; best of ``repeats``. ``ratio`` = torch.save time / save time;
    ``ratio_vs_fsync_new_file``: against torch.save + fsync of a new file each time, 4 kept (on this
    machine's virtual disk new files write at two speeds, 0.27 or 0.6-0.75 s). The manager's first
    saves write new files too (``ratio_vs_fsync_first_save``: the first); from the fifth on it
    overwrites the pruned file it recycles (``save_runs_s``: every save, in order). And the
    training loop's stall for a background save, against the synchronous save:
    ``background_stall_vs_save``, goal <= 0.10. With ``training`` (``one_batch_training``'s model,
    optimizer and pass), as the Trainer saves: the stall is ``save`` returning plus the wait of the
    next optimizer step for the parameters' and optimizer state's copies, made while the next
    forward and backward pass runs; ``forward_backward_s`` and ``forward_backward_after_save_s``
    (medians) show what the copy and the write in the thread cost that pass on a CPU, where they
    share its cores (on a GPU the copy runs on a side stream). ``background_stall_copy_all_s``: the
    stall when everything is copied before ``save`` returns."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manager = CheckpointManager(directory / "ckpt", "benchmark", every_minutes=None)
    plain, synced, fresh, managed = [], [], [], []
    for i in range(repeats):
        t = time.perf_counter()
        torch.save(state, directory / "plain.pt")
        plain.append(time.perf_counter() - t)
        with open(directory / "plain.pt", "rb") as f:
            os.fsync(f.fileno())
        synced.append(time.perf_counter() - t)
        # Like for like: a checkpoint is a new file while the older ones (backup, rolling) stay, and a
        # virtual disk may write never-used blocks at half speed; overwriting one file reuses its blocks.
        t = time.perf_counter()
        torch.save(state, directory / f"new-{i}.pt")
        with open(directory / f"new-{i}.pt", "rb") as f:
            os.fsync(f.fileno())
        fresh.append(time.perf_counter() - t)
        (directory / f"new-{i - 4}.pt").unlink(missing_ok=True)  # 4 kept, as latest, backup and rolling
        t = time.perf_counter()
        manager.save(state, step=i + 1, epoch=0)
        managed.append(time.perf_counter() - t)
    saver = BackgroundSaver(CheckpointManager(directory / "background", "benchmark", every_minutes=None))
    copy_all = []
    for i in range(repeats):
        t = time.perf_counter()
        saver.save(state, step=i + 1, epoch=0)  # returns once the CPU copy is taken
        copy_all.append(time.perf_counter() - t)
        saver.wait()
    stalls = copy_all
    if training is not None:
        stalls, passes, passes_after_save = _pipelined_stalls(directory / "pipelined", training, repeats)
    # The first saves write new files; from the 5th on (keep_rolling 3) each overwrites a recycled one.
    out = {"torch_save_s": min(plain), "torch_save_fsync_s": min(synced), "torch_save_fsync_new_file_s": min(fresh),
           "save_s": min(managed), "save_runs_s": [round(t, 3) for t in managed], "background_stall_s": min(stalls),
           "background_stall_copy_all_s": min(copy_all)}
    if training is not None:
        out.update({"forward_backward_s": float(np.median(passes)),
                    "forward_backward_after_save_s": float(np.median(passes_after_save))})
    out["ratio"] = out["torch_save_s"] / out["save_s"]
    out["ratio_vs_fsync_first_save"] = out["torch_save_fsync_s"] / managed[0]
    out["ratio_vs_fsync"] = out["torch_save_fsync_s"] / out["save_s"]
    out["ratio_vs_fsync_new_file"] = out["torch_save_fsync_new_file_s"] / out["save_s"]
    out["background_stall_vs_save"] = out["background_stall_s"] / out["save_s"]
    return out


def _pipelined_stalls(directory: Path, training, repeats: int) -> tuple[list, list, list]:
    """Background saves as the Trainer makes them (given the optimizer): per save, the loop's stall
    (``save`` returning, plus the next optimizer step's wait for the deferred copies, with a forward
    and backward pass between), and the seconds of a forward and backward pass without and right
    after a save."""
    model, optimizer, forward_backward = training
    saver = BackgroundSaver(CheckpointManager(directory, "benchmark", every_minutes=None))
    stalls, passes, passes_after_save = [], [], []
    for i in range(repeats):
        t = time.perf_counter()
        forward_backward()
        passes.append(time.perf_counter() - t)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t = time.perf_counter()
        saver.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, step=i + 1, epoch=0,
                   optimizer=optimizer)
        returned = time.perf_counter() - t
        t = time.perf_counter()
        forward_backward()
        passes_after_save.append(time.perf_counter() - t)
        t = time.perf_counter()
        saver.wait_for_snapshot()  # what optimizer.step()'s pre-hook waits for
        stalls.append(returned + time.perf_counter() - t)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        saver.wait()
    return stalls, passes, passes_after_save


def checkpoint_overhead(quick: bool) -> dict:
    """Share of ``Trainer.run()`` wall time spent in ``save`` with the default checkpoint settings
    (every 200 steps or 10 minutes, plus one per epoch; tiny preset, CPU, default validation; 2 epochs
    of 18 steps, quick: 1 of 4, so here only the end-of-epoch saves fire; torch on one thread, see
    _one_thread), goal <= 2 % (CPU-time share for context). And ``benchmark_save`` on the tiny and base model + AdamW states after one step:
    ``ratio`` = plain torch.save time / CheckpointManager.save time, goal >= 0.9 (``ratio_vs_fsync``:
    vs torch.save + fsync; ``*_mb_per_s``: checkpoint bytes / seconds; ``*_sha256_s``: hashing the
    file alone, for context).
    """
    dims = QUICK if quick else FULL
    params = {"preset": "tiny", "device": "cpu", "batch_size": 16, "epochs": 1 if quick else 2}
    defaults = default_params(params)["checkpoint"]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp) / "data", dims["n_trs"], dims["frames"], dims["n_voxels"])
        with _one_thread():
            run = timed_trainer(manifest, Path(tmp) / "run", params)
        results = {"n_trs": dims["n_trs"], "n_voxels": dims["n_voxels"], "epochs": params["epochs"],
                   "steps": run["steps"], "checkpoint_every_steps": defaults["every_steps"],
                   "checkpoint_every_minutes": defaults["every_minutes"], "n_saves": run["n_saves"],
                   "run_s": round(run["run"][0], 3), "save_s": round(run["save"][0], 3),
                   "save_share_pct": round(100 * run["save"][0] / run["run"][0], 3),
                   "save_share_pct_cpu": round(100 * run["save"][1] / run["run"][1], 3)}
        del run
        for preset in ("tiny", "base"):
            state, _ = trained_state(manifest, preset)
            timing = benchmark_save(Path(tmp) / f"bench_{preset}", state,
                                    training=one_batch_training(manifest, preset))
            plain = Path(tmp) / f"bench_{preset}" / "plain.pt"
            mb = plain.stat().st_size / 1e6
            t0 = time.perf_counter()
            sha256_file(plain)  # context: the hashing save() overlaps with writing
            sha256_s = time.perf_counter() - t0
            results.update({f"{preset}_checkpoint_mb": round(mb, 2),
                            **{f"{preset}_{k}": v if isinstance(v, list) else round(v, 4) for k, v in timing.items()},
                            f"{preset}_save_mb_per_s": round(mb / timing["save_s"], 1),
                            f"{preset}_torch_save_mb_per_s": round(mb / timing["torch_save_s"], 1),
                            f"{preset}_sha256_s": round(sha256_s, 4)})
    return results


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.nbytes for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def optimizer_memory(quick: bool) -> dict:
    """Optimizer state bytes after one step, AdamW8bit vs AdamW, on the base preset (quick: tiny) on
    CPU. Goal: 8-bit state well under the fp32 state (~0.25x where most parameters are large tensors;
    bitsandbytes keeps tensors under 4,096 elements in fp32)."""
    dims, preset = (QUICK, "tiny") if quick else (FULL, "base")
    results = {"preset": preset, "n_voxels": dims["n_voxels"]}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp) / "data", dims["n_trs"], dims["frames"], dims["n_voxels"])
        for name in ("adamw", "adamw8bit"):
            try:
                state, opt = trained_state(manifest, preset, name)
            except Exception as exc:  # noqa: BLE001 - report, don't crash, if bitsandbytes cannot run here
                results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
                continue
            results["param_mb"] = round(sum(v.nbytes for v in state["model"].values()) / 1e6, 2)
            results[f"{name}_state_mb"] = round(_state_bytes(opt) / 1e6, 2)
    if "adamw_state_mb" in results and "adamw8bit_state_mb" in results:
        results["ratio_8bit_vs_fp32"] = round(results["adamw8bit_state_mb"] / results["adamw_state_mb"], 4)
    return results


def gpu_training(quick: bool) -> dict:
    """Samples/s, step time and peak GPU memory of 1 epoch of the base preset on a Sherlock-sized
    synthetic data set (1,976 TRs, 69,000 voxels; quick: 300 TRs), bf16, data held on the GPU, with
    adamw8bit and with adamw. Goal: context for sizing runs (and 8-bit saving memory); skipped without CUDA.
    Times exclude checkpoint saves and writing model.pt; the first steps include CUDA warm-up. Peak
    memory includes the data set held on the GPU.
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    dims = {**SHERLOCK, "n_trs": 300} if quick else SHERLOCK
    results = {"device": torch.cuda.get_device_name(), **dims}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp) / "data", dims["n_trs"], dims["frames"], dims["n_voxels"])
        for name in ("adamw8bit", "adamw"):
            params = {**NO_EXTRAS, "preset": "base", "device": "cuda", "bf16": True, "optimizer": name,
                      "epochs": 1, "hold_on_device": True}
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run = timed_trainer(manifest, Path(tmp) / f"run_{name}", params)
            train_s = run["run"][0] - run["save"][0] - run["write_model"][0]
            n_samples = len(run["trainer"].train_set) * params["epochs"]
            results.update({f"{name}_steps": run["steps"], f"{name}_samples_per_s": round(n_samples / train_s, 2),
                            f"{name}_step_s": round(train_s / run["steps"], 4),
                            f"{name}_median_step_s": round(run["step"][0], 4),
                            f"{name}_max_memory_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)})
            del run
            gc.collect()  # the timed methods make a reference cycle: free the model and data now
    return results


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or ["trainer_overhead"]
    for name in names:
        print(json.dumps({"benchmark": name, **globals()[name]("--quick" in sys.argv)}, indent=2))
