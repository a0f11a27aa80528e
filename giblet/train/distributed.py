"""The few torch.distributed operations the trainer needs, and their one-process fallbacks.

Launched by ``torchrun``, every process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment;
launched plainly, the trainer is a world of one and these helpers do nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when not launched by it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: str) -> None:
    """Join the process group: NCCL on GPUs, gloo on the CPU."""
    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce SUM in place (identity in a world of one)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_(flag: bool, device: str) -> bool:
    """True on every rank if ``flag`` is True on any rank (all-reduce MAX)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_rank0(flag: bool, device: str) -> bool:
    """Rank 0's decision, on every rank, so ranks can never disagree (and hang)."""
    if not active():
        return flag
    t = torch.tensor([int(flag) if dist.get_rank() == 0 else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(device: str) -> None:
    """Wait until every rank gets here (an all-reduce, which NCCL and gloo both do on ``device``)."""
    if active():
        dist.all_reduce(torch.zeros(1, device=device))


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (a one-element list in a world of one)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
