"""The training DataLoader: a seeded, rank-sharded, resumable batch order and single-threaded, Ctrl-C-deaf
workers. How many workers and threads each rank gets is :mod:`frtrain.runtime`'s business."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from frtrain.errors import ConfigError


class ResumableBatchSampler(Sampler[list]):
    """Batches of ``(index, seed)`` keys: a seeded permutation per epoch, sharded over ranks.

    Epoch e shuffles all N samples with a generator seeded by (seed, e) and draws one augmentation seed
    per position. Global batch b is positions ``[b*B*W, (b+1)*B*W)`` of the permutation; rank r takes
    its slice ``[r*B, (r+1)*B)`` of it. Incomplete global batches are dropped, so every rank yields the
    same number of batches of size B. ``set_epoch(e, start_batch=k)`` resumes epoch e at batch k, so a
    resumed run sees exactly the samples (and augmentations) an uninterrupted run would.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected a positive integer")
        if num_samples < batch_size * world_size:
            raise ConfigError(
                f"the dataset has {num_samples} images, fewer than one global batch "
                f"({batch_size} x {world_size} ranks); lower data.batch_size"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.num_samples,), generator=g)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            lo = b * global_batch + self.rank * self.batch_size
            yield list(zip(order[lo : lo + self.batch_size].tolist(), seeds[lo : lo + self.batch_size].tolist()))


def _one_thread_per_worker(_worker_id: int) -> None:
    """A training worker: one thread, and deaf to Ctrl-C (the trainer finishes its step, saves and stops the
    workers; a worker killed by the terminal's SIGINT would leave the step without its batches)."""
    import signal

    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_sampler: Sampler, num_workers, pin_memory: bool,
                prefetch_factor: int = 2, persistent: bool = True,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over ``batch_sampler`` with single-threaded workers, pinned memory, persistent workers and
    :func:`frtrain.data.base.collate` (batches of ``(images, labels, skipped indices)``)."""
    from frtrain.data.base import collate

    from frtrain.runtime import resolve_workers

    workers = resolve_workers(num_workers)
    kwargs = dict(num_workers=workers, pin_memory=pin_memory, generator=generator, collate_fn=collate)
    if workers > 0:
        kwargs.update(persistent_workers=persistent, prefetch_factor=prefetch_factor,
                      worker_init_fn=_one_thread_per_worker)
    return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
