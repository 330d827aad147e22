"""Heads that train a softmax classifier jointly with learnable class centres.

:class:`SoftmaxWithCenters` holds what they share: the centres (``centers``, C_local x d), their own
optimiser group, and the distances from embeddings to centres. Center loss (Wen et al. 2016) is
defined here; IE loss and Margin Loss build on the same base.
"""

from __future__ import annotations

import torch

from frtrain.engine import distributed as D
from frtrain.heads.class_vectors import check_option, class_cosines, sharded_cross_entropy
from frtrain.heads.classic import Softmax


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """d_ij = ||x_i - c_j||^2 as one (N, K) matrix: ||x||^2 + ||c||^2 - 2 x.c, clamped at 0."""
    d = x.square().sum(1, keepdim=True) + centers.square().sum(1).unsqueeze(0) - 2.0 * (x @ centers.T)
    return d.clamp_min(0.0)


class SoftmaxWithCenters(Softmax):
    """Softmax over ``W x + b`` plus learnable class centres ``centers`` in their own optimiser group.

    Args:
        center_lr: learning rate of the centres; None uses the optimiser's learning rate.
        normalize_features: measure distances between L2-normalised embeddings and centres (d in [0, 4]).
    """

    class_parameters = ("weight", "bias", "centers")

    def __init__(self, embedding_size: int, num_classes: int, center_lr: float | None = None,
                 normalize_features: bool = False, sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, sample_rate)
        check_option("center_lr", center_lr, center_lr is None or center_lr > 0.0, "a positive learning rate or null")
        self.center_lr = None if center_lr is None else float(center_lr)
        self.normalize_features = bool(normalize_features)
        self.centers = self.new_class_parameter("unit" if normalize_features else "normal")

    def param_groups(self) -> list[dict]:
        others = [p for n, p in self.named_parameters() if n != "centers" and p.requires_grad]
        centers = {"params": [self.centers], "weight_decay": 0.0}
        if self.center_lr is not None:
            centers["lr"] = self.center_lr
        return [{"params": others}, centers]

    def softmax_and_distances(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """Gather, then the per-sample softmax CE (N,) and the distances to the selected centres.

        Returns ``(ce, d, local_target, x_all)``: ce replicated over ranks; d (N, K) squared distances to
        this rank's selected centres (of normalised vectors when ``normalize_features``).
        """
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        ce = sharded_cross_entropy(self.class_logits(x_all, index), local_target)
        c = self.class_rows("centers", index, x_all.dtype)
        if self.normalize_features:
            # ||x/|x| - c/|c|||^2 = 2 - 2 cos, without a normalised copy of the centres (see class_cosines)
            return ce, (2.0 - 2.0 * class_cosines(x_all, c)).clamp_min(0.0), local_target, x_all
        return ce, squared_distances(x_all, c), local_target, x_all


class CenterLoss(SoftmaxWithCenters):
    """L = CE(W x_i + b, y_i) + (lambda_c/2) * ||x_i - c_{y_i}||^2, mean over the batch.

    The centres are learnt by SGD in their own optimiser group with learning rate ``center_lr`` and no
    weight decay (lambda_c = 0.003, centre lr 0.5 in the paper).
    """

    def __init__(self, embedding_size: int, num_classes: int, lambda_c: float = 0.003,
                 center_lr: float | None = 0.5, sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, center_lr, normalize_features=False, sample_rate=sample_rate)
        check_option("lambda_c", lambda_c, lambda_c >= 0.0, "a non-negative weight")
        self.lambda_c = float(lambda_c)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        ce = sharded_cross_entropy(self.class_logits(x_all, index), local_target)
        # only the own centre is needed: N distances, not an N x C matrix
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        diff = x_all[rows] - self.class_rows("centers", index, x_all.dtype)[local_target[rows]]
        own = torch.zeros(x_all.shape[0], dtype=x_all.dtype, device=x_all.device)
        own = D.all_reduce_replicated(own.index_put((rows,), diff.square().sum(1)), "sum")
        self.stats = {"center_distance": own.detach().mean()}
        return (ce + 0.5 * self.lambda_c * own).mean()
