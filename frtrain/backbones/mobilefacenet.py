"""MobileFaceNet (Chen et al. 2018), in insightface's ``mbf`` module layout.

Names and shapes follow insightface's ``recognition/arcface_torch/backbones/mobilefacenet.py``
(``layers.N.layers.*``, ``conv_sep.layers.*``, ``features.layers.*``), so its ``mbf`` checkpoints
load with ``strict=True`` at the same ``blocks``/``scale`` and a 112x112 input.

Structure: a stride-2 stem, three stride-2 depthwise bottlenecks with residual stacks between them
(``blocks`` residual blocks per stack), a 1x1 conv to 512 channels (``conv_sep``), then the global
depthwise conv (GDC, kernel = the final map size, 7x7 at 112x112) -> linear -> BatchNorm1d.
Input ``(B, 3, H, W)`` normalised with ``mean = std = 0.5``; output ``(B, d)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from frtrain.backbones.common import HALF, as_hw, downsampled
from frtrain.errors import ConfigError


class ConvBlock(nn.Module):
    """conv -> BatchNorm2d -> PReLU."""

    def __init__(self, cin, cout, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x):
        return self.layers(x)


class LinearBlock(nn.Module):
    """conv -> BatchNorm2d, no activation."""

    def __init__(self, cin, cout, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand to ``groups`` channels -> depthwise kxk -> 1x1 linear projection (+ input if residual)."""

    def __init__(self, cin, cout, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, groups),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, cout),
        )

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, channels, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x):
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv over the whole final map, then linear -> BatchNorm1d."""

    def __init__(self, embedding_size: int, map_size: tuple[int, int]):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=map_size, groups=512),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x):
        return self.layers(x)



class MobileFaceNet(nn.Module):
    """MobileFaceNet with insightface's defaults ``blocks=(1, 4, 6, 2)``, ``scale=2``.

    Args:
        embedding_size: d (512 in insightface).
        blocks: residual blocks in the four stacks.
        scale: channel multiplier (2 for ``mbf``, 4 for ``mbf_large``).
        input_size: H and W in pixels; the GDC kernel follows the final map (7x7 at 112).
    """

    def __init__(
        self,
        embedding_size: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        input_size: int | Sequence[int] = 112,
    ):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1 or scale < 1 or embedding_size < 1:
            raise ConfigError(
                f"backbone: blocks must be 4 positive counts and scale, embedding_size positive, got "
                f"blocks={list(blocks)}, scale={scale}, embedding_size={embedding_size}"
            )
        self.input_size = as_hw(input_size, "backbone.input_size")
        self.mean, self.std = HALF, HALF
        self.embedding_size = int(embedding_size)
        c64, c128 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c64, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c64, c64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64))
        else:
            self.layers.append(Residual(c64, blocks[0], groups=128))
        self.layers.extend(
            [
                DepthWise(c64, c64, groups=128),
                Residual(c64, blocks[1], groups=128),
                DepthWise(c64, c128, groups=256),
                Residual(c128, blocks[2], groups=256),
                DepthWise(c128, c128, groups=512),
                Residual(c128, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(c128, 512)
        map_size = (downsampled(self.input_size[0], 4), downsampled(self.input_size[1], 4))
        self.features = GDC(embedding_size, map_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))
