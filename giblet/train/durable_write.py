"""Writing a file's bytes durably: hashed while they are written, put under a name by atomic rename.

The two primitives :mod:`giblet.train.checkpoint` builds its write order on:

- :class:`HashingWriter`, the file object ``torch.save`` writes to: the sha256 of the file's bytes is
  computed by a thread as they are written, and another starts the disk early (fdatasync every
  32 MiB), so both overlap the serialization instead of following it;
- :func:`link_atomically`, which gives a file's bytes a second name (hard link, or a copy where links
  are not supported) by way of a temporary name and ``os.replace``, so the name holds the old bytes or
  the new ones, never a partial file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path


class HashingWriter:
    """The file object :meth:`~giblet.train.checkpoint.CheckpointManager.save` gives ``torch.save``:
    it writes ``path`` while one thread sha256-hashes the bytes written so far and another flushes
    them to disk, so hashing and the disk's work overlap torch's serialization instead of following it.

    ``torch.save`` calls ``write`` with memoryviews of memory it may free or reuse once ``write``
    returns (tensor storages, the CPU copy of a GPU storage, header buffers), so no thread keeps them:
    the hasher re-reads (``os.preadv``) what has reached the file, from the page cache, and the digest
    is that of the file's bytes by construction. hashlib, preadv, write and fdatasync release the GIL.
    Writes under ``SMALL`` bytes are collected and written together; larger ones go out in ``CHUNK``
    pieces, so the threads can follow a large tensor while it is written.

    Given a file object, ``torch.save`` writes the same zip format as to a path (records under
    ``archive/``), which ``torch.load`` reads as usual, ``weights_only`` included.

    Use as a context manager; :meth:`finish` (after ``torch.save``) fsyncs the file and returns its
    digest, raising any error of either thread (an fdatasync error is reported once per open file,
    so the final fsync alone could miss it). Leaving the block without it stops both threads.
    """

    SMALL = 1 << 20          # writes below this are collected
    CHUNK = 8 << 20          # bytes per write / read
    SYNC_EVERY = 32 << 20    # fdatasync once this many more bytes are written

    def __init__(self, path: Path):
        # No O_TRUNC: an existing file's blocks are overwritten in place, and finish() cuts it to size
        # (the checkpoint manager parks a pruned checkpoint here to be recycled).
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._pending = bytearray()              # small writes not yet in the file
        self._written = self._hashed = self._synced = 0
        self._done = self._aborted = False       # no more writes / stop hashing now
        self._errors: list[BaseException] = []
        self._digest = hashlib.sha256()
        self._progress = threading.Condition()   # guards _written, _done, _aborted
        self._threads = [threading.Thread(target=self._guard, args=(work,), daemon=True)
                         for work in (self._hash, self._sync)]
        for thread in self._threads:
            thread.start()

    # -- what torch.save calls --------------------------------------------------------------------
    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if len(view) < self.SMALL:
            self._pending += view
            if len(self._pending) >= self.SMALL:
                self.flush()
        else:
            self.flush()
            for start in range(0, len(view), self.CHUNK):
                self._write_all(view[start:start + self.CHUNK])
        return len(view)

    def flush(self) -> None:
        if self._pending:
            self._write_all(self._pending)
            self._pending = bytearray()

    def _write_all(self, data) -> None:
        view, done = memoryview(data), 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        with self._progress:
            self._written += done
            self._progress.notify_all()

    # -- the threads ------------------------------------------------------------------------------
    def _guard(self, work) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self._errors.append(exc)

    def _hash(self) -> None:
        """Hash every byte written, in order, until the writes are done and all are hashed."""
        buffer = memoryview(bytearray(self.CHUNK))
        while True:
            with self._progress:
                self._progress.wait_for(lambda: self._hashed < self._written or self._done)
                end = self._written
            while self._hashed < end and not self._aborted:
                n = os.preadv(self._fd, [buffer[:min(self.CHUNK, end - self._hashed)]], self._hashed)
                if n <= 0:
                    raise OSError(f"short read at byte {self._hashed} of {end}")
                self._digest.update(buffer[:n])
                self._hashed += n
            if self._aborted or (self._done and self._hashed == self._written):
                return

    def _sync(self) -> None:
        """Start the disk early: fdatasync whenever ``SYNC_EVERY`` more bytes were written."""
        while True:
            with self._progress:
                self._progress.wait_for(lambda: self._written - self._synced >= self.SYNC_EVERY
                                        or self._done)
                if self._done:
                    return                       # finish() fsyncs the rest
                end = self._written
            os.fdatasync(self._fd)
            self._synced = end

    def _stop(self, abort: bool = False) -> None:
        """No more writes: the hasher hashes what is left (on ``abort``: stops at its next chunk)."""
        with self._progress:
            self._done = True
            self._aborted |= abort
            self._progress.notify_all()

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> str:
        """fsync the file (the hasher catches up meanwhile); returns the sha256 of all bytes written."""
        self.flush()
        self._stop()
        os.ftruncate(self._fd, self._written)
        os.fsync(self._fd)
        self._join()
        if self._errors:
            raise self._errors[0]
        return self._digest.hexdigest()

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._stop(abort=True)
        self._join()
        os.close(self._fd)


def link_atomically(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes: hard link (copy if unsupported) to a temp, then rename."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)

