"""Target-logit margins: psi(theta) of the margin heads, as small objects the margin-softmax head is given.

Units are in the option names, and each unit is range-checked in one place: :func:`angle` (``margin_rad``, radians
added to theta), :func:`cosine` (``margin_cos``, subtracted from the cosine), :func:`multiplier` (``margin_mult``,
multiplies theta). The objects (:class:`ArcMargin`, :class:`CosMargin`, :class:`Combined`, :class:`MagFaceMargin`) are
what :class:`~frtrain.heads.classic.MarginSoftmax` takes as its ``margin``: ArcFace, CosFace, CombinedMargin and MagFace
are presets that give it one (insightface's habit: one word for a margin), and UNPG and IntraLoss take theirs as
``base``, a nested ``_target_`` node in the config.
"""

from __future__ import annotations

import math

import torch

from frtrain.heads.class_vectors import check_option

_ACOS_EPS = 1e-7


def angle(value: float, key: str) -> float:
    """An additive angular margin (radians), in [0, pi); ``key`` names the option in the error."""
    check_option(key, value, 0.0 <= value < math.pi, "an angular margin in [0, pi) radians")
    return float(value)


def cosine(value: float, key: str) -> float:
    """A cosine margin (subtracted from the target cosine), non-negative."""
    check_option(key, value, value >= 0.0, "a non-negative cosine margin")
    return float(value)


def multiplier(value: float, key: str) -> float:
    """A multiplicative angular margin, at least 1."""
    check_option(key, value, value >= 1.0, "a multiplicative margin >= 1")
    return float(value)


def safe_acos(cos: torch.Tensor) -> torch.Tensor:
    """arccos with the input clamped to [-1 + 1e-7, 1 - 1e-7] so that the gradient stays finite."""
    return torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))


def combined_margin(cos_t: torch.Tensor, m1: float, m2, m3: float) -> torch.Tensor:
    """psi(theta) = cos(m1*theta + m2) - m3, made monotone where m1*theta + m2 > pi.

    ``cos_t``: (N,) target cosines. ``m2`` may be a float or an (N,) tensor (MagFace, ElasticFace).
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


class Margin:
    """A target-logit margin: ``target_logit(cos_t, norms)`` -> psi (N,), and an optional per-sample
    ``regulariser(norms)`` added to the loss (None for most)."""

    def target_logit(self, cos_t: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def regulariser(self, norms: torch.Tensor) -> torch.Tensor | None:
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "key")
        return f"{type(self).__name__}({fields})"


class ArcMargin(Margin):
    """ArcFace's margin: cos(theta + margin_rad), insightface's fallback beyond pi. ``key``: the option's name in an
    error (``base.margin_rad`` nested in UNPG/IntraLoss, ``margin_rad`` for ArcFace itself)."""

    def __init__(self, margin_rad: float = 0.5, key: str = "base.margin_rad"):
        self.margin_rad, self.key = angle(margin_rad, key), key

    def target_logit(self, cos_t, norms):
        return combined_margin(cos_t, 1.0, self.margin_rad, 0.0)


class CosMargin(Margin):
    """CosFace's margin: cos(theta) - margin_cos."""

    def __init__(self, margin_cos: float = 0.35, key: str = "base.margin_cos"):
        self.margin_cos, self.key = cosine(margin_cos, key), key

    def target_logit(self, cos_t, norms):
        return cos_t - self.margin_cos


class Combined(Margin):
    """insightface's combined margin: cos(m1*theta + m2) - m3 (m1 a multiplier, m2 radians, m3 cosine units); see
    :func:`combined_margin` beyond theta = pi."""

    def __init__(self, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2):
        self.m1, self.m2, self.m3 = multiplier(m1, "m1"), angle(m2, "m2"), cosine(m3, "m3")

    def target_logit(self, cos_t, norms):
        return combined_margin(cos_t, self.m1, self.m2, self.m3)


class MagFaceMargin(Margin):
    """MagFace's norm-dependent angular margin and regulariser.

    a = ||x|| clamped to [l_a, u_a]; m(a) = l_m + (u_m - l_m)(a - l_a)/(u_a - l_a) radians;
    g(a) = 1/a + a/u_a^2, weighted by lambda_g.
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
