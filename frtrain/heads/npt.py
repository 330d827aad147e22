"""NPT-Loss (Khalid et al., arXiv 2103.03503): a triplet hinge against the nearest negative proxies.

Faithful, from the paper and the authors' released code. Features and proxies lie on a sphere of
radius r, where d(x, W) = 2r^2 (1 - cos). For each sample, the k negative proxies nearest to it
(largest cos_ij, j != y_i) each add a hinge:

    L_i = 2 r^2 * sum_{j in top-k, j != y_i} [cos_ij - cos_i + delta]_+ ,   delta = Delta / (2 r^2)

No softmax, no cross-entropy; mean over the batch. Defaults r = 1, delta = 0.5 (Delta = r^2), k = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frtrain import distributed as D
from frtrain.heads.class_vectors import Head, check_option, class_cosines, normalized, target_values


def nearest_negative_cosines(cos: torch.Tensor, local_target: torch.Tensor, k: int, target_fill: str) -> torch.Tensor:
    """The k largest non-target cosines of every row, over all shards: (N, K_local) -> (N, k), replicated.

    The target column is excluded with -inf (``target_fill='neg_inf'``) or, as in the authors' code,
    replaced by 0 (``target_fill='zero'``), which lets a spurious 0 into the top-k when every negative
    cosine is below 0.
    """
    rows = torch.nonzero(local_target >= 0).squeeze(1)
    fill = float("-inf") if target_fill == "neg_inf" else 0.0
    masked = cos.index_put((rows, local_target[rows]), torch.full_like(rows, fill, dtype=cos.dtype))
    top = masked.topk(min(k, masked.shape[1]), dim=1).values
    if D.is_distributed():
        top = D.all_gather_replicated(top, dim=1)
        top = top.topk(min(k, top.shape[1]), dim=1).values
    return top


def npt_loss(cos: torch.Tensor, local_target: torch.Tensor, k: int = 1, delta: float = 0.5, radius: float = 1.0,
             target_fill: str = "neg_inf") -> torch.Tensor:
    """Per-sample NPT loss (N,) from the cosines (N, K_local) to this rank's proxies."""
    cos_t = target_values(cos, local_target)
    negatives = nearest_negative_cosines(cos, local_target, k, target_fill)
    return 2.0 * radius**2 * F.relu(negatives - cos_t.unsqueeze(1) + delta).sum(dim=1)


class NPTLoss(Head):
    """NPT-Loss head. Proxies are the parameter ``weight`` (Xavier-uniform, normalised at every forward).

    Args:
        k: negative proxies per sample (1 in the paper's main results; 6 best for MobileFaceNet).
        delta: the margin in cosine units, delta = Delta / (2 r^2) (0.5: Delta = r^2).
        radius: r, the radius of the sphere (scales the loss by 2 r^2).
        target_fill: ``neg_inf`` (default, the target never counts as a negative) or ``zero`` (the authors'
            code, a parity switch).
    """

    def __init__(self, embedding_size: int, num_classes: int, k: int = 1, delta: float = 0.5, radius: float = 1.0,
                 target_fill: str = "neg_inf", **common):
        super().__init__(embedding_size, num_classes, **common)
        check_option("k", k, 1 <= int(k) <= num_classes - 1, f"1 <= k <= num_classes - 1 = {num_classes - 1}")
        check_option("delta", delta, delta >= 0.0, "a non-negative margin")
        check_option("radius", radius, radius > 0.0, "a positive radius")
        check_option("target_fill", target_fill, target_fill in ("neg_inf", "zero"), "'neg_inf' or 'zero'")
        self.k, self.delta, self.radius, self.target_fill = int(k), float(delta), float(radius), target_fill
        self.weight = self.new_class_parameter("xavier")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        rows = self.class_rows("weight", index)
        chunk = self.chunks(x_all.shape[0], rows.shape[0])
        if chunk is None:
            loss = npt_loss(class_cosines(x_all, rows.to(x_all.dtype)), local_target, self.k, self.delta,
                            self.radius, self.target_fill)
        else:
            loss = self.chunked_loss(x_all, rows, local_target, chunk)
        self.stats = {"active_fraction": (loss.detach() > 0).float().mean()}
        return loss.mean()

    def chunked_loss(self, x_all: torch.Tensor, rows: torch.Tensor, local_target: torch.Tensor, chunk: int):
        """The NPT loss (N,) with each rank's k nearest negatives found chunk by chunk (no gradient), then only those
        k cosines recomputed with autograd: (N, k, d) instead of an N x K matrix."""
        from frtrain.heads.chunked import chunked_topk, target_mask

        fill = float("-inf") if self.target_fill == "neg_inf" else 0.0
        xn = normalized(x_all)

        def cosines(xs, parts, start):
            w = parts[0].to(xs[0].dtype)
            cos = F.linear(xs[0], w) / w.norm(dim=1).clamp_min(1e-12)
            return cos.masked_fill(target_mask(local_target, start, w.shape[0]), fill)

        _, cols = chunked_topk(cosines, [xn], [rows], chunk, min(self.k, rows.shape[0]))
        picked = normalized(rows[cols].to(x_all.dtype).flatten(0, 1)).view(*cols.shape, -1)  # (N, k, d)
        top = (xn.unsqueeze(1) * picked).sum(dim=2)
        is_target = cols == local_target.unsqueeze(1)
        top = torch.where(is_target, torch.full_like(top, fill), top)  # target_fill=zero: the authors' constant 0
        if D.is_distributed():
            top = D.all_gather_replicated(top, dim=1)
            top = top.topk(min(self.k, top.shape[1]), dim=1).values
        w_t = rows[local_target.clamp(min=0)].to(x_all.dtype)
        cos_t = target_values(((xn * normalized(w_t)).sum(dim=1)).unsqueeze(1), torch.where(local_target >= 0, 0, -1))
        return 2.0 * self.radius**2 * F.relu(top - cos_t.unsqueeze(1) + self.delta).sum(dim=1)
