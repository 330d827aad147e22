"""Center loss (Wen et al., ECCV 2016): softmax plus a pull of each embedding to its class centre."""

from __future__ import annotations

import torch
from torch import nn

from frtrain.engine import distributed as D
from frtrain.heads.class_vectors import check_option, sharded_cross_entropy
from frtrain.heads.classic import Softmax


def own_center_rows(x_all: torch.Tensor, centers: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
    """Squared distance ||x_i - c_{y_i}||^2 for every sample, combined over shards: (N,), replicated."""
    rows = torch.nonzero(local_target >= 0).squeeze(1)
    d = torch.zeros(x_all.shape[0], dtype=x_all.dtype, device=x_all.device)
    diff = x_all[rows] - centers[local_target[rows]]
    d = d.index_put((rows,), (diff * diff).sum(dim=1))
    return D.all_reduce_replicated(d, "sum")


class CenterLoss(Softmax):
    """L = CE(W x_i + b, y_i) + (lambda/2) * ||x_i - c_{y_i}||^2, mean over the batch.

    The centres are the parameter ``centers`` (C_local x d), learnt by SGD in their own optimiser group
    with learning rate ``center_lr`` and no weight decay (lambda = 0.003, centre lr 0.5 in the paper).
    """

    class_parameters = ("weight", "bias", "centers")

    def __init__(self, embedding_size: int, num_classes: int, lambda_c: float = 0.003,
                 center_lr: float = 0.5, sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, sample_rate)
        check_option("lambda_c", lambda_c, lambda_c >= 0.0, "a non-negative weight")
        check_option("center_lr", center_lr, center_lr > 0.0, "a positive learning rate")
        self.lambda_c = float(lambda_c)
        self.center_lr = float(center_lr)
        self.centers = self.new_class_parameter("normal")

    def param_groups(self) -> list[dict]:
        others = [p for n, p in self.named_parameters() if n != "centers" and p.requires_grad]
        return [{"params": others}, {"params": [self.centers], "lr": self.center_lr, "weight_decay": 0.0}]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        ce = sharded_cross_entropy(self.class_logits(x_all, index), local_target)
        dist = own_center_rows(x_all, self.class_rows("centers", index, x_all.dtype), local_target)
        self.stats = {"center_distance": dist.detach().mean()}
        return (ce + 0.5 * self.lambda_c * dist).mean()
