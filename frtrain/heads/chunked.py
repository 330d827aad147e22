"""Reductions over the class vectors in chunks: no B x C matrix survives a forward pass.

:func:`chunked_reduce` walks the (local, possibly sampled) class rows ``chunk`` at a time. ``block(x, rows,
start)`` computes one block of per-(sample, class) values, (N, k) for the rows ``start .. start + k``, with the
entries that must not count set to ``-inf`` (log-sum-exp) or 0 (sum). The forward pass keeps a running max and
sum of exponentials per sample (online log-sum-exp) or a running sum; the backward pass recomputes each block with
autograd, weights it by the softmax of its entries (or by 1 for a sum) times the incoming gradient, and collects
the gradient of the samples (accumulated over the chunks, float32) and of the chunk's class rows (written once:
each class row lives in one chunk). Memory: the inputs, an (N,) result and one block at a time.

:func:`cosine_logsumexp` is the margin-softmax heads' case, written out: log-sum-exp over the scaled cosines of the
samples to every class except their target, and the target rows themselves, with the backward pass in closed form
(no autograd graph per chunk; the class-vector normalisation folded into k x d products). Returning the target rows
from the same function lets their gradient be added chunk by chunk: gathering them separately would cost one more
dense K x d gradient (the size of the class vectors) during the backward pass.

:func:`chunked_topk` finds, chunk by chunk, the k largest block values of every sample and their columns (no
gradient): the caller recomputes those few entries with autograd (NPT's nearest proxies, Margin Loss's nearest
centre).

:func:`plan` decides between the plain path (one N x K block, fastest for small K) and chunks, from the heads'
``chunk_size`` and ``memory_budget_mb`` options.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

#: the plain path holds about this many float32 N x K matrices at its peak (logits, their exponentials, the
#: softmax gradient, the index_put copy, the margin mask), measured for ArcFace in scripts/bench_heads.py
PLAIN_MATRICES = 5
#: a chunked block holds about this many float32 N x k matrices during its backward recomputation
CHUNK_MATRICES = 6
#: CPU chunks: N x k of about this many numbers (1 MiB of float32), so a block stays in the caches
CPU_BLOCK_ELEMENTS = 2**18

#: block(per-sample tensors, class-row chunks, start) -> (N, k) values of the rows start .. start + k
Block = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], int], torch.Tensor]


def plan(num_samples: int, num_classes: int, chunk_size, memory_budget_mb: float, device_type: str = "cpu") -> int | None:
    """Classes per chunk, or None for the plain path.

    ``chunk_size``: ``auto`` (plain while its ~5 float32 N x K matrices fit in ``memory_budget_mb``, else chunks),
    0 (always plain) or a number of classes. ``auto``'s chunks: on CPU, blocks of about :data:`CPU_BLOCK_ELEMENTS`
    (cache-sized: the fastest in scripts/bench_heads.py, 0.7-0.8x the plain path's time); on a GPU, blocks using
    about a quarter of the budget (large matrix products); at least 256 classes either way.
    """
    if chunk_size in (0, None, "none", "plain"):
        return None
    if chunk_size != "auto":
        return max(1, int(chunk_size))
    if PLAIN_MATRICES * 4 * num_samples * num_classes <= float(memory_budget_mb) * 2**20:
        return None
    return auto_chunk(num_samples, memory_budget_mb, device_type)


def auto_chunk(num_samples: int, memory_budget_mb: float, device_type: str = "cpu") -> int:
    """The classes per chunk ``chunk_size=auto`` takes when it chunks (see :func:`plan`)."""
    by_budget = int(float(memory_budget_mb) * 2**20 / 4 / (CHUNK_MATRICES * 4 * max(num_samples, 1)))
    if device_type == "cpu":
        by_budget = min(by_budget, CPU_BLOCK_ELEMENTS // max(num_samples, 1))
    return max(256, by_budget)


def _accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _ChunkedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: Block, reduction: str, chunk: int, num_samples_inputs: int, *tensors: torch.Tensor):
        xs, rows = tensors[:num_samples_inputs], tensors[num_samples_inputs:]
        n, acc = xs[0].shape[0], _accumulator_dtype(xs[0])
        with torch.no_grad():
            running_max = torch.full((n,), -math.inf, dtype=acc, device=xs[0].device)
            running_sum = torch.zeros(n, dtype=acc, device=xs[0].device)
            for start in range(0, rows[0].shape[0], chunk):
                values = block(xs, [r[start:start + chunk] for r in rows], start).to(acc)
                if reduction == "logsumexp":
                    new_max = torch.maximum(running_max, values.max(dim=1).values)
                    shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                    running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(values - shift[:, None]).sum(1)
                    running_max = new_max
                else:
                    running_sum += values.sum(dim=1)
            if reduction == "logsumexp":
                shift = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))
                out = shift + torch.log(running_sum)  # -inf where a sample had no entry at all
            else:
                out = running_sum
        ctx.block, ctx.reduction, ctx.chunk, ctx.num_xs = block, reduction, chunk, num_samples_inputs
        ctx.save_for_backward(out, *tensors)
        return out.to(xs[0].dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, *tensors = ctx.saved_tensors
        xs, rows = tensors[:ctx.num_xs], tensors[ctx.num_xs:]
        needs = ctx.needs_input_grad[4:]
        need_xs, need_rows = needs[:ctx.num_xs], needs[ctx.num_xs:]
        acc = _accumulator_dtype(xs[0])
        grad_xs = [torch.zeros(x.shape, dtype=acc, device=x.device) if need else None for x, need in zip(xs, need_xs)]
        grad_rows = [torch.zeros_like(r) if need else None for r, need in zip(rows, need_rows)]
        grad = grad.to(acc)
        finite = torch.isfinite(out)
        safe_out = torch.where(finite, out, torch.zeros_like(out))
        for start in range(0, rows[0].shape[0], ctx.chunk):
            with torch.enable_grad():
                xl = [x.detach().requires_grad_(need) for x, need in zip(xs, need_xs)]
                parts = [r[start:start + ctx.chunk].detach().requires_grad_(need) for r, need in zip(rows, need_rows)]
                values = ctx.block(xl, parts, start)
            if ctx.reduction == "logsumexp":
                weight = torch.exp(values.detach().to(acc) - safe_out[:, None]) * (grad * finite)[:, None]
            else:
                weight = grad[:, None].expand(values.shape)
            inputs = [t for t, need in zip(xl + parts, needs) if need]
            if not inputs or not values.requires_grad:
                continue
            grads = iter(torch.autograd.grad(values, inputs, weight.to(values.dtype), allow_unused=True))
            for i, need in enumerate(need_xs):
                g = next(grads) if need else None
                if g is not None:
                    grad_xs[i] += g.to(acc)
            for i, need in enumerate(need_rows):
                g = next(grads) if need else None
                if g is not None:
                    grad_rows[i][start:start + ctx.chunk] = g.to(grad_rows[i].dtype)
        grad_xs = [None if g is None else g.to(x.dtype) for g, x in zip(grad_xs, xs)]
        return (None, None, None, None, *grad_xs, *grad_rows)


def _exclusion(exclude: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, columns within the chunk) of the excluded entries that fall in columns start .. start + width."""
    inside = (exclude >= start) & (exclude < start + width)
    samples = torch.nonzero(inside).squeeze(1)
    return samples, exclude[samples] - start


class _CosineLogSumExp(torch.autograd.Function):
    """lse_i = log sum_{j != exclude_i} exp(x_i . w_j / |w_j|) and w_t = rows[exclude.clamp(min=0)]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor, exclude: torch.Tensor, chunk: int):
        n, dtype = x.shape[0], x.dtype
        running_max = torch.full((n,), -math.inf, dtype=dtype, device=x.device)
        running_sum = torch.zeros(n, dtype=dtype, device=x.device)
        for start in range(0, rows.shape[0], chunk):
            w = rows[start:start + chunk].to(dtype)
            v = torch.mm(x, w.t()).mul_(w.norm(dim=1).clamp_min(1e-12).reciprocal())  # (N, k) scaled cosines
            samples, cols = _exclusion(exclude, start, w.shape[0])
            v[samples, cols] = -math.inf
            new_max = torch.maximum(running_max, v.max(dim=1).values)
            shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            running_sum = running_sum * torch.exp(running_max - shift) + v.sub_(shift[:, None]).exp_().sum(dim=1)
            running_max = new_max
        shift = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))
        out = shift + torch.log(running_sum)
        ctx.chunk = chunk
        ctx.save_for_backward(out, x, rows, exclude)
        ctx.mark_non_differentiable(exclude)
        return out, rows[exclude.clamp(min=0)].to(dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_targets: torch.Tensor):
        out, x, rows, exclude = ctx.saved_tensors
        need_x, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = x.dtype
        finite = torch.isfinite(out)
        safe_out = torch.where(finite, out, torch.zeros_like(out))
        g = (grad_out.to(dtype) * finite)[:, None]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_rows = torch.zeros_like(rows) if need_rows else None
        target_index = exclude.clamp(min=0)
        for start in range(0, rows.shape[0], ctx.chunk):
            w = rows[start:start + ctx.chunk].to(dtype)
            inv = w.norm(dim=1).clamp_min(1e-12).reciprocal()
            # G_ij = d loss / d v_ij = softmax_ij * grad_i, 0 at the excluded entries
            weights = torch.mm(x, w.t()).mul_(inv).sub_(safe_out[:, None]).exp_().mul_(g)
            samples, cols = _exclusion(exclude, start, w.shape[0])
            weights[samples, cols] = 0.0
            if need_x:
                grad_x.addmm_(weights, w * inv[:, None])
            if need_rows:
                # d v_ij / d w_j = x_i / |w_j| - v_ij w_j / |w_j|^2 and sum_i G_ij v_ij = w_j . (G^T x)_j / |w_j|
                gtx = torch.mm(weights.t(), x)  # (k, d)
                grad_w = gtx.mul(inv[:, None]).sub_(w * ((w * gtx).sum(dim=1) * inv.pow(3))[:, None])
                mine = torch.nonzero((target_index >= start) & (target_index < start + w.shape[0])).squeeze(1)
                if grad_targets is not None and mine.numel():
                    grad_w.index_add_(0, target_index[mine] - start, grad_targets[mine].to(dtype))
                grad_rows[start:start + ctx.chunk] = grad_w.to(rows.dtype)
        return grad_x, grad_rows, None, None


def cosine_logsumexp(x: torch.Tensor, rows: torch.Tensor, exclude: torch.Tensor, chunk: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked log-sum-exp of ``x_i . w_j / |w_j|`` over the class rows ``j != exclude_i``, and the target rows.

    Args:
        x: (N, d) the samples, already normalised and scaled (s * x / |x|), float32 or float64.
        rows: (K, d) class vectors in their storage dtype (a chunk at a time is cast to ``x``'s dtype).
        exclude: (N,) each sample's column to leave out (its target), -1 for none.
        chunk: classes per chunk.
    Returns:
        ``(lse, targets)``: (N,) the log-sum-exp (-inf for a sample with no column left) and (N, d)
        ``rows[exclude.clamp(min=0)]`` in ``x``'s dtype, both differentiable; their gradients reach ``rows`` one chunk at a time.
    """
    return _CosineLogSumExp.apply(x, rows, exclude, int(chunk))


def chunked_reduce(block: Block, xs: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], chunk: int,
                   reduction: str = "logsumexp") -> torch.Tensor:
    """log sum_j exp(v_ij) (``reduction='logsumexp'``) or sum_j v_ij (``'sum'``) over the blocks that
    ``block(xs, row_chunks, start)`` computes for every ``chunk`` rows of the class tensors ``rows`` (each (K, ...));
    ``xs`` are the per-sample tensors (each (N, ...)) the blocks read. (N,), differentiable in ``xs`` and ``rows``
    without keeping any block. A tensor the block reads that needs a gradient must be in ``xs`` or ``rows``."""
    if reduction not in ("logsumexp", "sum"):
        raise ValueError(f"reduction must be 'logsumexp' or 'sum', got {reduction!r}")
    return _ChunkedReduce.apply(block, reduction, int(chunk), len(xs), *xs, *rows)


@torch.no_grad()
def chunked_topk(block: Block, xs: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], chunk: int, k: int,
                 largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns), each (N, k): the k largest (or smallest) block values of every sample over all chunks."""
    best_v = best_i = None
    for start in range(0, rows[0].shape[0], chunk):
        values = block(xs, [r[start:start + chunk] for r in rows], start)
        kk = min(k, values.shape[1])
        v, i = values.topk(kk, dim=1, largest=largest)
        i = i + start
        if best_v is None:
            best_v, best_i = v, i
        else:
            v, pick = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + kk), dim=1, largest=largest)
            best_v, best_i = v, torch.cat([best_i, i], 1).gather(1, pick)
    return best_v, best_i


def target_mask(local_target: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """(N, width) True where column ``start + j`` is the sample's own (local) target."""
    cols = torch.arange(start, start + width, device=local_target.device)
    return local_target[:, None] == cols[None, :]
