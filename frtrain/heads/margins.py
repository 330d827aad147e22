"""Target-logit margins: psi(theta) of the margin heads, as functions and as small objects.

Units are in the option names: ``margin_rad`` (an angle added to theta, radians), ``margin_cos`` (subtracted
from the cosine), ``margin_mult`` (multiplies theta). The objects (:class:`ArcMargin`, :class:`CosMargin`,
:class:`MagFaceMargin`) are what heads that wrap a margin take as their ``base`` (UNPG, IntraLoss), as a
nested ``_target_`` node in the config.
"""

from __future__ import annotations

import math

import torch

from frtrain.heads.class_vectors import check_option

_ACOS_EPS = 1e-7


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
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class ArcMargin(Margin):
    """ArcFace's margin: cos(theta + margin_rad), insightface's fallback beyond pi."""

    def __init__(self, margin_rad: float = 0.5):
        check_option("base.margin_rad", margin_rad, 0.0 <= margin_rad < math.pi, "an angular margin in [0, pi) radians")
        self.margin_rad = float(margin_rad)

    def target_logit(self, cos_t, norms):
        return combined_margin(cos_t, 1.0, self.margin_rad, 0.0)


class CosMargin(Margin):
    """CosFace's margin: cos(theta) - margin_cos."""

    def __init__(self, margin_cos: float = 0.35):
        check_option("base.margin_cos", margin_cos, margin_cos >= 0.0, "a non-negative cosine margin")
        self.margin_cos = float(margin_cos)

    def target_logit(self, cos_t, norms):
        return cos_t - self.margin_cos


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
