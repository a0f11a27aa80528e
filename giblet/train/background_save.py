"""Checkpoints written off the training loop: snapshot to CPU memory, then write in a thread.

A save of a large model writes gigabytes while every GPU waits. :class:`BackgroundSaver` takes a
copy of the state in CPU memory, into the buffers of the previous copy (one copy of the state stays
in host memory), then a thread runs :meth:`giblet.train.checkpoint.CheckpointManager.save` on the
copy: the same write order, checksums and fsyncs, so a kill at any instant of the background write
leaves the previous checkpoint intact and loadable, exactly as for a synchronous save. As
torchtitan's and ``torch.distributed.checkpoint``'s asynchronous saves do, at most one write is in
flight: a new save first waits for the previous one.

The copy itself is pipelined with training, as CheckFreq does (Mohan et al., FAST 2021): given the
optimizer, the tensors that only its ``step()`` changes (the parameters and the optimizer's state,
nearly all the bytes) are copied by the thread while the loop goes on with the next forward and
backward pass, and the optimizer's next step waits for that copy (a step pre-hook;
:meth:`BackgroundSaver.wait_for_snapshot` for other code that changes weights in place). Everything
else (buffers that a forward pass updates, the history, numbers) is copied before ``save`` returns.

A save that must be durable before the process goes on (the one a signal asks for, before exiting
75) is synchronous: ``background=False`` waits for any write in flight, then writes. :meth:`wait`
joins the write in flight and raises its error, if any; the trainer calls it before reading
``best.pt`` and before it exits.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable

import numpy as np
import torch

from giblet.train.checkpoint import CheckpointManager

log = logging.getLogger(__name__)


def cpu_snapshot(obj, buffers: dict | None = None, path: tuple = (), memo: dict | None = None,
                 deferred: "DeferredCopies | None" = None):
    """A copy of ``obj`` that later training cannot change: every tensor copied to the CPU (a tensor
    referenced twice is copied once), numpy arrays copied, dicts, lists and tuples rebuilt; numbers,
    strings and None as they are.

    ``buffers`` (path in ``obj`` -> CPU tensor) holds the previous snapshot's tensors: one of the same
    shape and dtype is overwritten instead of allocating anew, which halves the copy's time (no page
    faults on fresh memory); new tensors are added to it. Pinned memory for a GPU tensor's copy.
    ``deferred``: a tensor whose storage it owns gets its buffer now and is queued on it, to be copied
    later (:meth:`DeferredCopies.run`).
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = _copy_tensor(obj, buffers, path, deferred)
        return memo[id(obj)]
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {key: cpu_snapshot(value, buffers, (*path, key), memo, deferred) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [cpu_snapshot(value, buffers, (*path, k), memo, deferred) for k, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    import copy

    return copy.deepcopy(obj)


def _copy_tensor(tensor: torch.Tensor, buffers: dict | None, path: tuple,
                 deferred: "DeferredCopies | None") -> torch.Tensor:
    tensor = tensor.detach()
    buffer = buffers.get(path) if buffers is not None else None
    if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
        if buffers is not None:
            buffers[path] = buffer
    if deferred is not None and deferred.owns(tensor):
        deferred.pairs.append((buffer, tensor))
        return buffer
    return buffer.copy_(tensor)


class DeferredCopies:
    """The copies a snapshot leaves for later: those of the tensors only ``optimizer.step()`` changes.

    Built before ``save`` returns (:func:`cpu_snapshot` fills ``pairs``); :meth:`run` copies them,
    in the writing thread. On a GPU the copies go on a side stream that first waits for the work
    queued before the save, so they overlap the next forward and backward pass.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        self.storages = {t.untyped_storage().data_ptr() for t in tensors}
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (CPU buffer, live tensor)
        self.device = next((t.device for t in tensors if t.is_cuda), None)
        self.ready = None
        if self.device is not None:
            with torch.cuda.device(self.device):
                self.ready = torch.cuda.Event()
                self.ready.record()  # on the loop's stream: what it queued before the save

    def owns(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self.storages

    def run(self) -> None:
        if self.ready is None:
            for buffer, tensor in self.pairs:
                buffer.copy_(tensor)
            return
        with torch.cuda.device(self.device):  # this thread's current device is not the loop's
            stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            stream.wait_event(self.ready)
            for buffer, tensor in self.pairs:
                buffer.copy_(tensor, non_blocking=True)
        stream.synchronize()


class BackgroundSaver:
    """Saves of one :class:`CheckpointManager`, in a background thread unless asked otherwise."""

    def __init__(self, manager: CheckpointManager):
        self.manager = manager
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict = {}  # the last snapshot's CPU tensors, reused by the next
        self._copied = threading.Event()  # set once the snapshot's deferred copies are done
        self._copied.set()
        self._hooked = weakref.WeakSet()  # the optimizers whose step waits for the copies

    def save(self, state: dict, step: int, epoch: int, *, end_of_epoch: bool = False,
             val_loss: float | None = None, background: bool = True,
             then: Callable[[dict], None] | None = None,
             optimizer: torch.optim.Optimizer | None = None) -> None:
        """Save ``state`` at ``step``/``epoch``; with ``background``, return once it is copied, or,
        given the ``optimizer`` that trains it, once all but its parameters and state are copied
        (those copies then run in the thread, and its next ``step()`` waits for them). ``then`` runs
        with the saved state once the checkpoint is durable (in the thread, for a background save).
        Raises the error of the previous background write, if it failed."""
        self.wait()
        if not background or self.manager.rank != 0:  # only rank 0 writes; the others keep the clock
            self.manager.save(state, step, epoch, end_of_epoch=end_of_epoch, val_loss=val_loss)
            if then is not None:
                then(state)
            return
        deferred = DeferredCopies(optimizer) if optimizer is not None else None
        snapshot = cpu_snapshot(state, self._buffers, deferred=deferred)
        if deferred is not None and deferred.pairs:
            self._wait_before_steps_of(optimizer)
            self._copied.clear()
        self.manager.mark_saved(step)  # should_save's clock counts from now, not from the write's end
        self._thread = threading.Thread(target=self._write, name=f"checkpoint-step-{step}",
                                        args=(snapshot, deferred, step, epoch, end_of_epoch, val_loss, then))
        self._thread.start()

    def _wait_before_steps_of(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer not in self._hooked:
            optimizer.register_step_pre_hook(lambda *_: self.wait_for_snapshot())
            self._hooked.add(optimizer)

    def _write(self, snapshot: dict, deferred: DeferredCopies | None, step: int, epoch: int, end_of_epoch: bool,
               val_loss: float | None, then: Callable[[dict], None] | None) -> None:
        try:
            try:
                if deferred is not None:
                    deferred.run()
            finally:
                self._copied.set()
            self.manager.save(snapshot, step, epoch, end_of_epoch=end_of_epoch, val_loss=val_loss)
            if then is not None:
                then(snapshot)
        except BaseException as err:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = err

    def wait_for_snapshot(self) -> None:
        """Return once the snapshot in flight is fully copied: the weights may change from then on."""
        self._copied.wait()

    def wait(self) -> None:
        """Join the write in flight and the unlinking of what it pruned; raise its error (once)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.manager.wait_for_purge()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Join the write in flight without raising (the trainer is already leaving); log its error."""
        try:
            self.wait()
        except Exception as err:  # noqa: BLE001 - reported, not raised: another error may be on its way
            log.error("the background checkpoint write failed: %s: %s", type(err).__name__, err)
