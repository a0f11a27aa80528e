"""Checkpoints that survive preemption, crashes and disk faults, and resume exactly.

One :class:`CheckpointManager` owns one directory::

    latest.pt, latest_backup.pt     the newest save and the one before it
    rolling/step-XXXXXXXX.pt        the last ``keep_rolling`` saves (plus the one this run resumed from)
    epoch/epoch-XXXX.pt             one per finished epoch, all kept
    best.pt                         the save with the lowest validation loss
    index.json                      sha256, size (bytes), step, epoch, val_loss, config_hash, saved_at
                                    (Unix seconds) and save time (s) of every file; retention state
    latest.pt.tmp                   between saves: the oldest pruned rolling file, recycled by the next
                                    save (never loaded)

``state`` is whatever the trainer passes (model/optimizer/scheduler state dicts, RNG states, sampler
cursor, early stopping, history ...); the manager adds ``step``, ``epoch``, ``config_hash`` and
``saved_at``. Only the bytes of ``latest.pt`` are written; the other tiers are hard links to it (a
copy where links are not supported). Every file is written under a new name and renamed into place
(:mod:`giblet.train.durable_write`), so a crash never leaves a half-written file under a checkpoint's
name. Hard links share bytes: at-rest corruption of one inode hits every name linked to it
(``latest.pt`` and its rolling file); the previous save (``latest_backup.pt``) and older rolling files
are separate inodes.

Write order of :meth:`save` (why a valid checkpoint exists at every instant):

1. check free disk (nothing touched on failure);
2. ``torch.save`` to ``latest.pt.tmp``, fsync it - old files untouched. The sha256 is that of the
   file's bytes, hashed by a thread as they are written, and the disk starts early (fdatasync every
   32 MiB), so both overlap the serialization (:class:`~giblet.train.durable_write.HashingWriter`).
   Where the last prune parked a file there (one no other tier links to), its blocks are overwritten
   and it is cut to size: as databases recycle their log segments, since writing a new file's
   never-used blocks is slower and uneven (measured here, 236 MB: 0.13-0.14 s rewriting a recycled
   file, 0.17-0.89 s writing a new one);
3. write ``index.json`` with the new digest as ``pending`` - the index still lists every old digest;
4. hard-link ``latest.pt`` -> ``latest_backup.pt.tmp``, ``os.replace`` it onto ``latest_backup.pt`` -
   ``latest.pt`` is still the old, valid file, now also the backup;
5. ``os.replace(latest.pt.tmp, latest.pt)`` - atomic: ``latest.pt`` is the old or the new file,
   never absent, and the backup holds the old one;
6. link the rolling/epoch/best tiers, prune old rolling files, write the final index, fsync directories.
   The pruned files leave the index first; the oldest with no other name is parked as
   ``latest.pt.tmp`` (step 2), the others are unlinked by a thread (freeing a large file's blocks
   took 50 ms of a 0.3 s save of 236 MB here); :meth:`wait_for_purge` joins it.

The loader accepts a file whose sha256 is any digest the index records (committed or pending), so a
crash between any two steps leaves ``latest.pt`` or ``latest_backup.pt`` verifiable.

Multi-rank contract: only rank 0 writes. The trainer all-gathers each rank's own state (RNG states,
sampler cursor) to rank 0 and passes it as ``state["rank_states"]`` (a list indexed by rank);
``load_latest`` returns the full state on every rank and each rank takes ``state["rank_states"][rank]``.
Rank 0 should broadcast its :meth:`should_save` decision, since time-based decisions may differ.

Files are read with :func:`load_checkpoint` (``torch.load(weights_only=True)``: unpickling a
checkpoint runs no code). ``benchmarks/training_speed.py`` times ``save`` against a plain
``torch.save`` of the same state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from giblet.files import _fsync_dir, sha256_file, write_json
from giblet.weights_only import load_weights_only
from giblet.train.durable_write import HashingWriter, link_atomically

log = logging.getLogger(__name__)

LATEST, BACKUP, BEST, INDEX = "latest.pt", "latest_backup.pt", "best.pt", "index.json"
NEXT = LATEST + ".tmp"  # the file a save writes, and between saves the recycled one (write order)
SLACK_BYTES = 1 << 20  # added to the tensor bytes when estimating a checkpoint's size


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (e.g. not enough free disk); nothing was changed."""


class Rejected(Exception):
    """A candidate checkpoint that cannot be resumed from: ``reason`` says why.

    ``config_hash`` is set when the file is a valid checkpoint of another configuration (the
    caller moves such a directory aside instead of resuming from it).
    """

    def __init__(self, reason: str, config_hash: str | None = None):
        super().__init__(reason)
        self.reason, self.config_hash = reason, config_hash


