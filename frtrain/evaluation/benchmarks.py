"""Verification benchmarks: image pairs with same/different labels and fold ids.

A benchmark holds a way to load image i (-> (H, W, 3) uint8 RGB), the pairs as indices into those
images, the labels and the fold of each pair. Scoring is in :mod:`frtrain.evaluation.verify`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from frtrain.data.images import center_crop, decode_image, read_image
from frtrain.errors import DataError
from frtrain.evaluation.binfile import read_bin
from frtrain.evaluation.metrics import kfold_ids


@dataclass
class PairBenchmark:
    """Pairs of images to verify.

    Attributes:
        name: shown in reports and TensorBoard.
        num_images: how many distinct images ``load`` serves (each is decoded once).
        load: i -> (H, W, 3) uint8 RGB image.
        pairs: (N, 2) int indices into the images.
        issame: (N,) bool.
        folds: (N,) int fold id of each pair.
        source: the file or directory the benchmark came from.
        skipped_pairs: pairs dropped because an image was missing (only with skip_missing).
        item_of_image: for video benchmarks (YTF), (num_images,) the video each frame belongs to; the
            pairs then index videos, whose embedding is the normalised mean of their frames' normalised
            embeddings. None: the pairs index images.
    """

    name: str
    num_images: int
    load: Callable[[int], np.ndarray]
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    source: str = ""
    skipped_pairs: int = 0
    notes: list[str] = field(default_factory=list)
    item_of_image: np.ndarray | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.issame)


class _BinImages:
    """Picklable loader of the encoded images of a .bin (sent to DataLoader workers)."""

    def __init__(self, images: list[bytes], source: str):
        self.images, self.source = images, source

    def __call__(self, i: int) -> np.ndarray:
        return decode_image(self.images[i], f"{self.source} image {i}")


def bin_benchmark(path: str, name: str | None = None, num_folds: int = 10) -> PairBenchmark:
    """An insightface ``.bin``: pair i is images 2i and 2i+1; folds are 10 consecutive equal chunks."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    images, issame = read_bin(path)
    n = len(issame)
    if n < num_folds:
        raise DataError(f"{path}: {n} pairs cannot be split into {num_folds} folds")
    # identical encoded images (a .bin repeats an image for every pair it is in) are embedded once
    first: dict[bytes, int] = {}
    unique = [first.setdefault(hashlib.sha1(b).digest(), len(first)) for b in images]
    distinct = [None] * len(first)
    for i, u in enumerate(unique):
        if distinct[u] is None:
            distinct[u] = images[i]
    index = np.asarray(unique, dtype=np.int64)
    pairs = np.stack([index[0::2], index[1::2]], axis=1)
    return PairBenchmark(
        name=name or os.path.splitext(os.path.basename(path))[0], num_images=len(distinct),
        load=_BinImages(distinct, path), pairs=pairs, issame=np.asarray(issame, dtype=bool),
        folds=kfold_ids(n, num_folds), source=path,
    )


def synthetic_benchmark(cache_dir: str, name: str = "synthetic", **spec) -> PairBenchmark:
    """The synthetic verification split (generated on first use) as a .bin benchmark."""
    from frtrain.data.synthetic import synthetic_verification_bin

    return bin_benchmark(str(synthetic_verification_bin(cache_dir, **spec)), name=name)


class FileImages:
    """Picklable loader of image files (sent to DataLoader workers), optionally cropped (fractions cut off each
    border): ``FileImages(paths, crop)(i)`` -> (H, W, 3) uint8 RGB."""

    def __init__(self, paths: list[str], crop=None):
        self.paths, self.crop = paths, crop

    def __call__(self, i: int) -> np.ndarray:
        return center_crop(read_image(self.paths[i]), self.crop)


def file_pair_benchmark(name: str, source: str, file_pairs: list[tuple[str, str]], issame: list[bool],
                        folds: list[int], where: list[str], crop=None, skip_missing: bool = False,
                        notes: list[str] | None = None) -> PairBenchmark:
    """A benchmark from pairs of image paths; each distinct file is decoded once. The readers of LFW, CFP and
    CSV pair lists are built on it.

    Args:
        where: for each pair, where it came from (``file:line``), for the missing-image error.
        skip_missing: drop (and count) pairs with a missing image instead of failing; a benchmark left with
            no pair at all is an error all the same (a wrong root, not a few missing files).
    """
    index: dict[str, int] = {}
    rows, same, fold, skipped, notes = [], [], [], 0, list(notes or [])
    for (f1, f2), s, k, w in zip(file_pairs, issame, folds, where):
        missing = [f for f in (f1, f2) if f not in index and not os.path.isfile(f)]
        if missing:
            if not skip_missing:
                raise DataError(f"{missing[0]}: no such image ({w}); skip_missing=true drops such pairs")
            skipped += 1
            continue
        rows.append([index.setdefault(f, len(index)) for f in (f1, f2)])
        same.append(bool(s))
        fold.append(int(k))
    if skipped:
        notes.append(f"{skipped} pairs skipped: an image file is missing")
    if not rows:
        raise DataError(f"{source}: none of its {len(file_pairs)} pairs has both images (e.g. {file_pairs[0][0]} is "
                        "missing); is the image directory right?" if file_pairs else f"{source}: lists no pairs")
    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise DataError(f"{source}: its usable pairs are all {'same' if same.all() else 'different'}-person pairs; "
                        "scoring needs both kinds")
    return PairBenchmark(name=name, num_images=len(index), load=FileImages(list(index), crop),
                         pairs=np.asarray(rows, dtype=np.int64).reshape(-1, 2), issame=same,
                         folds=np.asarray(fold, dtype=np.int64), source=source, skipped_pairs=skipped, notes=notes)
