"""The one place for distributed facts (rank, world size) and the collectives the heads share.

Every function works unchanged in a single process, where it is the identity or a no-op, so that
no caller needs an ``if distributed`` branch.

Gradient conventions of the collectives (they decide whether a sharded head's gradients equal
those of the same head on one process):

* :func:`gather_features` concatenates every rank's batch. Rank r then computes partial results
  from its own slice of the class vectors, so the gradient of the loss w.r.t. the gathered
  features is split over the ranks; the backward pass therefore **sums** the gathered gradient
  over ranks and returns this rank's chunk.
* :func:`all_reduce_replicated` and :func:`all_gather_replicated` combine per-shard partial results
  into a value that every rank then uses in the same, replicated computation of the loss. Each rank
  already holds the full gradient of that replicated computation, so the backward pass is
  **local**: the identity for a sum, this rank's chunk for a gather.
* :func:`all_reduce_shared` combines per-shard results into a value that each rank then uses with
  its **own** shard (Margin Loss compares the own-centre distance with every local centre). Each
  rank then holds only its share of that value's gradient, so the backward pass sums it over ranks.
* :func:`replicated` marks a value computed identically on every rank from gathered features alone
  (no class shard involved, e.g. UNPG's batch-negative term). Only rank 0 keeps its graph, so after
  the summing backward of :func:`gather_features` it is counted exactly once.

With these rules the loss of a W-rank job equals the single-process loss on the concatenated batch,
and so do the gradients w.r.t. embeddings and class vectors. Each rank's backbone then holds the
gradient of that global loss through its own samples only, so the backbone's data-parallel all-reduce
must **sum** over ranks, not average (DistributedDataParallel's default): :func:`wrap_ddp` installs a
summing communication hook. insightface reaches the same result by multiplying the gathered gradient
by W and letting DDP average.

Checkpoints: :func:`gather_rows` collects every rank's slice of a class matrix on rank 0, so a
checkpoint holds all C rows whatever the world size, and :func:`shard_range` slices it again on load
(see :mod:`frtrain.engine.sharded_state`).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env(rendezvous_seconds: float = 60.0, timeout_minutes: float = 30.0) -> bool:
    """Join the process group that torchrun describes in the environment, if any.

    Returns True when a process group with more than one rank is running. NCCL is used when CUDA is
    available, gloo otherwise. Nothing happens at import time. What it waits for (rank, world size, address) is
    logged at once; the other ranks must join within ``rendezvous_seconds`` (``trainer.dist_timeout``), after
    which it stops with one line; collectives then wait up to ``timeout_minutes`` (a rank scoring benchmarks
    while the others wait at a barrier).
    """
    import logging

    from frtrain.errors import ConfigError, FrtrainError, first_line

    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit():
        raise ConfigError(f"WORLD_SIZE={world!r} in the environment: expected a number of processes")
    if int(world) <= 1:
        return False
    if dist.is_initialized():
        return is_distributed()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set in the environment but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not: start the ranks with torchrun, or unset "
                          "WORLD_SIZE to train in one process")
    where = (f"rank {os.environ['RANK']} of WORLD_SIZE={world} at {os.environ['MASTER_ADDR']}:"
             f"{os.environ['MASTER_PORT']}")
    logging.getLogger("frtrain").warning("joining the process group as %s; waiting up to %g s for the other ranks "
                                         "(trainer.dist_timeout)", where, rendezvous_seconds)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=rendezvous_seconds))
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise FrtrainError(f"could not join the process group as {where} within trainer.dist_timeout="
                           f"{rendezvous_seconds:g} s ({first_line(e)}); start every rank with torchrun, or unset "
                           "WORLD_SIZE to train in one process") from None
    dist.set_timeout(datetime.timedelta(minutes=timeout_minutes))
    return is_distributed()


def shutdown(wait: bool = True) -> None:
    """Leave the process group.

    ``wait=True`` (a run that finished): first wait for every rank, since tearing the group down while
    another rank still talks to this one (a gather to rank 0 in flight) aborts gloo ("terminate called
    without an active exception"). ``wait=False`` (this rank failed): leave at once, so that the error
    reaches torchrun, which stops the other ranks, instead of waiting for ranks that will never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
            _all_left_the_barrier()
        dist.destroy_process_group()


def _all_left_the_barrier(timeout_s: float = 60.0) -> None:
    """Wait, through the rendezvous store, until every rank has returned from the last barrier.

    A rank can leave a gloo barrier while its last message to a peer is still being written; destroying the
    group then aborts the peer (pytorch/gloo#155). Once every rank has counted itself out of the barrier here,
    every message of it has arrived."""
    import time

    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return
    key, world = "frtrain/left_barrier", dist.get_world_size()
    store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    while store.add(key, 0) < world and time.monotonic() < deadline:
        time.sleep(0.005)


def shard_range(num_items: int, shard: int | None = None, num_shards: int | None = None) -> tuple[int, int]:
    """(start, count) of the contiguous slice of ``num_items`` that shard ``shard`` owns.

    Shard r owns ``n // W + (r < n % W)`` items starting at ``n // W * r + min(r, n % W)``, as in
    insightface's Partial FC, so slices differ in size by at most one.
    """
    shard = rank() if shard is None else shard
    num_shards = world_size() if num_shards is None else num_shards
    base, extra = divmod(num_items, num_shards)
    count = base + (1 if shard < extra else 0)
    start = base * shard + min(shard, extra)
    return start, count


def _all_gather_cat(x: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def _check_same_size(x: torch.Tensor, what: str) -> None:
    sizes = torch.tensor([x.shape[0]], device=x.device)
    largest = sizes.clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    dist.all_reduce(sizes, op=dist.ReduceOp.MIN)
    if int(sizes) != int(largest):
        raise RuntimeError(
            f"{what}: every rank must contribute the same batch size, got sizes between "
            f"{int(sizes)} and {int(largest)} (use drop_last=True in the training loader)"
        )


class _GatherSumBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        return _all_gather_cat(x, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch
        return grad[start : start + ctx.batch]


class _AllReduceLocalBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=op)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _AllReduceSumBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _GatherLocalBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, x.shape[dim]
        return _all_gather_cat(x, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.narrow(ctx.dim, rank() * ctx.size, ctx.size), None


def gather_features(x: torch.Tensor, labels: torch.Tensor | None = None):
    """Concatenate every rank's ``x`` (B, ...) along dim 0, with the summing backward described above.

    Returns ``(x_all, labels_all)`` of shape (W*B, ...); in one process, ``(x, labels)`` unchanged.
    """
    if not is_distributed():
        return x, labels
    _check_same_size(x, "gather_features")
    x_all = _GatherSumBackward.apply(x)
    labels_all = None if labels is None else _all_gather_cat(labels, 0)
    return x_all, labels_all


def all_reduce_replicated(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce (``sum`` or ``max``) of per-shard partial results, local (identity) backward."""
    if not is_distributed():
        return x
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if op == "max" or not x.requires_grad:
        y = x.detach().clone()
        dist.all_reduce(y, op=reduce_op)
        return y
    return _AllReduceLocalBackward.apply(x, reduce_op)


def all_reduce_shared(x: torch.Tensor) -> torch.Tensor:
    """Sum of per-shard partial results that each rank then uses with its own shard (summing backward)."""
    if not is_distributed():
        return x
    return _AllReduceSumBackward.apply(x)


def all_gather_replicated(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Concatenate per-shard partial results along ``dim``, local-chunk backward."""
    if not is_distributed():
        return x
    return _GatherLocalBackward.apply(x, dim)


def replicated(x: torch.Tensor) -> torch.Tensor:
    """Keep the graph of a rank-identical value computed from gathered features on rank 0 only."""
    if not is_distributed() or rank() == 0:
        return x
    return x.detach()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list | None:
    """Rank 0: ``[obj of rank 0, obj of rank 1, ...]``; other ranks: None. One process: ``[obj]``."""
    if not is_distributed():
        return [obj]
    box = [None] * world_size() if is_main() else None
    dist.gather_object(obj, box, dst=0)
    return box


def gather_rows(t: torch.Tensor, num_items: int) -> torch.Tensor | None:
    """Rank 0: the (num_items, ...) matrix whose rows every rank holds a :func:`shard_range` slice of.

    ``t``: this rank's (count, ...) slice. Returns the whole matrix on the CPU on rank 0 and None on the
    other ranks; in one process, ``t`` on the CPU. Uneven slices are padded to the largest for the
    collective. Rank 0 briefly holds W padded slices on ``t``'s device (the whole matrix).
    """
    t = t.detach()
    if not is_distributed():
        return t.cpu()
    start, count = shard_range(num_items)
    if t.shape[0] != count:
        raise ValueError(f"gather_rows: rank {rank()} holds {t.shape[0]} rows, its slice of {num_items} has {count}")
    largest = shard_range(num_items, 0)[1]
    padded = t.new_zeros((largest,) + tuple(t.shape[1:]))
    padded[:count] = t
    parts = [torch.empty_like(padded) for _ in range(world_size())] if is_main() else None
    dist.gather(padded, parts, dst=0)
    if not is_main():
        return None
    return torch.cat([p[: shard_range(num_items, r)[1]].cpu() for r, p in enumerate(parts)])


def _sum_allreduce_hook(state, bucket):
    """DDP communication hook: gradients summed over ranks (DDP's default hook averages)."""
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda f: f.value()[0])


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel with gradients summed over ranks (see the module docstring);
    ``module`` itself in one process."""
    if not is_distributed():
        return module
    ddp = torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )
    ddp.register_comm_hook(None, _sum_allreduce_hook)
    return ddp


def sum_gradients(params) -> None:
    """Sum the gradients of parameters every rank holds a copy of (a head's non-class parameters)."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def clip_grad_norm(replicated_params, sharded_params, max_norm: float) -> float:
    """Clip by the norm of the whole model's gradient; returns that norm (before clipping).

    ``replicated_params``: identical on every rank, gradients already combined (the backbone after DDP);
    ``sharded_params``: each rank's slice of the class rows, whose squared norms add up over ranks. Every
    rank gets the same norm and scales by the same factor, ``max_norm / (norm + 1e-6)`` capped at 1, as
    ``torch.nn.utils.clip_grad_norm_`` does in one process.
    """
    def squares(params):
        grads = [p.grad for p in params if p.grad is not None]
        return sum((g.detach().double() ** 2).sum() for g in grads) if grads else torch.zeros((), dtype=torch.float64)

    sharded = [p for p in sharded_params if p.grad is not None]
    replicated_sq = squares(replicated_params)
    sharded_sq = squares(sharded)
    if is_distributed():
        device = sharded[0].grad.device if sharded else "cpu"
        sharded_sq = torch.as_tensor(sharded_sq, device=device).clone()
        dist.all_reduce(sharded_sq, op=dist.ReduceOp.SUM)
    norm = float(torch.sqrt(torch.as_tensor(replicated_sq).cpu() + torch.as_tensor(sharded_sq).cpu()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        for p in list(replicated_params) + sharded:
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm


def grad_scaler(device_type: str, enabled: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler. With several ranks, one whose class rows overflowed makes every rank skip the step
    (the backbone stays identical): ``ShardedGradScaler`` all-reduces the found-inf flag; one process gets the
    plain ``GradScaler``."""
    if is_distributed() and enabled:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device=device_type, enabled=True)
    return torch.amp.GradScaler(device_type, enabled=enabled)
