"""The training DataLoader: a seeded, rank-sharded, resumable batch order; workers and CPU threads.

CPU threads: each rank gets its share of the machine's cores (torchrun's ``LOCAL_WORLD_SIZE`` ranks share a
node) for its PyTorch threads (``trainer.threads``/``eval.threads`` = ``auto``). DataLoader workers run one
thread each (decoding and augmentation), and OpenMP threads wait passively (``frtrain/__init__.py`` sets
``OMP_WAIT_POLICY=PASSIVE``), so a worker or another job that needs a core gets it instead of a thread spinning
on it. Measured on 2 cores (docs/benchmarks.md, scripts/bench_threads.py): PyTorch's defaults (2 spinning threads)
ran the default training at 366 images/s idle and 120 with one busy process beside it; one thread (the core share
minus the worker) 223 and 241; the share with passive waiting 316 and 206, which is what ``auto`` does: the best
balance of the three (scoring: 0.90x idle, 2.07x under load).
"""

from __future__ import annotations

import os
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_share() -> int:
    """The CPU cores of this rank: the cores this process may run on, divided among the node's ranks."""
    return max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def default_num_workers() -> int:
    """Worker processes per rank when the config says ``auto``: this rank's share of the CPU cores minus one
    for the trainer, between 1 and 8."""
    return max(1, min(8, cpu_share() - 1))


def resolve_workers(num_workers) -> int:
    workers = default_num_workers() if num_workers in (None, "auto") else int(num_workers)
    if workers < 0:
        raise ConfigError(f"data.loader.num_workers={num_workers}: expected 'auto' or a number >= 0")
    return workers


def resolve_threads(threads) -> int:
    """PyTorch CPU threads of this rank: ``threads``, or for ``auto`` its core share (see the module docstring)."""
    if threads in (None, "auto"):
        return cpu_share()
    return int(threads)


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

    workers = resolve_workers(num_workers)
    kwargs = dict(num_workers=workers, pin_memory=pin_memory, generator=generator, collate_fn=collate)
    if workers > 0:
        kwargs.update(persistent_workers=persistent, prefetch_factor=prefetch_factor,
                      worker_init_fn=_one_thread_per_worker)
    return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
