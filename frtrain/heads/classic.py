"""The classic softmax-family heads: softmax, NormFace, SphereFace, CosFace, ArcFace, combined margin, MagFace.

All are faithful to their papers (see docs/heads.md). Option names carry their units: ``margin_rad``
(radians, added to the angle), ``margin_cos`` (cosine units), ``margin_mult`` (multiplies the angle);
combined margin keeps insightface's ``m1`` (multiplier), ``m2`` (radians), ``m3`` (cosine units). The
old name ``margin`` still works with a warning (``renamed_options``). ``scale`` is the logit scale s.

Every margin head is :class:`MarginSoftmax`: the logits are ``s * cos(theta_ij)`` with the target
column replaced by ``s * psi(theta_i)``, and the loss is the mean softmax cross-entropy. ``psi`` is the margin
object the head is given (:mod:`frtrain.heads.margins`: ArcFace, CosFace, CombinedMargin and MagFace are presets
that give one), or :meth:`MarginSoftmax.target_logit` where a head's margin depends on its own state (SphereFace's
annealing, ElasticFace's random draws, AdaFace's norm statistics). Hooks, any of them: :meth:`~MarginSoftmax.extra_loss`
(a per-sample term: the margin's regulariser (MagFace) by default, IntraLoss's term),
:meth:`~MarginSoftmax.extra_logsumexp` (columns added to every row's denominator: UNPG's batch negatives) and
:meth:`~MarginSoftmax.adjust_logits` (the non-target logits: CurricularFace's hard negatives).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from frtrain import distributed as D
from frtrain.heads.class_vectors import (
    Head,
    check_option,
    class_cosines,
    normalized,
    sharded_cross_entropy,
    target_values,
)
from frtrain.heads.margins import ArcMargin, Combined, CosMargin, MagFaceMargin, Margin, combined_margin, multiplier


class Softmax(Head):
    """Plain softmax cross-entropy over a linear classifier: CE(W x_i + b, y_i). No normalisation."""

    class_parameters = ("weight", "bias")

    def __init__(self, embedding_size: int, num_classes: int, **common):
        super().__init__(embedding_size, num_classes, **common)
        self.weight = self.new_class_parameter("normal")
        self.bias = nn.Parameter(torch.zeros(self.num_local))

    def cross_entropy(self, x_all: torch.Tensor, index, local_target: torch.Tensor) -> torch.Tensor:
        """Per-sample CE (N,) of the logits W x + b over the selected local classes, replicated over ranks; an
        N x K logit matrix on the plain path, class chunks on the chunked one (:mod:`frtrain.heads.chunked`)."""
        from frtrain.heads.chunked import chunked_reduce

        w, b = self.class_rows("weight", index), self.class_rows("bias", index)
        chunk = self.chunks(x_all.shape[0], w.shape[0])
        if chunk is None:
            return sharded_cross_entropy(F.linear(x_all, w.to(x_all.dtype), b.to(x_all.dtype)), local_target)

        def block(xs, parts, start):
            return F.linear(xs[0], parts[0].to(xs[0].dtype), parts[1].to(xs[0].dtype))

        lse = chunked_reduce(block, [x_all], [w, b], chunk)
        if D.is_distributed():
            lse = torch.logsumexp(D.all_gather_replicated(lse.unsqueeze(1), dim=1), dim=1)
        t = local_target.clamp(min=0)
        own = (x_all * w[t].to(x_all.dtype)).sum(dim=1) + b[t].to(x_all.dtype)
        return lse - target_values(own.unsqueeze(1), torch.where(local_target >= 0, 0, -1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        return self.cross_entropy(x_all, index, local_target).mean()


def auto_scale(num_classes: int) -> float:
    """The logit scale ``scale: auto`` picks: 16 up to 500 classes, the papers' 64 from 5,000 classes on,
    geometric in log C between (1,000 classes: 24.1; 2,000: 32.0).

    The papers' s = 64 was tuned for 10k-90k identities; on a few hundred it saturates the softmax and
    training stalls (ArcFace on 423 LFW identities, 1,000 steps: 70.6% at s = 64, 92.1% at s = 16).
    AdaCos (Zhang et al. 2019) puts the well-conditioned scale near sqrt(2) ln(C - 1), which is lower
    still; 16 is the smallest that trains the margin heads reliably on small sets.
    """
    lo, hi = 500, 5000
    if num_classes <= lo:
        return 16.0
    if num_classes >= hi:
        return 64.0
    return 16.0 * 4.0 ** (math.log(num_classes / lo) / math.log(hi / lo))


class MarginLogits(NamedTuple):
    """What the hooks of :class:`MarginSoftmax` see (``extra_loss``).

    logits: (N, K) s*cos_ij, with the owned target entries replaced by s*psi_i; None on the chunked path.
    local_target: (N,) the target's column in this shard's selection, -1 where another rank owns it.
    cos_t, psi: (N,) the target cosine and its margin version, replicated over ranks.
    norms: (N,) the feature norms.
    """

    logits: torch.Tensor
    local_target: torch.Tensor
    cos_t: torch.Tensor
    psi: torch.Tensor
    norms: torch.Tensor


class MarginSoftmax(Head):
    """Normalised softmax with a target-logit margin: CE over s*cos_ij, target s*psi(theta_i).

    Args:
        scale: s, the logit scale (> 0), or ``auto`` (:func:`auto_scale` of the class count: the papers' 64
            from 5,000 classes on, 16 on a few hundred).
        margin_grad: ``autograd`` (default) differentiates through psi exactly (pytorch-metric-learning);
            ``straight_through`` uses d(logit)/d(cos) = s for every entry, as insightface's in-place margin
            under ``no_grad`` does. Same loss value; the gradients differ for ArcFace, not for CosFace.
        margin: the target-logit margin (:mod:`frtrain.heads.margins`); None: psi = cos (NormFace), or the
            subclass's :meth:`target_logit`.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto",
                 margin_grad: str = "autograd", margin: Margin | None = None, **common):
        super().__init__(embedding_size, num_classes, **common)
        self.margin_fn = margin
        check_option("scale", scale, scale == "auto" or (not isinstance(scale, str) and scale > 0),
                     "a positive logit scale or auto")
        check_option("margin_grad", margin_grad, margin_grad in ("autograd", "straight_through"),
                     "'autograd' or 'straight_through'")
        self.scale_auto = scale == "auto"
        self.scale = auto_scale(self.num_classes) if self.scale_auto else float(scale)
        self.margin_grad = margin_grad
        self.weight = self.new_class_parameter("unit")

    def extra_repr(self) -> str:
        how = f" (auto for {self.num_classes} classes)" if self.scale_auto else ""
        margin = f", margin={self.margin_fn}" if self.margin_fn is not None else ""
        return f"{super().extra_repr()}, scale={self.scale:.1f}{how}{margin}"

    def target_logit(self, cos_t: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """psi_i (unscaled) from the target cosines (N,) and the feature norms (N,): the margin's."""
        return cos_t if self.margin_fn is None else self.margin_fn.target_logit(cos_t, norms)

    def extra_loss(self, m: MarginLogits, y_all: torch.Tensor) -> torch.Tensor | None:
        """A per-sample term (N,) added to the cross-entropy: the margin's regulariser (MagFace) by default.

        Values computed from the gathered batch alone (the norms) must go through
        :func:`frtrain.distributed.replicated`, so their gradient is counted once over the ranks.
        """
        if self.margin_fn is None:
            return None
        return self.margin_fn.regulariser(D.replicated(m.norms))

    def extra_logsumexp(self, x_all: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor | None:
        """log sum exp of extra logits added to every row's softmax denominator (scalar or (N,)), or None."""
        return None

    def adjust_logits(self, logits: torch.Tensor, cos_t: torch.Tensor) -> torch.Tensor:
        """The scaled logits (N, K) of the non-target classes, changed before the targets are put in
        (CurricularFace's hard negatives); ``cos_t`` (N,) the target cosines. The identity by default."""
        return logits

    def target_cosines(self, x_all: torch.Tensor, w_t: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
        """cos_t (N,): each sample's cosine to its class vector ``w_t`` (N, d), from the rank that owns the class,
        replicated."""
        cos = (normalized(x_all) * normalized(w_t.to(x_all.dtype))).sum(dim=1)
        return target_values(cos.unsqueeze(1), torch.where(local_target >= 0, 0, -1))

    def adjusts_negatives(self) -> bool:
        """Whether :meth:`adjust_logits` is overridden (the chunked path then differentiates each chunk with autograd)."""
        return type(self).adjust_logits is not MarginSoftmax.adjust_logits

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from frtrain.heads.chunked import cosine_logsumexp

        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        rows = self.class_rows("weight", index)  # (K, d) this rank's (selected) class vectors, storage dtype
        norms = x_all.norm(dim=1)
        chunk = self.chunks(x_all.shape[0], rows.shape[0])
        negatives = None
        if chunk is not None and not self.adjusts_negatives():
            # the negatives' log-sum-exp and the target rows in one chunked pass (see cosine_logsumexp)
            negatives, w_t = cosine_logsumexp(normalized(x_all) * self.scale, rows, local_target, chunk)
        else:
            w_t = rows[local_target.clamp(min=0)]
        cos_t = self.target_cosines(x_all, w_t, local_target)
        self.stats = {"cos_target": cos_t.detach().mean()}  # the hooks below may add theirs
        psi = self.target_logit(cos_t, norms)
        if self.margin_grad == "straight_through":
            psi = cos_t + (psi - cos_t).detach()
        extra_lse = self.extra_logsumexp(x_all, y_all)
        if chunk is None:
            logits = self.adjust_logits(class_cosines(x_all, rows.to(x_all.dtype), self.scale), cos_t)  # (N, K)
            # psi_i enters the loss only through the rank that owns class y_i, so its dependence on the
            # norms is differentiated once, there; replicated terms of the norms use D.replicated instead.
            owned = torch.nonzero(local_target >= 0).squeeze(1)
            logits = logits.index_put((owned, local_target[owned]), self.scale * psi[owned])
            loss = sharded_cross_entropy(logits, local_target, extra_lse)
        else:
            logits = None
            if negatives is None:
                negatives = self.adjusted_negatives(x_all, rows, local_target, cos_t, chunk)
            loss = self.chunked_cross_entropy(negatives, local_target, psi, extra_lse)
        extra = self.extra_loss(MarginLogits(logits, local_target, cos_t, psi, norms), y_all)
        return (loss if extra is None else loss + extra).mean()

    def adjusted_negatives(self, x_all, rows, local_target, cos_t, chunk: int) -> torch.Tensor:
        """log sum_{j != y_i} exp(adjust_logits(s cos_ij)) over this rank's class chunks (N,), each chunk through
        autograd (heads that change the negatives' logits: CurricularFace)."""
        from frtrain.heads.chunked import chunked_reduce, target_mask

        def block(xs, parts, start):
            w = parts[0].to(xs[0].dtype)
            logits = F.linear(xs[0], w) / w.norm(dim=1).clamp_min(1e-12)  # (N, k) = s * cos
            logits = self.adjust_logits(logits, cos_t)
            return logits.masked_fill(target_mask(local_target, start, w.shape[0]), float("-inf"))

        return chunked_reduce(block, [normalized(x_all) * self.scale], [rows], chunk)

    def chunked_cross_entropy(self, negatives, local_target, psi, extra_lse=None) -> torch.Tensor:
        """The margin softmax cross-entropy (N,) from this rank's negatives' log-sum-exp (N,): the ranks' partial
        results are combined, and the target's s*psi (owned by one rank, as in the plain path) and any extra
        columns are added. No N x K matrix (:mod:`frtrain.heads.chunked`)."""
        if D.is_distributed():
            negatives = torch.logsumexp(D.all_gather_replicated(negatives.unsqueeze(1), dim=1), dim=1)
        target = self.scale * target_values(psi.unsqueeze(1), torch.where(local_target >= 0, 0, -1))
        terms = [negatives, target] + ([extra_lse.expand_as(target)] if extra_lse is not None else [])
        return torch.logsumexp(torch.stack(terms), dim=0) - target


class NormFace(MarginSoftmax):
    """NormFace (Wang et al. 2017): CE over s*cos, no margin. s = 64 (30 for small data sets)."""


class CombinedMargin(MarginSoftmax):
    """insightface's combined margin: target logit s*(cos(m1*theta + m2) - m3); m1 a multiplier, m2 radians,
    m3 cosine units (defaults 1.0, 0.3, 0.2, insightface's combined-margin setting).

    (1, m, 0) is ArcFace, (1, 0, m) CosFace, (m, 0, 0) SphereFace without annealing. See
    :func:`~frtrain.heads.margins.combined_margin` for the extension beyond theta = pi.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", m1: float = 1.0,
                 m2: float = 0.3, m3: float = 0.2, margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=Combined(m1, m2, m3), **common)


class ArcFace(MarginSoftmax):
    """ArcFace (Deng et al. 2019): target logit s*cos(theta + m), s = 64, m = ``margin_rad`` = 0.5 rad.

    Where theta + m > pi: insightface's monotone fallback cos(theta) - m*sin(m).
    """

    renamed_options = {"margin": "margin_rad"}

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_rad: float = 0.5,
                 margin_grad: str = "autograd", **common):
        margin = ArcMargin(margin_rad, key="margin_rad")
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=margin, **common)


class CosFace(MarginSoftmax):
    """CosFace / AM-softmax (Wang et al. 2018): target logit s*(cos(theta) - m), s = 64, m = ``margin_cos`` = 0.35."""

    renamed_options = {"margin": "margin_cos"}

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_cos: float = 0.35,
                 margin_grad: str = "autograd", **common):
        margin = CosMargin(margin_cos, key="margin_cos")
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=margin, **common)


class SphereFace(MarginSoftmax):
    """SphereFace / A-softmax (Liu et al. 2017) on normalised features, with the paper's annealing.

    Target logit ``s * (lambda*cos(theta) + psi(theta)) / (1 + lambda)`` with psi the monotone
    ``(-1)^k cos(m*theta) - 2k``; ``margin_mult`` = m multiplies the angle (4 in the paper). lambda anneals
    as in the authors' Caffe layer: ``max(lambda_min, lambda_base * (1 + gamma*it)^-power)`` over optimiser
    steps ``it`` (1000, 0.12, 1, 5 in the paper; the trainer calls :meth:`after_optimizer_step`, so gradient
    accumulation does not speed the annealing up). ``lambda_base = lambda_min = 0`` gives the pure psi.
    """

    renamed_options = {"margin": "margin_mult"}

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_mult: float = 4.0,
                 lambda_base: float = 1000.0, lambda_gamma: float = 0.12, lambda_power: float = 1.0,
                 lambda_min: float = 5.0, margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, **common)
        self.margin_mult = multiplier(margin_mult, "margin_mult")
        check_option("lambda_min", lambda_min, lambda_min >= 0.0, "a non-negative value")
        check_option("lambda_base", lambda_base, lambda_base >= 0.0, "a non-negative value")
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        it = float(self.iteration)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def after_optimizer_step(self) -> None:
        self.iteration += 1

    def target_logit(self, cos_t, norms):
        lam = self.current_lambda()
        psi = combined_margin(cos_t, self.margin_mult, 0.0, 0.0)
        return (lam * cos_t + psi) / (1.0 + lam)


class MagFace(MarginSoftmax):
    """MagFace (Meng et al. 2021): ArcFace with a margin that grows with the feature norm, plus a regulariser.

    loss = CE(target s*cos(theta + m(a))) + lambda_g * g(a); see :class:`~frtrain.heads.margins.MagFaceMargin`.
    Defaults l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35, s = 64.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", l_a: float = 10.0,
                 u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0,
                 margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad,
                         margin=MagFaceMargin(l_a, u_a, l_m, u_m, lambda_g), **common)
