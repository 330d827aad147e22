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

from frtrain.data.images import decode_image
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
