"""The classic softmax-family heads: softmax, NormFace, SphereFace, CosFace, ArcFace, combined margin, MagFace.

All are faithful to their papers (see docs/heads.md). Margins are in radians (``margin``, ``m2``) or
cosine units (``m3``); scales are the logit scale s.

Every margin head is :class:`MarginSoftmax`: the logits are ``s * cos(theta_ij)`` with the target
column replaced by ``s * psi(theta_i)``, and the loss is the mean softmax cross-entropy. Heads differ
only in ``psi`` (:meth:`MarginSoftmax.target_logit`) and in extra terms (MagFace's regulariser).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frtrain.engine import distributed as D
from frtrain.heads.class_vectors import (
    Head,
    check_option,
    class_cosines,
    sharded_cross_entropy,
    target_values,
)

_ACOS_EPS = 1e-7


def safe_acos(cos: torch.Tensor) -> torch.Tensor:
    """arccos with the input clamped to [-1 + 1e-7, 1 - 1e-7] so that the gradient stays finite."""
    return torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))


def combined_margin(cos_t: torch.Tensor, m1: float, m2, m3: float) -> torch.Tensor:
    """psi(theta) = cos(m1*theta + m2) - m3, made monotone where m1*theta + m2 > pi.

    ``cos_t``: (N,) target cosines. ``m2`` may be a float or an (N,) tensor (MagFace).
    Beyond pi, for m1 == 1 this uses insightface's fallback ``cos_t - m2*sin(m2) - m3`` (its ``th``/``mm``),
    so ``combined(1, m, 0)`` is exactly ArcFace; for m1 != 1 it uses SphereFace's monotone extension
    ``(-1)^k cos(m1*theta + m2) - 2k - m3`` with k = floor((m1*theta + m2)/pi).
    CosFace (m1 = 1, m2 = 0) never calls arccos, so its gradient is exact even at cos = 1.
    """
    m2_is_zero = not torch.is_tensor(m2) and m2 == 0.0
    if m1 == 1.0 and m2_is_zero:
        return cos_t - m3
    theta = safe_acos(cos_t)
    arg = m1 * theta + m2
    if m1 == 1.0:
        m2t = torch.as_tensor(m2, dtype=cos_t.dtype, device=cos_t.device)
        psi = torch.where(arg <= math.pi, torch.cos(arg), cos_t - m2t * torch.sin(m2t))
    else:
        k = torch.floor(arg.detach() / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        psi = sign * torch.cos(arg) - 2.0 * k
    return psi - m3


class Softmax(Head):
    """Plain softmax cross-entropy over a linear classifier: CE(W x_i + b, y_i). No normalisation."""

    class_parameters = ("weight", "bias")

    def __init__(self, embedding_size: int, num_classes: int, sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, sample_rate)
        self.weight = self.new_class_parameter("normal")
        self.bias = nn.Parameter(torch.zeros(self.num_local))

    def class_logits(self, x_all: torch.Tensor, index) -> torch.Tensor:
        """(N, d) -> (N, K) logits W x + b over the selected local classes."""
        return F.linear(x_all, self.class_rows("weight", index, x_all.dtype), self.class_rows("bias", index, x_all.dtype))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        index, local_target = self.select_classes(y_all)
        return sharded_cross_entropy(self.class_logits(x_all, index), local_target).mean()


class MarginSoftmax(Head):
    """Normalised softmax with a target-logit margin: CE over s*cos_ij, target s*psi(theta_i).

    Args:
        scale: s, the logit scale (> 0).
        margin_grad: ``autograd`` (default) differentiates through psi exactly (pytorch-metric-learning);
            ``straight_through`` uses d(logit)/d(cos) = s for every entry, as insightface's in-place margin
            under ``no_grad`` does. Same loss value; the gradients differ for ArcFace, not for CosFace.
    Subclasses define :meth:`target_logit`.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0,
                 margin_grad: str = "autograd", sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, sample_rate)
        check_option("scale", scale, scale > 0, "a positive logit scale")
        check_option("margin_grad", margin_grad, margin_grad in ("autograd", "straight_through"),
                     "'autograd' or 'straight_through'")
        self.scale = float(scale)
        self.margin_grad = margin_grad
        self.weight = self.new_class_parameter("unit")

    def target_logit(self, cos_t: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """psi_i (unscaled) from the target cosines (N,) and the feature norms (N,)."""
        return cos_t

    def extra_loss(self, norms: torch.Tensor) -> torch.Tensor | None:
        """A per-sample term added to the CE (MagFace's regulariser), or None."""
        return None

    def margin_logits(self, x_all: torch.Tensor, y_all: torch.Tensor):
        """The scaled logits with the margin applied.

        Returns ``(logits, local_target, cos_t, psi, norms)``: logits (N, K) = s*cos with the owned target
        entries replaced by s*psi; cos_t and psi (N,) replicated over ranks; norms (N,) feature norms.
        """
        index, local_target = self.select_classes(y_all)
        norms = x_all.norm(dim=1)
        logits = class_cosines(x_all, self.class_rows("weight", index, x_all.dtype), self.scale)  # (N, K) = s * cos
        cos_t = target_values(logits, local_target) / self.scale
        # psi_i enters the loss only through the rank that owns class y_i, so its dependence on the
        # norms is differentiated once, there; replicated terms of the norms use D.replicated instead.
        psi = self.target_logit(cos_t, norms)
        if self.margin_grad == "straight_through":
            psi = cos_t + (psi - cos_t).detach()
        rows = torch.nonzero(local_target >= 0).squeeze(1)
        logits = logits.index_put((rows, local_target[rows]), self.scale * psi[rows])
        self.stats = {"cos_target": cos_t.detach().mean()}
        return logits, local_target, cos_t, psi, norms

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_all, y_all = self.gather(embeddings, labels)
        logits, local_target, _, _, norms = self.margin_logits(x_all, y_all)
        loss = sharded_cross_entropy(logits, local_target)
        extra = self.extra_loss(D.replicated(norms))
        if extra is not None:
            loss = loss + extra
        return loss.mean()


class NormFace(MarginSoftmax):
    """NormFace (Wang et al. 2017): CE over s*cos, no margin. s = 64 (30 for small data sets)."""


class CombinedMargin(MarginSoftmax):
    """insightface's combined margin: target logit s*(cos(m1*theta + m2) - m3).

    (1, m, 0) is ArcFace, (1, 0, m) CosFace, (m, 0, 0) SphereFace without annealing. See
    :func:`combined_margin` for the extension beyond theta = pi.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, m1: float = 1.0,
                 m2: float = 0.5, m3: float = 0.0, margin_grad: str = "autograd", sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, scale, margin_grad, sample_rate)
        check_option("m1", m1, m1 >= 1.0, "a multiplicative margin >= 1")
        check_option("m2", m2, 0.0 <= m2 < math.pi, "an additive angular margin in [0, pi) radians")
        check_option("m3", m3, m3 >= 0.0, "a non-negative cosine margin")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def target_logit(self, cos_t, norms):
        return combined_margin(cos_t, self.m1, self.m2, self.m3)


class ArcFace(CombinedMargin):
    """ArcFace (Deng et al. 2019): target logit s*cos(theta + m), s = 64, m = 0.5 rad.

    Where theta + m > pi: insightface's monotone fallback cos(theta) - m*sin(m).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 margin_grad: str = "autograd", sample_rate: float = 1.0):
        check_option("margin", margin, 0.0 <= margin < math.pi, "an angular margin in [0, pi) radians")
        super().__init__(embedding_size, num_classes, scale, 1.0, margin, 0.0, margin_grad, sample_rate)


class CosFace(CombinedMargin):
    """CosFace / AM-softmax (Wang et al. 2018): target logit s*(cos(theta) - m), s = 64, m = 0.35."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35,
                 margin_grad: str = "autograd", sample_rate: float = 1.0):
        check_option("margin", margin, margin >= 0.0, "a non-negative cosine margin")
        super().__init__(embedding_size, num_classes, scale, 1.0, 0.0, margin, margin_grad, sample_rate)


class SphereFace(MarginSoftmax):
    """SphereFace / A-softmax (Liu et al. 2017) on normalised features, with the paper's annealing.

    Target logit ``s * (lambda*cos(theta) + psi(theta)) / (1 + lambda)`` with psi the monotone
    ``(-1)^k cos(m*theta) - 2k``. lambda anneals as in the authors' Caffe layer:
    ``max(lambda_min, lambda_base * (1 + gamma*it)^-power)`` over training iterations ``it``
    (1000, 0.12, 1, 5 in the paper). ``lambda_base = lambda_min = 0`` gives the pure psi.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 4.0,
                 lambda_base: float = 1000.0, lambda_gamma: float = 0.12, lambda_power: float = 1.0,
                 lambda_min: float = 5.0, margin_grad: str = "autograd", sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, scale, margin_grad, sample_rate)
        check_option("margin", margin, margin >= 1.0, "a multiplicative margin >= 1")
        check_option("lambda_min", lambda_min, lambda_min >= 0.0, "a non-negative value")
        check_option("lambda_base", lambda_base, lambda_base >= 0.0, "a non-negative value")
        self.margin = float(margin)
        self.lambda_base, self.lambda_gamma = float(lambda_base), float(lambda_gamma)
        self.lambda_power, self.lambda_min = float(lambda_power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        it = float(self.iteration)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def target_logit(self, cos_t, norms):
        lam = self.current_lambda()
        if self.training:
            self.iteration += 1
        psi = combined_margin(cos_t, self.margin, 0.0, 0.0)
        return (lam * cos_t + psi) / (1.0 + lam)


class MagFaceMargin:
    """MagFace's norm-dependent margin and regulariser (shared by :class:`MagFace` and UNPG's magface base).

    a = ||x|| clamped to [l_a, u_a]; m(a) = l_m + (u_m - l_m)(a - l_a)/(u_a - l_a); g(a) = 1/a + a/u_a^2.
    """

    def __init__(self, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8,
                 lambda_g: float = 35.0):
        check_option("l_a", l_a, 0.0 < l_a < u_a, "0 < l_a < u_a")
        check_option("l_m", l_m, 0.0 <= l_m <= u_m < math.pi, "0 <= l_m <= u_m < pi")
        check_option("lambda_g", lambda_g, lambda_g >= 0.0, "a non-negative weight")
        self.l_a, self.u_a, self.l_m, self.u_m, self.lambda_g = map(float, (l_a, u_a, l_m, u_m, lambda_g))

    def margin(self, norms: torch.Tensor) -> torch.Tensor:
        a = norms.clamp(self.l_a, self.u_a)
        return self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)

    def target_logit(self, cos_t: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return combined_margin(cos_t, 1.0, self.margin(norms), 0.0)

    def regulariser(self, norms: torch.Tensor) -> torch.Tensor:
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (1.0 / a + a / self.u_a**2)


class MagFace(MarginSoftmax):
    """MagFace (Meng et al. 2021): ArcFace with a margin that grows with the feature norm, plus a regulariser.

    loss = CE(target s*cos(theta + m(a))) + lambda_g * g(a); see :class:`MagFaceMargin`.
    Defaults l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35, s = 64.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, l_a: float = 10.0,
                 u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0,
                 margin_grad: str = "autograd", sample_rate: float = 1.0):
        super().__init__(embedding_size, num_classes, scale, margin_grad, sample_rate)
        self.magface = MagFaceMargin(l_a, u_a, l_m, u_m, lambda_g)

    def target_logit(self, cos_t, norms):
        return self.magface.target_logit(cos_t, norms)

    def extra_loss(self, norms):
        return self.magface.regulariser(norms)


class BaseMargin:
    """The target logit of a named margin head, for heads that wrap one (UNPG, IntraLoss).

    ``arcface``: cos(theta + margin) with insightface's fallback; ``cosface``: cos(theta) - margin;
    ``magface``: MagFace's norm-dependent margin and regulariser (``margin`` unused).
    """

    def __init__(self, base: str, margin: float, allowed: tuple[str, ...], magface: dict | None = None):
        check_option("base", base, base in allowed, " | ".join(allowed))
        if base == "arcface":
            check_option("margin", margin, 0.0 <= margin < math.pi, "an angular margin in [0, pi) radians")
        elif base == "cosface":
            check_option("margin", margin, margin >= 0.0, "a non-negative cosine margin")
        self.base, self.margin = base, float(margin)
        self.magface = MagFaceMargin(**(magface or {})) if base == "magface" else None

    def target_logit(self, cos_t: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        if self.base == "arcface":
            return combined_margin(cos_t, 1.0, self.margin, 0.0)
        if self.base == "cosface":
            return cos_t - self.margin
        return self.magface.target_logit(cos_t, norms)

    def regulariser(self, norms: torch.Tensor) -> torch.Tensor | None:
        return None if self.magface is None else self.magface.regulariser(norms)
