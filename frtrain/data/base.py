"""What the training readers share: decoding with corrupt files skipped and reported, augmentation, samples.

A reader (:class:`frtrain.data.folder.FaceFolder`, :class:`frtrain.data.recordio.RecordFaces`) says how
many images it has, what image ``i`` is called (``path(i)``) and how to read it (``sample(i)`` -> an
(H, W, 3) uint8 image at ``input_size`` and its label). :class:`ImageDataset` turns that into training
samples: ``dataset[(index, seed)]`` -> ``(image (3, H, W) uint8, label, skipped)``, where a corrupt file
is passed over (``on_corrupt=skip``) and ``skipped`` names the indices passed over, so that the trainer
counts each bad file once however often it is visited (:class:`CorruptImages`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from frtrain.data.images import DEFAULT_MAX_PIXELS, CorruptImageError
from frtrain.data.transforms import apply_augment, build_augment, to_chw_tensor
from frtrain.errors import ConfigError, DataError

log = logging.getLogger("frtrain")

#: corrupt files in a row after which the data is declared unreadable
MAX_CORRUPT_IN_A_ROW = 64


class ImageDataset(Dataset):
    """Base of the training readers; subclasses implement ``__len__``, ``num_classes``, ``path(i)`` and
    ``sample(i)``.

    Args:
        input_size: (H, W) the backbone expects; images of another size are resized.
        augment: albumentations transform configs (see :func:`frtrain.data.transforms.build_augment`).
        on_corrupt: ``skip`` (default) passes over an undecodable file (the trainer counts and reports it);
            ``raise`` stops at the first one with an error naming it.
        max_image_pixels: images whose header declares more pixels are treated as corrupt (a decompression
            bomb); default 150 megapixels, above any camera sensor a face photo comes from.
    """

    def __init__(self, input_size: Sequence[int] = (112, 112), augment: Sequence[Any] | Mapping[str, Any] | None = None,
                 on_corrupt: str = "skip", max_image_pixels: int = DEFAULT_MAX_PIXELS):
        if on_corrupt not in ("skip", "raise"):
            raise ConfigError(f"data.on_corrupt={on_corrupt!r}: expected 'skip' or 'raise'")
        if int(max_image_pixels) < 1:
            raise ConfigError(f"data.max_image_pixels={max_image_pixels!r}: expected a positive number of pixels")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.on_corrupt = on_corrupt
        self.max_image_pixels = int(max_image_pixels)
        self.augment = build_augment(augment)

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def path(self, index: int) -> str:
        """What image ``index`` is called in messages (a file path, or a record of a .rec)."""
        raise NotImplementedError

    def sample(self, index: int) -> tuple[np.ndarray, int]:
        """(decoded (H, W, 3) uint8 image at ``input_size``, label); may raise :class:`CorruptImageError`."""
        raise NotImplementedError

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        index = start = int(index)
        skipped: list[int] = []
        while True:
            try:
                image, label = self.sample(index)
                break
            except CorruptImageError:
                if self.on_corrupt == "raise":
                    raise
                skipped.append(index)
                if len(skipped) >= MAX_CORRUPT_IN_A_ROW:
                    raise DataError(f"{self.path(start)}: this and the next {len(skipped) - 1} images cannot be "
                                    "decoded; is the data readable?") from None
                index = (index + 1) % len(self)
        image = apply_augment(self.augment, image, seed)
        return to_chw_tensor(image), label, tuple(skipped)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(images (B, 3, H, W) uint8, labels (B,) int64, indices of the corrupt files passed over)."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.int64)
    return images, labels, [i for b in batch for i in b[2]]


class CorruptImages:
    """The corrupt files met during training, each counted once however often it is visited.

    ``add(indices)`` records the indices a batch passed over; ``pop_new()`` returns the ones not yet
    reported (for a summary warning); ``paths()`` lists them all by name.
    """

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset
        self.seen: set[int] = set()
        self._unreported: list[int] = []

    def add(self, indices) -> None:
        for i in indices:
            if i not in self.seen:
                self.seen.add(i)
                self._unreported.append(i)

    def __len__(self) -> int:
        return len(self.seen)

    def pop_new(self) -> list[int]:
        new, self._unreported = self._unreported, []
        return new

    def warn_new(self, when: str, first: int = 5) -> None:
        """One warning naming the first few files not yet reported and how many there are."""
        new = self.pop_new()
        if not new:
            return
        names = ", ".join(self.dataset.path(i) for i in new[:first])
        more = f" and {len(new) - first} more" if len(new) > first else ""
        log.warning("%s: skipped %d corrupt image%s: %s%s (%d distinct so far; all listed in corrupt_images.txt)",
                    when, len(new), "" if len(new) == 1 else "s", names, more, len(self.seen))

    def paths(self) -> list[str]:
        return [self.dataset.path(i) for i in sorted(self.seen)]
