"""ElasticFace (Boutros et al., CVPRW 2022): ArcFace / CosFace with per-sample margins drawn from a normal law.

Faithful to the authors' released code (fdbtrs/ElasticFace ``utils/losses.py`` and ``config/config.py``); see
docs/heads.md. The margins are drawn for the whole gathered batch by a generator whose state is a buffer of the
head: the same on every rank (so sharded ranks agree on every sample's margin), saved in checkpoints (so a resumed
run draws what the uninterrupted run would have drawn).
"""

from __future__ import annotations


import torch

from frtrain.heads.class_vectors import check_option
from frtrain.heads.classic import MarginSoftmax
from frtrain.heads.margins import angle, cosine, safe_acos


def _check_plus(plus_order: str) -> None:
    check_option("plus_order", plus_order, plus_order in ("authors", "rank"), "'authors' or 'rank'")


class _ElasticMargin(MarginSoftmax):
    """Per-sample margins drawn from N(mean, std) by a generator that is part of the head's state."""

    def _init_margins(self, mean: float, std: float, plus: bool, plus_order: str, seed: int) -> None:
        check_option("margin_std", std, std >= 0.0, "a non-negative standard deviation")
        _check_plus(plus_order)
        self.margin_mean, self.margin_std, self.plus, self.plus_order = float(mean), float(std), bool(plus), plus_order
        # the generator's state is a buffer: the same on every rank, saved in checkpoints, so resuming is exact
        self.register_buffer("margin_rng", torch.Generator().manual_seed(int(seed)).get_state(), persistent=True)

    def draw_margins(self, cos_t: torch.Tensor) -> torch.Tensor:
        """(N,) margins for the samples of the (gathered) batch; the mean margin outside training.

        ``plus``: the drawn margins sorted ascending, and with ``plus_order=authors`` sample i gets
        ``sorted[argsort(-cos_t)[i]]``, exactly what the authors' code computes (``margin[idicate_cosie]``): a
        fixed permutation of the sorted margins, not a rank-for-rank pairing. ``plus_order=rank`` pairs them by
        rank as the paper describes: the sample with the k-th largest target cosine gets the k-th smallest margin.
        """
        n = cos_t.shape[0]
        if not self.training:
            return torch.full((n,), self.margin_mean, dtype=cos_t.dtype, device=cos_t.device)
        g = torch.Generator()
        g.set_state(self.margin_rng.cpu())
        margins = torch.normal(self.margin_mean, self.margin_std, (n,), generator=g)
        self.margin_rng.copy_(g.get_state())
        margins = margins.to(device=cos_t.device, dtype=cos_t.dtype)
        if self.plus:
            ordered = margins.sort().values
            by_cos = torch.argsort(cos_t.detach(), descending=True, stable=True)
            if self.plus_order == "authors":
                margins = ordered[by_cos]
            else:
                margins = torch.empty_like(ordered).index_put_((by_cos,), ordered)
        self.stats["margin_mean"] = margins.mean()
        return margins


class ElasticArcFace(_ElasticMargin):
    """ElasticFace-Arc (Boutros et al., CVPRW 2022): ArcFace with a per-sample angular margin m_i ~ N(m, sigma).

    Target logit s * cos(theta_i + m_i), as in the authors' code (no fallback beyond pi). ``plus``: ElasticFace-Arc+,
    margins assigned by target cosine (see :meth:`draw_margins`). Defaults as the authors' config: m = 0.5 rad,
    sigma = 0.05 (0.0175 for the "+" variant: configs/head/elasticface_arc_plus.yaml), s = 64.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_rad: float = 0.5,
                 margin_std: float = 0.05, plus: bool = False, plus_order: str = "authors", seed: int = 0,
                 margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, **common)
        margin_rad = angle(margin_rad, "margin_rad")
        self._init_margins(margin_rad, margin_std, plus, plus_order, seed)

    def target_logit(self, cos_t, norms):
        return torch.cos(safe_acos(cos_t) + self.draw_margins(cos_t))


class ElasticCosFace(_ElasticMargin):
    """ElasticFace-Cos: CosFace with a per-sample cosine margin m_i ~ N(m, sigma): target s * (cos_i - m_i).

    Defaults as the authors' config: m = 0.35, sigma = 0.05 (0.02 for "+"), s = 64.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_cos: float = 0.35,
                 margin_std: float = 0.05, plus: bool = False, plus_order: str = "authors", seed: int = 0,
                 margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, **common)
        margin_cos = cosine(margin_cos, "margin_cos")
        self._init_margins(margin_cos, margin_std, plus, plus_order, seed)

    def target_logit(self, cos_t, norms):
        return cos_t - self.draw_margins(cos_t)


__all__ = ["ElasticArcFace", "ElasticCosFace"]
