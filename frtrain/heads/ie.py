"""IE loss, "Include and Exclude" (Wu et al., arXiv 1803.02504) -- a RECONSTRUCTION from the abstract.

Only the abstract and the conclusion could be read: the distance between a sample and its own class
centre must be smaller than the mean distance of the sample to the other centres, by a large margin,
measured in an "exponential feature projection space"; trained jointly with softmax by plain SGD,
"similar to center loss". The reading implemented here, with learnable centres c_j:

    k_ij = exp(-d_ij / tau)                              (exponential projection; d_ij = ||x_i - c_j||^2)
    L_IE,i = softplus( (1/(C-1)) sum_{j != y_i} k_ij - k_{i,y_i} + alpha )
    L = CE_softmax + lambda * mean_i L_IE,i

Open choices, as options: ``projection`` (``exp_neg`` | ``identity``: k = -d), ``smooth`` (``softplus`` |
``hinge``), ``tau``, ``alpha``, ``lambda_ie``, ``normalize_features`` (default true: d in [0, 4]).
The mean over the other centres comes from N x C distances: one matrix on the plain path, or class chunks on the
chunked one (:mod:`frtrain.heads.chunked`) when that matrix would exceed the memory budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frtrain import distributed as D
from frtrain.heads.center import SoftmaxWithCenters
from frtrain.heads.class_vectors import check_option, target_values


class IELoss(SoftmaxWithCenters):
    """IE loss (reconstruction): softmax + lambda * smooth(mean_{j != y} k_ij - k_iy + alpha).

    Args:
        lambda_ie: weight of the IE term (1.0).
        tau: temperature of the exponential projection (1.0; sensible with normalised features).
        alpha: the margin between the own-centre and the mean other-centre similarity (0.5).
        projection: ``exp_neg`` (k = exp(-d/tau)) or ``identity`` (k = -d).
        smooth: ``softplus`` or ``hinge`` ([z]_+).
        normalize_features: distances between L2-normalised embeddings and centres.
        center_lr: learning rate of the centres (None: the optimiser's).
    """

    def __init__(self, embedding_size: int, num_classes: int, lambda_ie: float = 1.0, tau: float = 1.0,
                 alpha: float = 0.5, projection: str = "exp_neg", smooth: str = "softplus",
                 normalize_features: bool = True, center_lr: float | None = None, **common):
        super().__init__(embedding_size, num_classes, center_lr, normalize_features, **common)
        check_option("lambda_ie", lambda_ie, lambda_ie >= 0.0, "a non-negative weight")
        check_option("tau", tau, tau > 0.0, "a positive temperature")
        check_option("alpha", alpha, alpha >= 0.0, "a non-negative margin")
        check_option("projection", projection, projection in ("exp_neg", "identity"), "'exp_neg' or 'identity'")
        check_option("smooth", smooth, smooth in ("softplus", "hinge"), "'softplus' or 'hinge'")
        self.lambda_ie, self.tau, self.alpha = float(lambda_ie), float(tau), float(alpha)
        self.projection, self.smooth = projection, smooth

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        """k_ij from the squared distances: exp(-d/tau) (``exp_neg``) or -d (``identity``)."""
        return torch.exp(-d / self.tau) if self.projection == "exp_neg" else -d

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce, centers, local_target, x_all, chunk = self.softmax_and_centers(embeddings, labels)
        k_own = target_values(self.similarity(self.own_distances(x_all, centers, local_target)).unsqueeze(1),
                              torch.where(local_target >= 0, 0, -1))  # (N,), replicated
        if chunk is None:
            k_sum = self.similarity(self.distances(x_all, centers)).sum(dim=1)
        else:
            from frtrain.heads.chunked import chunked_reduce

            k_sum = chunked_reduce(lambda xs, parts, start: self.similarity(self.distances(xs[0], parts[0])),
                                   [x_all], [centers], chunk, "sum")
        others_sum = D.all_reduce_replicated(k_sum, "sum") - k_own
        count = torch.tensor(float(centers.shape[0]), dtype=x_all.dtype, device=x_all.device)
        num_classes = D.all_reduce_replicated(count, "sum")
        z = others_sum / (num_classes - 1.0) - k_own + self.alpha
        ie = F.softplus(z) if self.smooth == "softplus" else F.relu(z)
        self.stats = {"ie": ie.detach().mean()}
        return (ce + self.lambda_ie * ie).mean()
