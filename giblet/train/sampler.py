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

    ``contiguous``: each batch is a run of ``batch_size`` consecutive samples (from a random offset,
    wrapping at the end), runs in random order, whole runs dealt to ranks. Consecutive windows share
    all but one stimulus TR, which the model then encodes once.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, contiguous: bool = False):
        if n < 1:
            raise ValueError("no samples to draw from")
        self.n, self.batch_size, self.rank, self.world, self.seed, self.shuffle = (
            n, batch_size, rank, world_size, seed, shuffle)
        self.contiguous = contiguous
        self.per_rank = math.ceil(n / world_size)

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        if self.contiguous:
            return math.ceil(math.ceil(self.n / self.batch_size) / self.world)
        return math.ceil(self.per_rank / self.batch_size)

    def runs(self, epoch: int) -> list[list[int]]:
        """Contiguous mode: this rank's runs of consecutive sample indices for ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        offset = int(torch.randint(self.n, (1,), generator=generator)) if self.shuffle else 0
        n_runs = math.ceil(self.n / self.batch_size)
        runs = [[(offset + r * self.batch_size + j) % self.n for j in range(self.batch_size)
                 if r * self.batch_size + j < self.n] for r in range(n_runs)]
        order = torch.randperm(n_runs, generator=generator).tolist() if self.shuffle else list(range(n_runs))
        order = (order * math.ceil(len(self) * self.world / n_runs))[: len(self) * self.world]
        return [runs[i] for i in order[self.rank :: self.world]]

    def indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.n))
        order = (order * math.ceil(self.per_rank * self.world / self.n))[: self.per_rank * self.world]
        return order[self.rank :: self.world]

    def batches(self, epoch: int, start: int = 0):
        if self.contiguous:
            yield from self.runs(epoch)[start:]
            return
        mine = self.indices(epoch)
        for b in range(start, len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]
