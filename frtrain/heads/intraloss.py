"""IntraLoss (Jiang et al., arXiv 2107.03352) -- a RECONSTRUCTION from the abstract, not the paper's equation.

Only the abstract could be read: a "gradient-enhancing term" is added to a margin loss (ArcFace or
CosFace) and acts on samples in the "anisotropic region" of their class, so that the intra-class
distribution keeps shrinking after the margin loss's own gradient has vanished. The reading
implemented here:

    L = L_base + lambda * (1/B) sum_i a_i * theta_i / pi
    a_i = 1 if theta_i > the mean theta of the samples of class y_i in the batch (the batch mean where
          the class has one sample), else 0; a_i carries no gradient.

Open choices, as options: ``base`` (a margin object: ArcMargin, default 0.5 rad, or CosMargin),
``lambda_intra`` (1.0), ``region`` (``above_class_mean`` | ``all``; ``all`` is the Intra-Loss of the ArcFace
paper, L + lambda*theta/pi). The term is the margin-softmax head's :meth:`IntraLoss.extra_loss` hook.
"""

from __future__ import annotations

import math

import torch

from frtrain.heads.class_vectors import check_option
from frtrain.heads.classic import MarginSoftmax
from frtrain.heads.margins import ArcMargin, CosMargin, Margin, safe_acos
from frtrain.heads.unpg import check_base


def above_class_mean(theta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where theta_i exceeds the mean theta of its class in the batch (batch mean for singletons)."""
    theta = theta.detach()
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), dtype=theta.dtype, device=theta.device).index_add(0, inverse, theta)
    counts = torch.bincount(inverse, minlength=len(classes)).to(theta.dtype)
    reference = torch.where(counts[inverse] > 1, sums[inverse] / counts[inverse], theta.mean())
    return (theta > reference).to(theta.dtype)


class IntraLoss(MarginSoftmax):
    """IntraLoss (reconstruction): a margin head plus lambda * a_i * theta_i / pi on the anisotropic region.

    Args:
        base: the base margin: :class:`~frtrain.heads.margins.ArcMargin` (default, 0.5 rad) or
            :class:`~frtrain.heads.margins.CosMargin`.
        scale: the base head's s.
        lambda_intra: weight of the gradient-enhancing term (1.0).
        region: ``above_class_mean`` (default) or ``all``.
    """

    def __init__(self, embedding_size: int, num_classes: int, base: Margin | None = None,
                 scale: float | str = "auto", lambda_intra: float = 1.0, region: str = "above_class_mean",
                 margin_grad: str = "autograd", **common):
        base = check_base(base, (ArcMargin, CosMargin), "IntraLoss")
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=base, **common)
        self.base = base
        check_option("lambda_intra", lambda_intra, lambda_intra >= 0.0, "a non-negative weight")
        check_option("region", region, region in ("above_class_mean", "all"), "'above_class_mean' or 'all'")
        self.lambda_intra, self.region = float(lambda_intra), region

    def extra_loss(self, m, y_all):
        theta = safe_acos(m.cos_t)
        active = torch.ones_like(theta) if self.region == "all" else above_class_mean(theta, y_all)
        self.stats["active_fraction"] = active.mean()
        return self.lambda_intra * active * theta / math.pi