def load_checkpoint(path: str | Path) -> dict:
    """The state saved in checkpoint ``path``, on the CPU, read weights-only.

    Tensors, containers, numbers, strings and the numpy arrays of the RNG states only
    (:func:`giblet.weights_only.load_weights_only`); anything else in the file raises.
    """
    return load_weights_only(path)


def _tensor_bytes(obj, seen: set) -> int:
    """Bytes of the tensors and numpy arrays inside nested dicts/lists/tuples (shared storage once)."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _unlink_all(paths: list[Path]) -> None:
    """Unlink ``paths``; a failure is logged, not raised (training goes on, the next prune retries)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not remove the pruned checkpoint %s: %s", path, err)


class CheckpointManager:
    """Tiered, verified checkpoints of one training run (see the module docstring).

    ``config_hash`` identifies the run's configuration; checkpoints of another configuration are moved
    aside, never loaded. ``every_steps`` (optimizer steps) and ``every_minutes`` (wall-clock minutes)
    drive :meth:`should_save`; ``None`` disables either. ``min_free_bytes`` raises the free-disk floor
    above twice the estimated checkpoint size.
    """

    def __init__(self, directory: Path, config_hash: str, keep_rolling: int = 3,
                 every_steps: int | None = 500, every_minutes: float | None = 10.0,
                 min_free_bytes: int | None = None, rank: int = 0, world_size: int = 1):
        if keep_rolling < 1:
            raise ValueError("keep_rolling must be at least 1")
        self.directory, self.config_hash = Path(directory), str(config_hash)
        self.keep_rolling, self.every_steps, self.every_minutes = keep_rolling, every_steps, every_minutes
        self.min_free_bytes, self.rank, self.world_size = min_free_bytes, rank, world_size
        self._resumed: Path | None = None
        self._pinned: set[str] = set()      # index names retention never removes (the resumed file)
        self._last_step, self._last_time = 0, time.time()
        self._last_size = 0                 # bytes of the last checkpoint written or read
        self._prepared = False
        self._purger, self._purging = None, []  # the thread unlinking pruned files, and its work in flight

    # -- scheduling -------------------------------------------------------------------------------
    def should_save(self, step: int, now: float | None = None) -> bool:
        """True when ``every_steps`` steps or ``every_minutes`` minutes (``now``: Unix seconds) have
        passed since the last save (or the resume / the manager's creation)."""
        now = time.time() if now is None else now
        if self.every_steps and step - self._last_step >= self.every_steps:
            return True
        return bool(self.every_minutes) and now - self._last_time >= 60.0 * self.every_minutes

    def mark_saved(self, step: int) -> None:
        """Restart :meth:`should_save`'s clock: a save of ``step`` is being made now."""
        self._last_step, self._last_time = step, time.time()

    def resumed_from(self) -> Path | None:
        """The file :meth:`load_latest` loaded, or None after a fresh start."""
        return self._resumed

    # -- index ------------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        try:
            with open(self.directory / INDEX) as f:
                index = json.load(f)
        except (OSError, ValueError):
            return {"files": {}, "pending": None, "retention": {}}
        index.setdefault("files", {})
        index.setdefault("retention", {})
        return index

    def _write_index(self, index: dict) -> None:
        index["config_hash"] = self.config_hash
        index["retention"].update(
            keep_rolling=self.keep_rolling, pinned=sorted(self._pinned),
            rolling=sorted(n for n in index["files"] if n.startswith("rolling/")),
            epochs=sorted(n for n in index["files"] if n.startswith("epoch/")))
        write_json(self.directory / INDEX, index)
        _fsync_dir(self.directory)

    def _prepare(self) -> dict:
        """Create the directory, move aside another configuration's checkpoints, drop stale temps."""
        if not self._prepared and self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            old = self._read_index().get("config_hash")
            if old is not None and old != self.config_hash:
                self._move_aside(old)
            for sub in ("rolling", "epoch"):
                (self.directory / sub).mkdir(exist_ok=True)
            for tmp in self.directory.rglob("*.tmp"):
                tmp.unlink()
            self._prepared = True
        return self._read_index()

    def _move_aside(self, old_hash: str) -> Path:
        """Rename the whole directory to ``<name>.stale-<old hash>-<time>`` and start an empty one."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.directory.parent / f"{self.directory.name}.stale-{old_hash[:8]}-{stamp}"
        base, n = target, 1
        while target.exists():
            target, n = base.with_name(f"{base.name}-{n}"), n + 1
        os.rename(self.directory, target)
        self.directory.mkdir()
        _fsync_dir(self.directory.parent)
        log.warning("checkpoints in %s were made with config %s, not %s: moved to %s; starting fresh",
                    self.directory, old_hash, self.config_hash, target)
        return target

    # -- saving -----------------------------------------------------------------------------------
    def save(self, state: dict, step: int, epoch: int, *, end_of_epoch: bool = False,
             val_loss: float | None = None) -> Path:
        """Write a checkpoint of ``state`` at ``step``/``epoch``; returns the path of ``latest.pt``.

        On ranks other than 0 this only updates the :meth:`should_save` clock (see the contract above).
        Raises :class:`CheckpointError` before touching any file when free disk is short.
        """
        latest = self.directory / LATEST
        self.mark_saved(step)
        if self.rank != 0:
            return latest
        index = self._prepare()
        seen: set = set()
        estimate = max(_tensor_bytes(state, seen) + SLACK_BYTES, self._last_size)
        need = max(2 * estimate, self.min_free_bytes or 0)
        tmp = self.directory / NEXT
        free = shutil.disk_usage(self.directory).free + (tmp.stat().st_size if tmp.exists() else 0)
        if free < need:
            raise CheckpointError(f"{self.directory}: {free} bytes free, a checkpoint of step {step} "
                                  f"needs {need} (2 x ~{estimate} bytes or min_free_bytes); nothing written")
        started = time.time()
        payload = {**state, "step": step, "epoch": epoch, "config_hash": self.config_hash,
                   "saved_at": started}
        with HashingWriter(tmp) as out:
            torch.save(payload, out)
            digest = out.finish()
        entry = {"sha256": digest, "bytes": tmp.stat().st_size, "step": step,
                 "epoch": epoch, "val_loss": val_loss, "config_hash": self.config_hash,
                 "saved_at": started}
        index["pending"] = entry
        self._write_index(index)
        files = index["files"]
        if latest.exists():                      # old latest -> backup; latest.pt stays valid
            link_atomically(latest, self.directory / BACKUP)
            if LATEST in files:
                files[BACKUP] = files[LATEST]
        os.replace(tmp, latest)                  # commit: latest.pt is the new checkpoint
        _fsync_dir(self.directory)
        files[LATEST] = entry
        rolling = f"rolling/step-{step:08d}.pt"
        if rolling not in self._pinned:
            link_atomically(latest, self.directory / rolling)
            files[rolling] = entry
        if end_of_epoch:
            link_atomically(latest, self.directory / f"epoch/epoch-{epoch:04d}.pt")
            files[f"epoch/epoch-{epoch:04d}.pt"] = entry
        best = index["retention"].get("best_val_loss")
        if val_loss is not None and (best is None or val_loss < best):
            link_atomically(latest, self.directory / BEST)
            files[BEST] = entry
            index["retention"].update(best_val_loss=val_loss, best_step=step)
        self._prune(files)
        entry["save_seconds"] = time.time() - started
        index["pending"] = None
        self._write_index(index)
        for sub in ("rolling", "epoch"):
            _fsync_dir(self.directory / sub)
        self._last_size = entry["bytes"]
        return latest

    def _prune(self, files: dict) -> None:
        """Keep the newest ``keep_rolling`` rolling files plus the pinned (resumed-from) one: the others
        leave ``files`` now and the disk in a thread. A file left by a crash is pruned next time."""
        on_disk = {f"rolling/{p.name}" for p in (self.directory / "rolling").glob("step-*.pt")}
        rolling = sorted(on_disk | {n for n in files if n.startswith("rolling/")})
        doomed = [self.directory / name for name in rolling[:-self.keep_rolling] if name not in self._pinned]
        for path in doomed:
            files.pop(f"rolling/{path.name}", None)
        parked = self.directory / NEXT
        if not parked.exists():
            lone = next((path for path in doomed if path.exists() and path.stat().st_nlink == 1), None)
            if lone is not None:
                os.replace(lone, parked)  # the next save overwrites its blocks (see the write order)
                doomed.remove(lone)
        if doomed:
            if self._purger is None:
                from concurrent.futures import ThreadPoolExecutor

                # Its thread is joined at interpreter exit, so the unlinks finish before the process ends.
                self._purger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-purge")
            self._purging = [f for f in self._purging if not f.done()]
            self._purging.append(self._purger.submit(_unlink_all, doomed))

    def wait_for_purge(self) -> None:
        """Join the unlinking of pruned files; after it, the directory holds exactly what the index lists."""
        for future in self._purging:
            future.result()
        self._purging = []

    # -- loading ----------------------------------------------------------------------------------
    def _candidates(self, index: dict) -> list[str]:
        def newest_first(sub: str, pattern: str) -> list[str]:
            names = {f"{sub}/{p.name}" for p in (self.directory / sub).glob(pattern)}
            names |= {n for n in index["files"] if n.startswith(sub + "/")}
            return sorted(names, reverse=True)
        return [LATEST, BACKUP, *newest_first("rolling", "step-*.pt"), *newest_first("epoch", "epoch-*.pt")]

    def _check(self, name: str, index: dict) -> dict | None:
        """Load and verify one candidate: its state, None when the file does not exist, or
        :class:`Rejected` raised with the reason."""
        path, entry = self.directory / name, index["files"].get(name)
        if not path.is_file():
            return None
        size = path.stat().st_size
        if entry is not None:                    # any recorded digest will do (see the write order)
            known = {e["sha256"] for e in index["files"].values()}
            if index.get("pending"):
                known.add(index["pending"]["sha256"])
            if sha256_file(path) not in known:
                if size < entry["bytes"]:
                    raise Rejected(f"truncated: {size} of {entry['bytes']} bytes")
                raise Rejected("checksum mismatch: its sha256 is not one the index recorded")
        try:
            state = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle rejects the file
            if "Weights only load failed" in str(exc):
                raise Rejected("refused: it holds objects other than tensors, containers and numbers, whose "
                               f"unpickling could run code ({str(exc).splitlines()[0]})") from None
            raise Rejected(f"truncated: cannot be read ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or "config_hash" not in state:
            raise Rejected("not a checkpoint (no config_hash)")
        if state["config_hash"] != self.config_hash:
            raise Rejected(f"config hash differs: {state['config_hash']} != {self.config_hash}",
                           config_hash=str(state["config_hash"]))
        self._last_size = size
        return state

    def load_latest(self) -> dict | None:
        """The newest valid checkpoint of this configuration, or None for a fresh start.

        Candidates: latest, backup, rolling (newest first), epoch (newest first); each rejection is
        logged with its reason. A leading ``module.`` is stripped from ``state["model"]`` keys.
        """
        self.wait_for_purge()  # no candidate vanishes while it is read
        index = self._prepare() if self.rank == 0 else self._read_index()
        if index.get("config_hash") not in (None, self.config_hash) or not self.directory.is_dir():
            return None                          # another configuration (rank 0 moved it aside)
        stale_hashes = []
        for name in self._candidates(index):
            try:
                state = self._check(name, index)
            except Rejected as rejected:
                log.warning("checkpoint %s rejected: %s", self.directory / name, rejected.reason)
                if rejected.config_hash is not None:
                    stale_hashes.append(rejected.config_hash)
                continue
            if state is None:                    # no such file
                continue
            if isinstance(state.get("model"), dict):
                torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state["model"], "module.")
            self._resumed = self.directory / name
            self._last_step, self._last_time = int(state["step"]), time.time()
            if self.rank == 0:
                self._pin(name, index, state)
            log.info("resumed from %s (step %s, epoch %s)", self._resumed, state["step"], state["epoch"])
            return state
        if stale_hashes and self.rank == 0:      # only another configuration's files: set them aside
            self._move_aside(stale_hashes[0])
            self._prepared = False
            self._prepare()
        return None

    def _pin(self, name: str, index: dict, state: dict) -> None:
        """Protect the resumed-from bytes from retention: pin a rolling/epoch file that holds them,
        linking the file to ``rolling/step-XXXXXXXX.pt`` first if none does."""
        digest = sha256_file(self.directory / name)
        holders = [n for n, e in index["files"].items()
                   if n.startswith(("rolling/", "epoch/")) and e["sha256"] == digest]
        if name.startswith(("rolling/", "epoch/")):
            holders = [name]
        if not holders:
            holder = f"rolling/step-{int(state['step']):08d}.pt"
            link_atomically(self.directory / name, self.directory / holder)
            entry = index["files"].get(name) or {
                "sha256": digest, "bytes": (self.directory / name).stat().st_size, "step": state["step"],
                "epoch": state["epoch"], "val_loss": None, "config_hash": self.config_hash,
                "saved_at": state.get("saved_at")}
            index["files"][holder] = entry
            holders = [holder]
        self._pinned = set(holders)
        index["resumed_from"] = name
        self._write_index(index)
