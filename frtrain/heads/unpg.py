"""UNPG: unified negative pair generation (Jung et al., arXiv 2203.11593).

Faithful, from the paper and the authors' released code. UNPG wraps a margin head (ArcFace, CosFace
or MagFace): to every row's softmax denominator it adds the same set N of negative-pair similarities
taken from the mini-batch itself,

    L_i = -log( e^{s psi_i} / ( e^{s psi_i} + sum_{j != y_i} e^{s cos_ij} + sum_{t in N} e^{s t} ) )

1. N starts as all pairs a < b of the (global, all-rank) batch with y_a != y_b, t = x_a . x_b (normalised).
2. Box-and-whisker filter: sort, Q1 = t[floor(L/4)], Q3 = t[floor(3L/4)] by index (no interpolation),
   keep t in [Q1 - r IQR, Q3 + r IQR]. The thresholds carry no gradient; the kept t do.
3. The appended term is the same for every row, so the loss is computed as
   ``logaddexp(LSE_j(s l_ij), LSE_{t in N}(s t)) - s psi_i`` without a B x (C + |N|) logit matrix.

The batch negatives get no margin. UNPG replaces the base head's cross-entropy; MagFace's regulariser is
added as usual. A batch with a single identity has no negative pair and falls back to the base head.

The base margin is an object (``base: {_target_: frtrain.heads.margins.ArcMargin, margin_rad: 0.5}``;
CosMargin with ``margin_cos``, MagFaceMargin with its options), and UNPG is the margin-softmax head with
two hooks: the base's target logit and :meth:`UNPG.extra_logsumexp`.
"""

from __future__ import annotations

import math

import torch

from frtrain import distributed as D
from frtrain.errors import ConfigError
from frtrain.heads.class_vectors import check_option, normalized
from frtrain.heads.classic import MarginSoftmax
from frtrain.heads.margins import ArcMargin, Margin


def batch_negative_similarities(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair a < b with different labels: (N, d), (N,) -> (L,).

    Read off the N x N Gram matrix: O(N^2) memory, not the L x d of gathering the pairs' features.
    """
    xn = normalized(x)
    gram = xn @ xn.t()
    a, b = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    keep = labels[a] != labels[b]
    return gram[a[keep], b[keep]]


def box_whisker_filter(values: torch.Tensor, r: float) -> torch.Tensor:
    """Keep the values inside [Q1 - r IQR, Q3 + r IQR], quartiles by index in the sorted values."""
    if values.numel() == 0:
        return values
    ordered = values.detach().sort().values
    n = ordered.numel()
    q1, q3 = ordered[int(math.floor(0.25 * n))], ordered[int(math.floor(0.75 * n))]
    iqr = q3 - q1
    return values[(values >= q1 - r * iqr) & (values <= q3 + r * iqr)]


def check_base(base, allowed: tuple[type, ...], head: str) -> Margin:
    """The ``base`` margin object of a head that wraps one; a string (the old switch) is a clear error."""
    if base is None:
        return ArcMargin()
    if isinstance(base, str):
        raise ConfigError(f"head.base={base!r}: base is now a margin object, e.g. head.base={{_target_: "
                          "frtrain.heads.margins.ArcMargin, margin_rad: 0.5}} (or CosMargin with margin_cos"
                          f"{', MagFaceMargin' if any(c.__name__ == 'MagFaceMargin' for c in allowed) else ''})")
    if not isinstance(base, allowed):
        raise ConfigError(f"head.base: {head} takes {' or '.join(c.__name__ for c in allowed)}, got {type(base).__name__}")
    return base


class UNPG(MarginSoftmax):
    """UNPG over a base margin.

    Args:
        base: the base head's margin: :class:`~frtrain.heads.margins.ArcMargin` (default, 0.5 rad),
            :class:`~frtrain.heads.margins.CosMargin` or :class:`~frtrain.heads.margins.MagFaceMargin`
            (0.5 for both ArcFace and CosFace in the authors' run).
        scale: s (64 in the paper; ``auto`` by class count).
        r: the whisker length of the filter (1.5; the authors used 1.0 on another data set).
    """

    def __init__(self, embedding_size: int, num_classes: int, base: Margin | None = None,
                 scale: float | str = "auto", r: float = 1.5, margin_grad: str = "autograd", **common):
        from frtrain.heads.margins import CosMargin, MagFaceMargin

        base = check_base(base, (ArcMargin, CosMargin, MagFaceMargin), "UNPG")
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=base, **common)
        check_option("r", r, r >= 0.0, "a non-negative whisker length")
        self.base = base
        self.r = float(r)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"

    def extra_logsumexp(self, x_all: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor | None:
        """LSE over the kept batch negatives of s*t (a scalar), or None when the batch has one identity."""
        # computed identically on every rank from the gathered batch: only rank 0 keeps its graph
        kept = box_whisker_filter(batch_negative_similarities(D.replicated(x_all), y_all), self.r)
        self.stats["negatives"] = torch.tensor(float(kept.numel()))
        if kept.numel() == 0:
            return None
        return torch.logsumexp(self.scale * kept, dim=0)
