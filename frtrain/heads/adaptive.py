"""AdaFace and CurricularFace: margin heads that adapt to running statistics of the training batches.

Faithful to the authors' released code (mk-minchul/AdaFace ``head.py``; HuangYG123/CurricularFace); see
docs/heads.md. Both keep their running statistics in buffers (saved in checkpoints, restored on resume).

Statistics and ranks (``batch_stats``): the authors compute them from each GPU's own batch. A frtrain head sees
the batch of every rank (features are gathered for the sharded class vectors) and each rank computes loss rows for
all of them, so every rank must give a sample the same margin. ``global`` (default) takes the statistics of the
whole gathered batch: identical on every rank, and the loss of W ranks equals the loss of one process on the
concatenated batch (tested). ``per_rank`` is the authors' behaviour: one running value per rank, updated from that
rank's slice of the gathered batch and applied to that rank's samples (every rank computes all of them, so they
still agree). With one process the two are the same.
"""

from __future__ import annotations

import math

import torch

from frtrain.heads.class_vectors import check_option
from frtrain.heads.classic import MarginSoftmax
from frtrain.heads.margins import ArcMargin


class _RunningStatistics(MarginSoftmax):
    """What AdaFace and CurricularFace share: ``batch_stats`` and exponential moving averages per rank slice."""

    #: buffers holding one running value (``global``) or one per rank (``per_rank``)
    running_buffers: tuple[str, ...] = ()

    def _init_stats(self, batch_stats: str, momentum: float, initial: dict[str, float]) -> None:
        check_option("batch_stats", batch_stats, batch_stats in ("global", "per_rank"), "'global' or 'per_rank'")
        check_option("momentum", momentum, 0.0 < momentum <= 1.0, "a value in (0, 1]")
        self.batch_stats, self.momentum = batch_stats, float(momentum)
        slots = self.world_size if batch_stats == "per_rank" else 1
        for name, value in initial.items():
            self.register_buffer(name, torch.full((slots,), float(value)))
        self.running_buffers = tuple(initial)

    def _slices(self, values: torch.Tensor) -> torch.Tensor:
        """(slots, n) view of per-sample values (N,): the whole batch, or one row per rank's slice."""
        slots = getattr(self, self.running_buffers[0]).numel()
        return values.reshape(slots, -1)

    @torch.no_grad()
    def _update(self, name: str, batch_value: torch.Tensor) -> None:
        buf = getattr(self, name)
        buf.mul_(1.0 - self.momentum).add_(self.momentum * batch_value.to(buf.dtype))

    def _per_sample(self, name: str, n: int) -> torch.Tensor:
        """The running value each of the n samples uses: (N,)."""
        buf = getattr(self, name)
        return buf.repeat_interleave(n // buf.numel())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.running_buffers:  # per_rank statistics saved by another world size: start from their mean
            key = prefix + name
            own = getattr(self, name)
            if key in state_dict and state_dict[key].shape != own.shape:
                state_dict[key] = state_dict[key].float().mean().expand(own.shape).clone().to(own.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AdaFace(_RunningStatistics):
    """AdaFace (Kim, Jain, Liu, CVPR 2022): a margin adapted to image quality through the feature norm.

    z_i = clip(h * (||x_i|| - mu) / (sigma + eps), -1, 1), with ||x_i|| clipped to [0.001, 100] and detached and
    mu, sigma running averages of the batch's norm mean and (unbiased) std, updated before use with ``momentum``
    (0.01, the authors' ``t_alpha`` in their training config), starting at 20 and 100. Target logit
    s * (cos(clip(theta_i - m z_i, eps, pi - eps)) - (m + m z_i)), theta_i = arccos of the target cosine clamped to
    [-1 + eps, 1 - eps], eps = 1e-3; other logits s * cos_ij (the authors also clamp those to 1 - 1e-3, which
    matters only above cos 0.999). A low-norm (low-quality) sample gets a larger angular and a smaller additive
    margin. ``margin`` m = 0.4 is used both in radians and in cosine units; h = 0.333, s = 64 in the paper.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin: float = 0.4,
                 h: float = 0.333, momentum: float = 0.01, batch_stats: str = "global", margin_grad: str = "autograd",
                 **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, **common)
        check_option("margin", margin, 0.0 <= margin < math.pi / 2, "an adaptive margin in [0, pi/2)")
        check_option("h", h, h > 0.0, "a positive concentration")
        self.margin, self.h, self.eps = float(margin), float(h), 1e-3
        self._init_stats(batch_stats, momentum, {"norm_mean": 20.0, "norm_std": 100.0})

    def quality(self, norms: torch.Tensor) -> torch.Tensor:
        """z_i in [-1, 1] from the feature norms (N,), after updating the running statistics in training."""
        safe = norms.detach().clamp(0.001, 100.0)
        if self.training:
            rows = self._slices(safe)
            self._update("norm_mean", rows.mean(dim=1))
            self._update("norm_std", rows.std(dim=1) if rows.shape[1] > 1 else torch.zeros_like(rows[:, 0]))
        mean, std = self._per_sample("norm_mean", safe.numel()), self._per_sample("norm_std", safe.numel())
        z = (self.h * (safe - mean.to(safe.dtype)) / (std.to(safe.dtype) + self.eps)).clamp(-1.0, 1.0)
        self.stats["quality_mean"] = z.mean()
        return z

    def target_logit(self, cos_t, norms):
        z = self.quality(norms)
        theta = torch.acos(cos_t.clamp(-1.0 + self.eps, 1.0 - self.eps))
        angle = (theta - self.margin * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(angle) - (self.margin + self.margin * z)


class CurricularFace(_RunningStatistics):
    """CurricularFace (Huang et al., CVPR 2020): ArcFace's target with hard negatives weighted by a curriculum.

    Target: cos(theta_i + m) where theta_i + m <= pi, else cos_i - m sin(m) (insightface's fallback). A negative
    with cos_ij > cos(theta_i + m) (computed as cos_i cos m - sin_i sin m, as the authors do) becomes
    cos_ij (t + cos_ij); t is a running average of the batch's mean target cosine (``momentum`` 0.01, start 0,
    no gradient), updated before the negatives are weighted. All logits x s. m = ``margin_rad`` = 0.5, s = 64.
    """

    renamed_options = {"margin": "margin_rad"}

    def __init__(self, embedding_size: int, num_classes: int, scale: float | str = "auto", margin_rad: float = 0.5,
                 momentum: float = 0.01, batch_stats: str = "global", margin_grad: str = "autograd", **common):
        super().__init__(embedding_size, num_classes, scale, margin_grad, margin=ArcMargin(margin_rad, key="margin_rad"),
                         **common)
        self.margin_rad = self.margin_fn.margin_rad
        self._init_stats(batch_stats, momentum, {"t": 0.0})

    def target_logit(self, cos_t, norms):
        if self.training:  # once per forward, before the negatives are weighted (adjust_logits is pure)
            self._update("t", self._slices(cos_t.detach().clamp(-1.0, 1.0)).mean(dim=1))
        return self.margin_fn.target_logit(cos_t, norms)

    def adjust_logits(self, logits, cos_t):
        """Hard negatives weighted by the current t: elementwise, so it applies to any block of columns."""
        with torch.no_grad():
            c = cos_t.clamp(-1.0, 1.0)
            cos_theta_m = c * math.cos(self.margin_rad) - torch.sqrt(1.0 - c * c) * math.sin(self.margin_rad)
            t = self._per_sample("t", c.numel()).to(logits.dtype).unsqueeze(1)
        cos = logits / self.scale
        hard = cos.detach() > cos_theta_m.unsqueeze(1)
        self.stats["hard_fraction"] = hard.float().mean()
        return torch.where(hard, self.scale * cos * (t + cos), logits)


__all__ = ["AdaFace", "CurricularFace"]
