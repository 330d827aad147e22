"""IResNet (Deng et al., ArcFace; insightface's ``iresnet.py``), written to insightface's layout.

Module names, their order and every shape equal insightface's ``recognition/arcface_torch``
IResNet, so its released ``backbone.pth`` files load with ``load_state_dict(sd, strict=True)``
(``tests/assets/iresnet18_keys.txt`` and ``iresnet50_keys.txt`` pin the keys). Do not rename modules: that breaks every
checkpoint users have.

Structure: stem ``conv1`` (3x3, stride 1) -> ``bn1`` -> ``prelu``; four stages ``layer1..layer4``
(planes 64/128/256/512, each starting with stride 2, block 0 with a ``downsample``); head ``bn2`` ->
flatten -> ``dropout`` -> ``fc`` (C*h*w -> d) -> ``features`` (BatchNorm1d whose weight is fixed at 1).
A 112x112 input leaves a 7x7 map (fc input 25088); other input sizes are allowed and change only
the width of ``fc``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from frtrain.backbones.common import HALF, as_hw, downsampled
from frtrain.errors import ConfigError

#: blocks per stage, as insightface names the depths
IRESNET_LAYERS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2 (3x3, carries the stride) -> bn3, plus identity."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        return out + identity



class IResNet(nn.Module):
    """IResNet-18/34/50/100/200, or any stage layout (``layers``) and width for small debug models.

    Args:
        depth: 18, 34, 50, 100 or 200 (insightface's layouts); or None with ``layers`` given.
        layers: blocks per stage, e.g. ``[1, 1, 1, 1]`` for a debug model.
        width: channels of the stem and of stage 1 (64 in insightface); stages use 1x, 2x, 4x, 8x.
        embedding_size: d, the size of the output embedding (512 in insightface).
        input_size: H and W of the input in pixels (112 for aligned faces).
        dropout: dropout probability before ``fc``.
    Input ``(B, 3, H, W)`` normalised with ``mean = std = 0.5``; output ``(B, d)``.
    """

    def __init__(
        self,
        depth: int | None = 50,
        layers: Sequence[int] | None = None,
        width: int = 64,
        embedding_size: int = 512,
        input_size: int | Sequence[int] = 112,
        dropout: float = 0.0,
    ):
        super().__init__()
        if layers is None:
            if depth not in IRESNET_LAYERS:
                raise ConfigError(
                    f"backbone.depth={depth} is not an IResNet depth; choose one of "
                    f"{sorted(IRESNET_LAYERS)} or give backbone.layers"
                )
            layers = IRESNET_LAYERS[depth]
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ConfigError(f"backbone.layers must be 4 positive block counts, got {list(layers)}")
        if width < 1 or embedding_size < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"backbone: width and embedding_size must be positive and dropout in [0, 1), got "
                f"width={width}, embedding_size={embedding_size}, dropout={dropout}"
            )
        self.input_size = as_hw(input_size, "backbone.input_size")
        self.mean, self.std = HALF, HALF
        self.embedding_size = int(embedding_size)

        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        self.layer1 = self._make_stage(width, layers[0])
        self.layer2 = self._make_stage(width * 2, layers[1])
        self.layer3 = self._make_stage(width * 4, layers[2])
        self.layer4 = self._make_stage(width * 8, layers[3])
        self.bn2 = nn.BatchNorm2d(width * 8, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        fh, fw = downsampled(self.input_size[0], 4), downsampled(self.input_size[1], 4)
        self.fc = nn.Linear(width * 8 * fh * fw, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_stage(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)
