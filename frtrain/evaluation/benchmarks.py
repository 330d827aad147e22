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
from frtrain.errors import ConfigError, DataError
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


class _FileImages:
    """Picklable loader of image files, optionally cropped (fractions cut off each border)."""

    def __init__(self, paths: list[str], crop=None):
        self.paths, self.crop = paths, crop

    def __call__(self, i: int) -> np.ndarray:
        return center_crop(read_image(self.paths[i]), self.crop)


def read_lfw_pairs(path: str) -> tuple[list[tuple[str, int, str, int, bool, int]], int, int]:
    """Parse LFW's ``pairs.txt``: ``[(name1, n1, name2, n2, same, set)]`` (set 1-based), sets, pairs per kind.

    Raises :class:`DataError` naming the file and line for a wrong header, a malformed line, or a
    matched/mismatched line where the protocol has the other kind.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (LFW's pairs.txt)")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n\r") for line in f]
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise DataError(f"{path}:1: expected the header '<sets><TAB><pairs per kind>' (e.g. '10\t300'), "
                        f"got {lines[0] if lines else ''!r}")
    num_sets, per_kind = int(header[0]), int(header[1])
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != 2 * num_sets * per_kind:
        raise DataError(f"{path}: the header promises {num_sets} sets of {per_kind} matched + {per_kind} "
                        f"mismatched pairs ({2 * num_sets * per_kind} lines), the file has {len(body)}")
    pairs = []
    for i, line in enumerate(body):
        lineno, set_id, same = i + 2, i // (2 * per_kind) + 1, (i % (2 * per_kind)) < per_kind
        f = line.split("\t") if "\t" in line else line.split()
        try:
            if same and len(f) == 3:
                pairs.append((f[0], int(f[1]), f[0], int(f[2]), True, set_id))
                continue
            if not same and len(f) == 4:
                pairs.append((f[0], int(f[1]), f[2], int(f[3]), False, set_id))
                continue
        except ValueError:
            pass
        want = "'name<TAB>n1<TAB>n2' (a matched pair)" if same else "'name1<TAB>n1<TAB>name2<TAB>n2' (a mismatched pair)"
        raise DataError(f"{path}:{lineno}: expected {want} of set {set_id}, got {line!r}")
    return pairs, num_sets, per_kind


def lfw_people(pairs_path: str, sets: list[int]) -> list[str]:
    """Sorted names of the people in the given pairs sets (1-based) of an LFW ``pairs.txt``."""
    pairs, _, _ = read_lfw_pairs(pairs_path)
    return sorted({name for p in pairs if p[5] in set(sets) for name in (p[0], p[2])})


def lfw_benchmark(root: str, pairs: str | None = None, images: str | None = None, sets: list[int] | None = None,
                  name: str = "lfw", crop=None, skip_missing: bool = False) -> PairBenchmark:
    """LFW in its original layout: ``pairs.txt`` and ``<images>/<name>/<name>_<n:04d>.jpg``.

    Args:
        root: the LFW directory; ``pairs`` defaults to ``root/pairs.txt`` and ``images`` to ``root/images``
            when that exists, else ``root``.
        sets: the pairs sets to score (1-based; all by default). With all sets, the folds are the sets
            (the official protocol); with fewer, each set's matched and mismatched pairs are cut into
            10 consecutive chunks and chunk k of every set forms fold k.
        crop: fractions (left, top, right, bottom) cut off each image, for unaligned originals.
        skip_missing: drop (and count) pairs whose image file is missing instead of failing.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    pairs_path = pairs or os.path.join(root, "pairs.txt")
    image_dir = images or (os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root)
    rows, num_sets, per_kind = read_lfw_pairs(pairs_path)
    chosen = sorted(set(sets)) if sets else list(range(1, num_sets + 1))
    bad = [s for s in chosen if not 1 <= s <= num_sets]
    if bad:
        raise ConfigError(f"lfw sets {bad}: {pairs_path} has sets 1..{num_sets}")
    index: dict[str, int] = {}
    pair_rows, issame, folds, skipped, notes = [], [], [], 0, []
    for k, (n1, i1, n2, i2, same, set_id) in enumerate(rows):
        if set_id not in chosen:
            continue
        files = [os.path.join(image_dir, n, f"{n}_{i:04d}.jpg") for n, i in ((n1, i1), (n2, i2))]
        missing = [f for f in files if f not in index and not os.path.isfile(f)]
        if missing:
            if not skip_missing:
                raise DataError(f"{missing[0]}: no such image (pair {k + 1} of {pairs_path}); "
                                "skip_missing=true drops such pairs")
            skipped += 1
            continue
        pair_rows.append([index.setdefault(f, len(index)) for f in files])
        issame.append(same)
        position = k % (2 * per_kind) % per_kind  # rank of the pair among its set's pairs of its kind
        folds.append(set_id - 1 if len(chosen) == num_sets else position * 10 // per_kind)
    if skipped:
        notes.append(f"{skipped} pairs skipped: an image file is missing")
    if len(chosen) != num_sets:
        notes.append(f"sets {chosen} only: folds are 10 chunks of each set, not the official sets")
    return PairBenchmark(name=name, num_images=len(index), load=_FileImages(list(index), crop),
                         pairs=np.asarray(pair_rows, dtype=np.int64).reshape(-1, 2),
                         issame=np.asarray(issame, dtype=bool), folds=np.asarray(folds, dtype=np.int64),
                         source=pairs_path, skipped_pairs=skipped, notes=notes)


def file_pair_benchmark(name: str, source: str, file_pairs: list[tuple[str, str]], issame: list[bool],
                        folds: list[int], where: list[str], crop=None, skip_missing: bool = False,
                        notes: list[str] | None = None) -> PairBenchmark:
    """A benchmark from pairs of image paths; each distinct file is decoded once.

    Args:
        where: for each pair, where it came from (``file:line``), for the missing-image error.
        skip_missing: drop (and count) pairs with a missing image instead of failing.
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
    return PairBenchmark(name=name, num_images=len(index), load=_FileImages(list(index), crop),
                         pairs=np.asarray(rows, dtype=np.int64).reshape(-1, 2), issame=np.asarray(same, dtype=bool),
                         folds=np.asarray(fold, dtype=np.int64), source=source, skipped_pairs=skipped, notes=notes)
