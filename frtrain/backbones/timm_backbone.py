"""Any timm model as a face embedding backbone: timm's pooled features -> linear -> BatchNorm1d."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch
from torch import nn

from frtrain.backbones.common import HALF, as_hw
from frtrain.errors import ConfigError


class TimmBackbone(nn.Module):
    """``timm.create_model(name, num_classes=0)`` with an embedding layer on top.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``convnext_nano``.
        embedding_size: d.
        input_size: H and W in pixels; passed to timm as ``img_size`` only when ``kwargs`` asks for it
            (ViTs need it, CNNs do not).
        dropout: dropout probability before the embedding layer.
        pretrained_file: a local weights file for timm (no model hub is reached); when given, the model's
            own mean/std are used for normalisation, otherwise 0.5/0.5 as for the other backbones.
        kwargs: passed to ``timm.create_model``.
    Input ``(B, 3, H, W)``; output ``(B, d)``.
    """

    def __init__(
        self,
        name: str,
        embedding_size: int = 512,
        input_size: int | Sequence[int] = 112,
        dropout: float = 0.0,
        pretrained_file: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"backbone.name={name!r} is not a timm model{hint}")
        extra = dict(kwargs or {})
        if pretrained_file:
            extra.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_file)})
        self.body = timm.create_model(name, num_classes=0, **extra)
        self.input_size = as_hw(input_size, "backbone.input_size")
        cfg = getattr(self.body, "pretrained_cfg", {}) or {}
        if pretrained_file and "mean" in cfg:
            self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        else:
            self.mean, self.std = HALF, HALF
        self.embedding_size = int(embedding_size)
        self.embedding = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.body.num_features, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.body(x))
