"""The training engine: resumable to the bit, one process or many (torchrun), CPU or GPU.

:class:`Engine` runs any task a subclass defines (the brain model, :class:`giblet.train.loop.Trainer`;
a stimulus autoencoder, :class:`giblet.pretrain.trainer.Pretrainer`): the model, the datasets, a
batch's losses, validation and the final files are the subclass's; the loop, checkpoints, signals,
DDP, bf16, early stopping and monitoring are here, and know nothing of brains or movies.

Everything a step depends on is in the checkpoint: model, optimizer (8-bit state included),
scheduler, step/epoch, the data cursor, every rank's RNG state, early-stopping state and the metric
history. A run killed at any moment and rerun continues from the last checkpoint and reproduces the
uninterrupted run exactly (tests/test_train.py, tests/test_pretrain.py compare with ``torch.equal``).

SIGINT, SIGTERM and SIGUSR1 only raise a flag. At the next optimizer step the ranks agree on it
(all-reduce MAX: a signal that reached any rank, on any node, stops all of them at the same step),
rank 0 saves once, every rank waits for that save, and all exit with EXIT_RESUME, so Snakemake's
``retries:`` or a SLURM requeue (``--signal=USR1@<seconds>``) resumes the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from giblet.code_hash import stage_code_hash
from giblet.devices import resolve_device
from giblet.logs import progress as progress_bar
from giblet.train import distributed as dist
from giblet.train.background_save import BackgroundSaver
from giblet.train.checkpoint import CheckpointManager, load_checkpoint
from giblet.train.monitor import Monitor
from giblet.train.optim import lr_factor, make_optimizer
from giblet.train.params import learning_params
from giblet.train.sampler import ResumableSampler
from giblet.train.stop_flag import StopFlag

log = logging.getLogger(__name__)

# Exit status after a signal: the checkpoint is saved, rerun to resume (BSD EX_TEMPFAIL).
EXIT_RESUME = 75
# History entries that measure the machine, not the training (they differ between identical runs).
TIMING_KEYS = ("samples_per_s", "step_time_s")
# What early stopping and the choice of final weights minimize (the task's validate() sets it).
SELECTION_KEY = "val/selection"


def config_hash(params: dict, manifest_sha256: str, model_config: dict, stage: str = "train") -> str:
    """What a checkpoint must match to be resumed: the learning parameters, the data, the model's full
    configuration and the training code (the train rule's ``code`` param: the train stage and every
    module it reaches): a code change that alters the model, its initialization or the loop must not
    silently continue from weights trained by other code."""
    blob = json.dumps([learning_params(params), manifest_sha256, model_config, stage_code_hash(stage)],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Engine:
    """One training run into ``out_dir`` (checkpoints/, history.jsonl, tensorboard/ and the task's files).

    A subclass sets ``STAGE`` and defines the task's hooks (below); ``manifest_path`` is the data the run
    is keyed to (its sha256, set by ``_build_model`` as ``manifest_sha256``, goes into the config hash)."""

    def __init__(self, manifest_path: str | Path, out_dir: str | Path, params: dict, progress: bool = True):
        self.params = self._default_params(params)
        self.out, self.progress = Path(out_dir), progress
        self.rank, self.world_size, local_rank = dist.world()
        device = resolve_device(self.params["device"], "train.device")
        self.device = f"cuda:{local_rank}" if device == "cuda" else device
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        dist.setup(device)
        self.manifest_path = Path(manifest_path)
        p = self.params
        torch.manual_seed(p["seed"])  # identical initial weights on every rank
        self.model = self._build_model()
        self.model.to(self.device)
        self.ddp = self.model
        if self.world_size > 1:
            # Fixed buffers computed identically on every rank (e.g. the brain's principal-component
            # basis): DDP would otherwise broadcast them before every forward.
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                self.model, self._ddp_ignored())
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[local_rank] if device == "cuda" else None)
        seed = p["seed"] + 1000 * (self.rank + 1)  # distinct dropout masks per rank
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        self.train_set, self.val_set = self._datasets(self.device if p["hold_on_device"] else None)
        self.sampler = ResumableSampler(len(self.train_set), p["batch_size"], self.rank, self.world_size, p["seed"],
                                        contiguous=p.get("batch_order") == "consecutive")
        self.steps_per_epoch = math.ceil(len(self.sampler) / p["grad_accum"])
        total = p["epochs"] * self.steps_per_epoch
        self.optimizer = make_optimizer(p["optimizer"], self.model.parameters(), p["lr"], p["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, p["warmup_steps"], total))
        self.config_hash = config_hash(p, self.manifest_sha256, self._model_config(), self.STAGE)
        ck = p["checkpoint"]
        self.checkpoints = CheckpointManager(self.out / "checkpoints", self.config_hash, keep_rolling=ck["keep_rolling"],
                                             every_steps=ck["every_steps"], every_minutes=ck["every_minutes"],
                                             rank=self.rank, world_size=self.world_size)
        self.saver = BackgroundSaver(self.checkpoints)
        self.step = self.epoch = self.cursor = 0
        self.history: list[dict] = []
        self.early = {"best": math.inf, "bad_epochs": 0, "stopped": False}
        self._resume()

    # -- the task: what a subclass defines -------------------------------------------------------

    STAGE = ""  # the rule whose code hash a checkpoint must match

    def _default_params(self, params: dict) -> dict:
        """``params`` completed and checked."""
        return dict(params)

    def _build_model(self) -> torch.nn.Module:
        """The model (on the CPU); also sets ``self.manifest_sha256``."""
        raise NotImplementedError

    def _model_config(self) -> dict:
        """What rebuilds the model (JSON), part of the config hash."""
        raise NotImplementedError

    def _ddp_ignored(self) -> list[str]:
        """Buffers every rank computes identically, which DDP need not broadcast."""
        return []

    def _datasets(self, hold):
        """(training set, validation set or None); ``hold``: a device to keep them on, or None."""
        raise NotImplementedError

    def _collate(self, dataset, indices) -> dict:
        """The samples ``indices`` of ``dataset`` as a batch on ``self.device``."""
        raise NotImplementedError

    def _losses(self, batch: dict, model: torch.nn.Module) -> dict:
        """{component: loss}, with ``total`` the one minimized; ``model`` may be the DDP wrapper."""
        raise NotImplementedError

    def _before_save(self) -> None:
        """Bring derived weights up to date before the state is saved or chosen."""

    def validate(self) -> dict:
        """Validation metrics ``{"val/...": value}``, with SELECTION_KEY (lower is better)."""
        raise NotImplementedError

    def reconstruct_first_val_sample(self) -> tuple[dict | None, dict | None]:
        """One validation sample and its reconstruction, for TensorBoard; (None, None) for none."""
        return None, None

    def write_model(self) -> Path:
        """The run's final files, from :meth:`_best_weights`; rank 0 only."""
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------------

    def _resume(self) -> None:
        state = self.checkpoints.load_latest()
        if state is None:
            log.info("starting fresh (config %s)", self.config_hash)
            return
        if state["world_size"] != self.world_size:
            raise RuntimeError(f"{self.out / 'checkpoints'}: the checkpoint was written by {state['world_size']} "
                               f"processes; resume with the same number ({self.world_size} now)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self.history, self.early = state["history"], state["early_stopping"]
        set_rng_state(state["rank_states"][self.rank])
        log.info("resumed at step %d (epoch %d, batch %d) from %s", self.step, self.epoch, self.cursor,
                 self.checkpoints.resumed_from())

    def save(self, end_of_epoch: bool = False, val_loss: float | None = None, background: bool = False) -> None:
        """Checkpoint now, then rewrite history.jsonl from it; ``background`` (with
        ``checkpoint.background``): from a CPU copy, in a thread (:mod:`giblet.train.background_save`)."""
        rank_states = dist.gather_objects(rng_state())
        self.saver.wait_for_snapshot()  # _before_save may change weights the last snapshot still copies
        self._before_save()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "cursor": self.cursor, "history": self.history,
                 "early_stopping": dict(self.early), "rank_states": rank_states, "world_size": self.world_size,
                 "params": self.params, "manifest_sha256": self.manifest_sha256}
        self.saver.save(state, self.step, self.epoch, end_of_epoch=end_of_epoch, val_loss=val_loss,
                        background=background and self.params["checkpoint"].get("background", True),
                        then=(lambda saved: self._write_history(saved["history"])) if self.rank == 0 else None,
                        optimizer=self.optimizer)

    def _write_history(self, history: list[dict]) -> None:
        tmp = self.out / ".history.jsonl.tmp"
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
        os.replace(tmp, self.out / "history.jsonl")

    # -- the loop --------------------------------------------------------------------------------

    def _autocast(self):
        enabled = self.params["bf16"] and self.device.startswith("cuda")
        return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()

    def _train_epoch(self, stop: StopFlag, bar, monitor: Monitor, fault_at_step: int | None) -> bool:
        """Train from the cursor to the end of the epoch. Returns False if a signal stopped it."""
        p, n_batches = self.params, len(self.sampler)
        self.ddp.train()
        sums, started = None, time.perf_counter()
        for b, indices in enumerate(self.sampler.batches(self.epoch, self.cursor), start=self.cursor):
            group_start = b - b % p["grad_accum"]
            group = min(p["grad_accum"], n_batches - group_start)
            last = b + 1 == group_start + group
            batch = self._collate(self.train_set, indices)
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self.ddp.no_sync()
            with sync, self._autocast():
                parts = self._losses(batch, self.ddp)
                (parts["total"] / group).backward()
            values = torch.stack([parts[k].detach().float() for k in sorted(parts)]) / group
            sums = values if sums is None else sums + values
            if not last:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p["grad_clip"])
            means = dist.sum_(sums) / self.world_size  # identical on every rank, as are the gradients
            self._check_finite(means, sorted(parts), grad_norm)
            monitor.histograms(self.model, self.step + 1)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step, self.cursor = self.step + 1, b + 1
            elapsed = time.perf_counter() - started
            record = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm),
                      **{f"train/{k}": float(v) for k, v in zip(sorted(parts), means)},
                      "samples_per_s": group * p["batch_size"] * self.world_size / elapsed, "step_time_s": elapsed}
            self.history.append(record)
            monitor.step(record, self.device)
            started, sums = time.perf_counter(), None
            bar.update(1)
            if fault_at_step is not None and self.step == fault_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
            if dist.any_(stop.raised is not None, self.device):
                log.warning("signal %s: saving at step %d and exiting with %d so a rerun resumes",
                            stop.raised, self.step, EXIT_RESUME)
                self.save()
                # Only rank 0 writes; the others wait for it, so no rank exits (and no node's agent
                # ends, taking the rendezvous store or srun's step with it) before the checkpoint is whole.
                dist.barrier(self.device)
                return False
            if dist.from_rank0(self.checkpoints.should_save(self.step), self.device):
                self.save(background=True)
        return True

    def _check_finite(self, means: torch.Tensor, names: list[str], grad_norm: torch.Tensor) -> None:
        """Stop before a NaN/Inf reaches the weights; every rank raises (the values are all-reduced)."""
        bad = [name for name, value in zip(names, means.tolist()) if not math.isfinite(value)]
        if not math.isfinite(float(grad_norm)):
            bad.append("grad_norm")
        if bad:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at step {self.step + 1} (epoch {self.epoch}): stopped before the "
                f"update; the last checkpoint in {self.out / 'checkpoints'} is intact. Lower train.lr, enable "
                "train.grad_clip, or check the inputs for NaNs")

    def run(self, fault_at_step: int | None = None) -> int:
        """Train to the end (0), or until a signal (EXIT_RESUME after saving)."""
        p = self.params
        stop = StopFlag()
        total = p["epochs"] * self.steps_per_epoch
        monitor = Monitor(self.out, self.rank == 0, p, total)
        monitor.replay(self.history)
        bar = progress_bar(None, "train", "step", self.progress and self.rank == 0, total=total, initial=self.step)
        try:
            while self.epoch < p["epochs"] and not self.early["stopped"]:
                if not self._train_epoch(stop, bar, monitor, fault_at_step):
                    return EXIT_RESUME
                self.epoch, self.cursor = self.epoch + 1, 0
                val_loss = None
                # Validation and the final files change weights in place (the composed fMRI layer, the
                # readout refit): not while a background save still copies them.
                self.saver.wait_for_snapshot()
                if self.val_set is not None and self.epoch % p["val_every_epochs"] == 0:
                    metrics = self.validate()
                    val_loss = metrics[SELECTION_KEY]
                    self.history.append({"step": self.step, "epoch": self.epoch, **metrics})
                    monitor.validation(metrics, self.step, *(self.reconstruct_first_val_sample()
                                                             if self.rank == 0 else (None, None)))
                    self._early_stopping(val_loss)
                self.save(end_of_epoch=True, val_loss=val_loss, background=True)
            if self.rank == 0:
                self.saver.wait_for_snapshot()
                self.write_model()  # the last write goes on meanwhile, unless best.pt is needed
            self.saver.wait()
            validations = [h for h in self.history if "val/total" in h]
            monitor.finish(validations[-1] if validations else {})
            return 0
        finally:
            self.saver.close()  # a write in flight finishes before the process goes
            bar.close()
            stop.restore()
            monitor.close()
            dist.teardown()

    def _early_stopping(self, val_loss: float) -> None:
        """Rank 0 decides and every rank follows, so ranks can never disagree and hang."""
        if val_loss < self.early["best"]:
            self.early["best"], self.early["bad_epochs"] = val_loss, 0
        else:
            self.early["bad_epochs"] += 1
        patience = self.params["early_stopping_patience"]
        decided = bool(patience) and self.early["bad_epochs"] >= patience
        self.early["stopped"] = dist.from_rank0(decided, self.device)
        if self.early["stopped"]:
            log.info("early stopping at epoch %d: no validation improvement for %d epochs", self.epoch, patience)

    def _best_weights(self) -> tuple[dict, dict]:
        """The weights with the best validation score (``best.pt``, lowest SELECTION_KEY), or the final ones
        without validation."""
        best = self.checkpoints.directory / "best.pt"
        validated = math.isfinite(self.early["best"])
        last = self.history[-1] if self.history else {}
        # When the last validation is the best and nothing trained since, best.pt (maybe still being
        # written) holds the current weights: neither wait for it nor read it back.
        best_is_current = validated and last.get(SELECTION_KEY) == self.early["best"] and last["step"] == self.step
        if validated and not best_is_current:
            self.saver.wait()  # best.pt may be the write in flight
            if best.exists():
                state = load_checkpoint(best)
                if state["history"][-1].get(SELECTION_KEY) == self.early["best"]:  # saved right after that validation
                    return state["model"], {"weights": "best", "step": state["step"], "epoch": state["epoch"]}
                log.warning("%s does not hold the best validation score %.6g: the final weights are used",
                            best, self.early["best"])
        self._before_save()
        final = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return final, {"weights": "best" if best_is_current else "final", "step": self.step, "epoch": self.epoch}
