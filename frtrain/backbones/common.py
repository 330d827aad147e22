"""Helpers the backbones share: input-size parsing and the map size after stride-2 convolutions."""

from __future__ import annotations

from typing import Sequence

#: normalisation of insightface-style backbones: (x/255 - 0.5)/0.5
HALF = (0.5, 0.5, 0.5)


def as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """112 -> (112, 112); (112, 96) -> (112, 96)."""
    if isinstance(input_size, int):
        return (input_size, input_size)
    h, w = input_size
    return (int(h), int(w))


def downsampled(size: int, times: int) -> int:
    """Side length after ``times`` 3x3 (or 1x1) convolutions with stride 2 and padding 1 (or 0)."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size
