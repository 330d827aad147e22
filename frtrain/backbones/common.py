"""What the backbones share: the contract every backbone keeps (:class:`EmbeddingModel`), input-size parsing
and the map size after stride-2 convolutions."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from frtrain.errors import ConfigError, brief

#: normalisation of insightface-style backbones: (x/255 - 0.5)/0.5
HALF = (0.5, 0.5, 0.5)


#: largest input side (pixels) a backbone accepts: face models take 96..224; a record or metadata asking for
#: more is a mistake or an attack (an image resized to 100000 x 100000 alone is 30 GB)
MAX_INPUT_SIDE = 1024


def as_hw(input_size: int | Sequence[int], key: str = "input_size") -> tuple[int, int]:
    """112 -> (112, 112); (112, 96) -> (112, 96); each side an integer in 1..:data:`MAX_INPUT_SIDE`."""
    if isinstance(input_size, bool) or not isinstance(input_size, (int, float, Sequence)) or isinstance(input_size, str):
        raise ConfigError(f"{key}={brief(input_size)}: expected a side in pixels or [H, W]")
    sides = (input_size, input_size) if isinstance(input_size, (int, float)) else tuple(input_size)
    if len(sides) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
                                  and 1 <= v <= MAX_INPUT_SIDE for v in sides):
        raise ConfigError(f"{key}={brief(list(input_size) if not isinstance(input_size, (int, float)) else input_size)}"
                          f": expected a side in pixels or [H, W], each an integer from 1 to {MAX_INPUT_SIDE}")
    return (int(sides[0]), int(sides[1]))


def downsampled(size: int, times: int) -> int:
    """Side length after ``times`` 3x3 (or 1x1) convolutions with stride 2 and padding 1 (or 0)."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


@runtime_checkable
class EmbeddingModel(Protocol):
    """The contract of a backbone, and of anything the evaluator scores (an ONNX model too).

    Attributes:
        input_size: (H, W) in pixels.
        mean, std: per-channel normalisation on the 0..1 scale: the model sees (x/255 - mean)/std.
        embedding_size: d.
    Calling it maps normalised float images (B, 3, H, W) to embeddings (B, d).
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_size: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def check_backbone(model, where: str):
    """``model`` if it keeps the :class:`EmbeddingModel` contract, else a one-line error naming what it lacks."""
    missing = [a for a in ("input_size", "mean", "std", "embedding_size") if not hasattr(model, a)]
    if missing:
        raise ConfigError(f"{where}: {type(model).__module__}.{type(model).__name__} has no attribute "
                          f"{missing[0]!r}; a backbone states input_size, mean, std and embedding_size "
                          "(frtrain.backbones.common.EmbeddingModel)")
    return model
