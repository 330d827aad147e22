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
Computed from one N x C distance matrix, no loop over classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frtrain import distributed as D
from frtrain.heads.center import SoftmaxWithCenters
from frtrain.heads.class_vectors import check_option, owned_values, target_values


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
                 sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, center_lr, normalize_features, sample_rate)
        check_option("margin_sqdist", margin_sqdist, margin_sqdist >= 0.0, "a non-negative distance margin")
        check_option("lambda_m", lambda_m, lambda_m >= 0.0, "a non-negative weight")
        check_option("reduce", reduce, reduce in ("hard_mean", "all_mean", "nearest"), "'hard_mean', 'all_mean' or 'nearest'")
        self.margin_sqdist, self.lambda_m, self.reduce = float(margin_sqdist), float(lambda_m), reduce

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce, d, local_target, _ = self.softmax_and_distances(embeddings, labels)
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        # every rank compares the own-centre distance with its own centres: summing backward
        d_own = D.all_reduce_shared(owned_values(d, local_target))
        if self.reduce == "nearest":
            others = d.index_put((rows, local_target[rows]), torch.full_like(rows, float("inf"), dtype=d.dtype))
            nearest = D.all_gather_replicated(others.min(dim=1, keepdim=True).values, dim=1).min(dim=1).values
            term = F.relu(target_values(d, local_target) - nearest + self.margin_sqdist)
        else:
            own_column = torch.zeros_like(d, dtype=torch.bool).index_put((rows, local_target[rows]), torch.ones_like(rows, dtype=torch.bool))
            v = F.relu(d_own.unsqueeze(1) - d + self.margin_sqdist).masked_fill(own_column, 0.0)
            total = D.all_reduce_replicated(v.sum(dim=1), "sum")
            if self.reduce == "hard_mean":
                count = D.all_reduce_replicated((v.detach() > 0).sum(dim=1).to(d.dtype), "sum")
                term = total / count.clamp_min(1.0)
            else:
                num_classes = D.all_reduce_replicated(torch.tensor(float(d.shape[1]), dtype=d.dtype, device=d.device), "sum")
                term = total / (num_classes - 1.0)
        self.stats = {"margin_term": term.detach().mean()}
        return (ce + self.lambda_m * term).mean()

