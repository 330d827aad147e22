"""Heads that train a softmax classifier jointly with learnable class centres.

:class:`SoftmaxWithCenters` holds what they share: the centres (``centers``, C_local x d), their own
optimiser group, and the distances from embeddings to centres. Center loss (Wen et al. 2016) is
defined here; IE loss and Margin Loss build on the same base.
"""

from __future__ import annotations

import torch

from frtrain import distributed as D
from frtrain.heads.class_vectors import check_option, class_cosines, normalized
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
                 normalize_features: bool = False, **common):
        super().__init__(embedding_size, num_classes, **common)
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

    def distances(self, x_all: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """d (N, k): squared distances from the embeddings to ``centers`` (k, d), of normalised vectors when
        ``normalize_features``: ||x/|x| - c/|c|||^2 = 2 - 2 cos, without a normalised copy of the centres."""
        centers = centers.to(x_all.dtype)
        if self.normalize_features:
            return (2.0 - 2.0 * class_cosines(x_all, centers)).clamp_min(0.0)
        return squared_distances(x_all, centers)

    def own_distances(self, x_all: torch.Tensor, centers: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
        """d_i,y_i (N,) where this rank owns the class, 0 elsewhere (not yet combined over ranks)."""
        c = centers[local_target.clamp(min=0)].to(x_all.dtype)
        if self.normalize_features:
            d = (2.0 - 2.0 * (normalized(x_all) * normalized(c)).sum(dim=1)).clamp_min(0.0)
        else:
            d = (x_all - c).square().sum(dim=1)
        return torch.where(local_target >= 0, d, torch.zeros_like(d))

    def softmax_and_centers(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """Gather, then ``(ce, centers, local_target, x_all, chunk)``: the per-sample softmax CE (N,) replicated over
        ranks, this rank's selected centres (K, d) in their storage dtype, and the chunk size (None: plain)."""
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        ce = self.cross_entropy(x_all, index, local_target)
        centers = self.class_rows("centers", index)
        return ce, centers, local_target, x_all, self.chunks(x_all.shape[0], centers.shape[0])


class CenterLoss(SoftmaxWithCenters):
    """Center loss (Wen et al. 2016): L = CE(W x_i + b, y_i) + (lambda_c/2) * ||x_i - c_{y_i}||^2, mean over the batch.

    The centres are not learnt by gradient descent: after every training batch each centre moves by the
    paper's rule, independent of lambda_c and of the batch size,

        delta_c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),   c_j <- c_j - alpha * delta_c_j

    (n_j: samples of class j in the batch), i.e. alpha * n_j / (1 + n_j) of the way to the batch's class
    mean. Plain SGD on lambda_c * mean(d) / 2 would move a centre ~1e-5 of the way per step at the paper's
    settings (lambda_c = 0.003, alpha = 0.5). With ranks, each updates its own centres from the gathered
    batch; with gradient accumulation the update follows every micro-batch, as the paper's batches.
    """

    renamed_options = {"center_lr": "alpha"}

    def __init__(self, embedding_size: int, num_classes: int, lambda_c: float = 0.003, alpha: float = 0.5, **common):
        super().__init__(embedding_size, num_classes, None, normalize_features=False, **common)
        check_option("lambda_c", lambda_c, lambda_c >= 0.0, "a non-negative weight")
        check_option("alpha", alpha, 0.0 <= alpha <= 1.0, "a centre update rate in [0, 1]")
        self.lambda_c, self.alpha = float(lambda_c), float(alpha)
        self.centers.requires_grad_(False)

    def param_groups(self) -> list[dict]:
        return [{"params": [p for n, p in self.named_parameters() if n != "centers" and p.requires_grad]}]

    @torch.no_grad()
    def update_centers(self, x_all: torch.Tensor, y_all: torch.Tensor) -> None:
        """Wen et al.'s update of this rank's centres from the (gathered) batch ``x_all`` (N, d), ``y_all`` (N,)."""
        local = y_all - self.class_start
        owned = (local >= 0) & (local < self.num_local)
        rows, x = local[owned], x_all[owned].to(self.centers.dtype)
        if rows.numel() == 0:
            return
        count = torch.zeros(self.num_local, dtype=self.centers.dtype, device=x.device).index_add_(
            0, rows, torch.ones_like(rows, dtype=self.centers.dtype))
        pull = torch.zeros_like(self.centers).index_add_(0, rows, self.centers[rows] - x)  # sum (c_j - x_i)
        self.centers.sub_(self.alpha * pull / (1.0 + count).unsqueeze(1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        ce = self.cross_entropy(x_all, index, local_target)
        # only the own centre is needed: N distances, not an N x C matrix
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        diff = x_all[rows] - self.class_rows("centers", index, x_all.dtype)[local_target[rows]]
        own = torch.zeros(x_all.shape[0], dtype=x_all.dtype, device=x_all.device)
        own = D.all_reduce_replicated(own.index_put((rows,), diff.square().sum(1)), "sum")
        self.stats = {"center_distance": own.detach().mean()}
        if self.training:
            self.update_centers(x_all.detach(), y_all)
        return (ce + 0.5 * self.lambda_c * own).mean()
