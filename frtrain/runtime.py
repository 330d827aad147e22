"""Facts of the process the commands run in: the device, the autocast precision, the CPU cores, threads and workers.

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

import torch

from frtrain import distributed as D
from frtrain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{D.local_rank()}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None for fp32). ``auto`` is bf16 on CUDA when supported, fp16 otherwise, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={name!r}: expected auto, fp32, bf16 or fp16")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp32":
        return None
    if device.type != "cuda":
        raise ConfigError(f"trainer.precision={name}: mixed precision is for CUDA; use fp32 (or auto) on {device.type}")
    return torch.bfloat16 if name == "bf16" else torch.float16


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
