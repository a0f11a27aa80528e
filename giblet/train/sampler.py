"""A seeded, sharded, resumable order of samples: the data position is part of the checkpoint."""

from __future__ import annotations

import math

import torch


class ResumableSampler:
    """Epoch ``e`` visits a permutation of ``n`` samples drawn from ``seed + e``, split across ranks.

    Like torch's DistributedSampler, the permutation is padded (by wrapping) to a multiple of the
    world size and rank ``r`` takes every ``world``-th index from ``r``, so every rank has the same
    number of batches. ``batches(epoch, start)`` resumes mid-epoch at batch ``start``: the cursor
    is all a checkpoint needs to record.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if n < 1:
            raise ValueError("no samples to draw from")
        self.n, self.batch_size, self.rank, self.world, self.seed, self.shuffle = (
            n, batch_size, rank, world_size, seed, shuffle)
        self.per_rank = math.ceil(n / world_size)

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.n))
        order = (order * math.ceil(self.per_rank * self.world / self.n))[: self.per_rank * self.world]
        return order[self.rank :: self.world]

    def batches(self, epoch: int, start: int = 0):
        mine = self.indices(epoch)
        for b in range(start, len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]
