"""Margin Loss, "Making Faces More Separable" (IEEE SPL) -- a RECONSTRUCTION from the abstract.

Only the abstract could be read: a Euclidean-distance loss that pulls samples to their class centre and
pushes them away from the other centres by a distance margin, focusing on hard samples; it fixes center
loss's blindness to inter-class distances. The reading implemented here, jointly with softmax, with
learnable centres c_j and d_ij = ||x_i - c_j||^2:

    v_ij = [ d_{i,y_i} - d_ij + m ]_+                 for j != y_i
    L_M,i = sum_j v_ij / max(1, #{j : v_ij > 0})      (the mean over the violating, i.e. hard, classes)
    L = CE_softmax + lambda * mean_i L_M,i

Open choices, as options: ``margin_sqdist`` m (squared-distance units), ``lambda_m``, ``normalize_features``,
``reduce`` (``hard_mean`` | ``all_mean``: divide by C - 1 | ``nearest``: only the nearest other centre).
Computed from N x C distances: one matrix on the plain path, or class chunks on the chunked one
(:mod:`frtrain.heads.chunked`) when that matrix would exceed the memory budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frtrain import distributed as D
from frtrain.heads.center import SoftmaxWithCenters
from frtrain.heads.class_vectors import check_option, normalized, target_values


class MarginLoss(SoftmaxWithCenters):
    """Margin Loss (reconstruction): softmax + lambda * mean hinge of own vs other centre distances.

    Args:
        margin_sqdist: m, in squared-distance units (1.0: with normalised features d ranges over [0, 4]).
        lambda_m: weight of the margin term (1.0).
        reduce: ``hard_mean`` (default), ``all_mean`` or ``nearest``.
        normalize_features: distances between L2-normalised embeddings and centres (default true).
        center_lr: learning rate of the centres (None: the optimiser's).
    """

    renamed_options = {"margin": "margin_sqdist"}

    def __init__(self, embedding_size: int, num_classes: int, margin_sqdist: float = 1.0, lambda_m: float = 1.0,
                 reduce: str = "hard_mean", normalize_features: bool = True, center_lr: float | None = None,
                 **common):
        super().__init__(embedding_size, num_classes, center_lr, normalize_features, **common)
        check_option("margin_sqdist", margin_sqdist, margin_sqdist >= 0.0, "a non-negative distance margin")
        check_option("lambda_m", lambda_m, lambda_m >= 0.0, "a non-negative weight")
        check_option("reduce", reduce, reduce in ("hard_mean", "all_mean", "nearest"), "'hard_mean', 'all_mean' or 'nearest'")
        self.margin_sqdist, self.lambda_m, self.reduce = float(margin_sqdist), float(lambda_m), reduce

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from frtrain.heads.chunked import chunked_reduce, chunked_topk, target_mask

        ce, centers, local_target, x_all, chunk = self.softmax_and_centers(embeddings, labels)
        own_local = self.own_distances(x_all, centers, local_target)
        if self.reduce == "nearest":
            def others(xs, parts, start):  # distances with the own centre at +inf
                d = self.distances(xs[0], parts[0])
                return d.masked_fill(target_mask(local_target, start, d.shape[1]), float("inf"))

            if chunk is None:
                nearest_local = others([x_all], [centers], 0).min(dim=1, keepdim=True).values
            else:  # find the nearest other centre chunk by chunk, then its distance with autograd
                _, col = chunked_topk(others, [x_all], [centers], chunk, 1, largest=False)
                nearest_local = self.distances_to(x_all, centers[col[:, 0]]).unsqueeze(1)
            nearest = D.all_gather_replicated(nearest_local, dim=1).min(dim=1).values
            d_own = target_values(own_local.unsqueeze(1), torch.where(local_target >= 0, 0, -1))
            term = F.relu(d_own - nearest + self.margin_sqdist)
        else:
            # every rank compares the own-centre distance with its own centres: summing backward
            d_own = D.all_reduce_shared(own_local)

            def violations(xs, parts, start):  # v_ij = [d_own - d_ij + m]_+, 0 at the own centre
                d = self.distances(xs[0], parts[0])
                v = F.relu(xs[1].unsqueeze(1) - d + self.margin_sqdist)
                return v.masked_fill(target_mask(local_target, start, d.shape[1]), 0.0)

            if chunk is None:
                v = violations([x_all, d_own], [centers], 0)
                total, hard = v.sum(dim=1), (v.detach() > 0).sum(dim=1).to(x_all.dtype)
            else:
                total = chunked_reduce(violations, [x_all, d_own], [centers], chunk, "sum")
                with torch.no_grad():
                    hard = chunked_reduce(lambda xs, p, s: (violations(xs, p, s) > 0).to(xs[0].dtype),
                                          [x_all.detach(), d_own.detach()], [centers.detach()], chunk, "sum")
            total = D.all_reduce_replicated(total, "sum")
            if self.reduce == "hard_mean":
                term = total / D.all_reduce_replicated(hard, "sum").clamp_min(1.0)
            else:
                count = torch.tensor(float(centers.shape[0]), dtype=x_all.dtype, device=x_all.device)
                term = total / (D.all_reduce_replicated(count, "sum") - 1.0)
        self.stats = {"margin_term": term.detach().mean()}
        return (ce + self.lambda_m * term).mean()

    def distances_to(self, x_all: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """(N,) the distance of each sample to its own row of ``centers`` (N, d)."""
        c = centers.to(x_all.dtype)
        if self.normalize_features:
            return (2.0 - 2.0 * (normalized(x_all) * normalized(c)).sum(dim=1)).clamp_min(0.0)
        return (x_all - c).square().sum(dim=1)
