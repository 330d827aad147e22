"""What the training readers share: decoding with corrupt files skipped and reported, augmentation, samples.

A reader (:class:`frtrain.data.folder.FaceFolder`, :class:`frtrain.data.recordio.RecordFaces`) says how
many images it has, what image ``i`` is called (``path(i)``) and how to read it (``sample(i)`` -> an
(H, W, 3) uint8 image at ``input_size`` and its label). :class:`ImageDataset` turns that into training
samples: ``dataset[(index, seed)]`` -> ``(image (3, H, W) uint8, label, skipped)``, where a corrupt file
is passed over (``on_corrupt=skip``) and ``skipped`` names the indices passed over, so that the trainer
counts each bad file once however often it is visited (:class:`CorruptImages`).
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from frtrain.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, CorruptImageError
from frtrain.data.transforms import apply_augment, build_augment, to_chw_tensor
from frtrain.errors import ConfigError, DataError

log = logging.getLogger("frtrain")

#: undecodable images drawn in a row for one sample (the image asked for, then others at random) after which the
#: worker gives up: with half of the data unreadable that happens with probability 2^-256
MAX_REPLACEMENTS = 256
#: the trainer stops when more than this fraction of the images tried in its recent window could not be decoded
UNREADABLE_FRACTION = 0.9
#: the most recent images (at most; fewer for a smaller data set: one epoch's worth) the fraction is taken over
UNREADABLE_WINDOW = 20_000


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
        max_image_bytes: image files (or records) larger than this are treated as corrupt without being read;
            default 100 MB.
    """

    def __init__(self, input_size: Sequence[int] = (112, 112), augment: Sequence[Any] | Mapping[str, Any] | None = None,
                 on_corrupt: str = "skip", max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_BYTES):
        if on_corrupt not in ("skip", "raise"):
            raise ConfigError(f"data.on_corrupt={on_corrupt!r}: expected 'skip' or 'raise'")
        if int(max_image_pixels) < 1:
            raise ConfigError(f"data.max_image_pixels={max_image_pixels!r}: expected a positive number of pixels")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.on_corrupt = on_corrupt
        if int(max_image_bytes) < 1:
            raise ConfigError(f"data.max_image_bytes={max_image_bytes!r}: expected a positive number of bytes")
        self.max_image_pixels = int(max_image_pixels)
        self.max_image_bytes = int(max_image_bytes)
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

    def replacement(self, index: int, seed: int | None, attempt: int) -> int:
        """The image that stands in for undecodable image ``index`` at the ``attempt``-th try: drawn at random over
        the whole set (not the next file, which is likely of the same bad folder), fixed by (index, seed, attempt),
        so that a resumed run draws the same."""
        return int(np.random.default_rng((index, 0 if seed is None else int(seed), attempt)).integers(len(self)))

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
                if len(skipped) > MAX_REPLACEMENTS:
                    raise DataError(f"{self.path(start)}: neither this image nor {MAX_REPLACEMENTS} others drawn at "
                                    f"random can be decoded (e.g. {self.path(index)}); is the data readable?") from None
                index = self.replacement(start, seed, len(skipped))
        image = apply_augment(self.augment, image, seed)
        return to_chw_tensor(image), label, tuple(skipped)

    def group(self, index: int) -> str:
        """Where image ``index`` lives, for saying where corrupt files gather (an identity folder)."""
        return os.path.dirname(self.path(index))


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
        self.window = max(1, min(len(dataset), UNREADABLE_WINDOW))
        self._recent: collections.deque = collections.deque()  # (images tried, undecodable) per batch
        self._tried = self._bad = 0

    def observe(self, delivered: int, skipped: int) -> None:
        """Count a batch: ``delivered`` images decoded and ``skipped`` undecodable ones tried before them. Raises
        :class:`DataError` (naming the folders where the bad files gather) when more than
        :data:`UNREADABLE_FRACTION` of the last ``window`` images tried could not be decoded: one bad folder, even
        hundreds of bad files among good ones, do not stop a run; data that is nearly all unreadable does."""
        self._recent.append((delivered + skipped, skipped))
        self._tried, self._bad = self._tried + delivered + skipped, self._bad + skipped
        while self._recent and self._tried - self._recent[0][0] >= self.window:
            tried, bad = self._recent.popleft()
            self._tried, self._bad = self._tried - tried, self._bad - bad
        if self._tried >= self.window and self._bad > UNREADABLE_FRACTION * self._tried:
            raise DataError(f"{self._bad:,} of the last {self._tried:,} images could not be decoded: the data is mostly "
                            f"unreadable ({self.where()}; every bad file is listed in corrupt_images.txt)")

    def where(self, first: int = 3) -> str:
        """The folders holding most of the corrupt files seen, with their counts."""
        counts = collections.Counter(self.dataset.group(i) for i in self.seen)
        top = ", ".join(f"{g} ({n})" for g, n in counts.most_common(first))
        more = f" and {len(counts) - first} more folders" if len(counts) > first else ""
        return f"most in {top}{more}" if counts else "none identified"

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
        log.warning("%s: skipped %d corrupt image%s: %s%s (%d distinct so far, %s; all listed in corrupt_images.txt)",
                    when, len(new), "" if len(new) == 1 else "s", names, more, len(self.seen), self.where())

    def paths(self) -> list[str]:
        return [self.dataset.path(i) for i in sorted(self.seen)]
