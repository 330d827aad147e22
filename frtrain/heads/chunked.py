"""Reductions over the class vectors in chunks: no B x C matrix survives a forward pass.

:func:`chunked_reduce` walks the (local, possibly sampled) class rows ``chunk`` at a time. ``block(x, rows,
start)`` computes one block of per-(sample, class) values, (N, k) for the rows ``start .. start + k``, with the
entries that must not count set to ``-inf`` (log-sum-exp) or 0 (sum). The forward pass keeps a running max and
sum of exponentials per sample (online log-sum-exp) or a running sum; the backward pass recomputes each block with
autograd, weights it by the softmax of its entries (or by 1 for a sum) times the incoming gradient, and collects
the gradient of the samples (accumulated over the chunks, float32) and of the chunk's class rows (written once:
each class row lives in one chunk). Memory: the inputs, an (N,) result and one block at a time.

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

Block = Callable[[torch.Tensor, Sequence[torch.Tensor], int], torch.Tensor]


def plan(num_samples: int, num_classes: int, chunk_size, memory_budget_mb: float) -> int | None:
    """Classes per chunk, or None for the plain path.

    ``chunk_size``: ``auto`` (plain while its ~5 float32 N x K matrices fit in ``memory_budget_mb``, else chunks
    whose blocks use about a quarter of the budget, at least 256 classes), 0 (always plain) or a number of classes.
    """
    if chunk_size in (0, None, "none", "plain"):
        return None
    if chunk_size != "auto":
        return max(1, int(chunk_size))
    budget = float(memory_budget_mb) * 2**20
    if PLAIN_MATRICES * 4 * num_samples * num_classes <= budget:
        return None
    return max(256, int(budget / 4 / (CHUNK_MATRICES * 4 * max(num_samples, 1))))


class _ChunkedReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: Block, reduction: str, chunk: int, x: torch.Tensor, *rows: torch.Tensor):
        num_rows = rows[0].shape[0]
        n = x.shape[0]
        with torch.no_grad():
            if reduction == "logsumexp":
                running_max = torch.full((n,), -math.inf, dtype=torch.float32, device=x.device)
                running_sum = torch.zeros(n, dtype=torch.float32, device=x.device)
            else:
                total = torch.zeros(n, dtype=torch.float32, device=x.device)
            for start in range(0, num_rows, chunk):
                values = block(x, [r[start:start + chunk] for r in rows], start).float()
                if reduction == "logsumexp":
                    new_max = torch.maximum(running_max, values.max(dim=1).values)
                    shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                    running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(values - shift[:, None]).sum(1)
                    running_max = new_max
                else:
                    total += values.sum(dim=1)
            if reduction == "logsumexp":
                shift = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))
                out = shift + torch.log(running_sum)  # -inf where a sample had no entry at all
            else:
                out = total
        ctx.block, ctx.reduction, ctx.chunk = block, reduction, chunk
        ctx.save_for_backward(x, out, *rows)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out, *rows = ctx.saved_tensors
        need_x, need_rows = ctx.needs_input_grad[3], ctx.needs_input_grad[4:]
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if need_x else None
        grad_rows = [torch.zeros_like(r) if need else None for r, need in zip(rows, need_rows)]
        grad = grad.float()
        finite = torch.isfinite(out)
        safe_out = torch.where(finite, out, torch.zeros_like(out))
        for start in range(0, rows[0].shape[0], ctx.chunk):
            with torch.enable_grad():
                xl = x.detach().requires_grad_(need_x)
                parts = [r[start:start + ctx.chunk].detach().requires_grad_(need)
                         for r, need in zip(rows, need_rows)]
                values = ctx.block(xl, parts, start)
            if ctx.reduction == "logsumexp":
                weight = torch.exp(values.detach().float() - safe_out[:, None]) * (grad * finite)[:, None]
            else:
                weight = grad[:, None].expand(values.shape)
            inputs = [xl] * need_x + [p for p, need in zip(parts, need_rows) if need]
            if not inputs:
                continue
            grads = iter(torch.autograd.grad(values, inputs, weight.to(values.dtype), allow_unused=True))
            if need_x:
                g = next(grads)
                if g is not None:
                    grad_x += g.float()
            for i, need in enumerate(need_rows):
                if need:
                    g = next(grads)
                    if g is not None:
                        grad_rows[i][start:start + ctx.chunk] = g.to(grad_rows[i].dtype)
        return (None, None, None, None if grad_x is None else grad_x.to(x.dtype), *grad_rows)


def chunked_reduce(block: Block, x: torch.Tensor, rows: Sequence[torch.Tensor], chunk: int,
                   reduction: str = "logsumexp") -> torch.Tensor:
    """log sum_j exp(v_ij) (``reduction='logsumexp'``) or sum_j v_ij (``'sum'``) over the blocks ``block`` computes
    for every ``chunk`` rows of the class tensors ``rows`` (each (K, ...)); (N,) float32, differentiable in
    ``x`` and ``rows`` without keeping any block."""
    if reduction not in ("logsumexp", "sum"):
        raise ValueError(f"reduction must be 'logsumexp' or 'sum', got {reduction!r}")
    return _ChunkedReduce.apply(block, reduction, int(chunk), x, *rows)


@torch.no_grad()
def chunked_topk(block: Block, x: torch.Tensor, rows: Sequence[torch.Tensor], chunk: int, k: int,
                 largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns), each (N, k): the k largest (or smallest) block values of every sample over all chunks."""
    best_v = best_i = None
    for start in range(0, rows[0].shape[0], chunk):
        values = block(x, [r[start:start + chunk] for r in rows], start).float()
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
