"""LFW in its original layout: ``pairs.txt`` and ``<images>/<name>/<name>_<n:04d>.jpg``.

Found as users download it: ``pairs.txt`` in the root, the images in ``images/``, ``lfw/``,
``lfw-deepfunneled/``, ``lfw_funneled/`` or the root itself (the first that holds the people of the pairs),
or where ``images`` says. Built on :func:`frtrain.evaluation.benchmarks.file_pair_benchmark`.
"""

from __future__ import annotations

import os

from frtrain.data.lfw_pairs import read_lfw_pairs
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import PairBenchmark, file_pair_benchmark

#: image folders of LFW's releases, tried in this order under the root
IMAGE_DIRS = ("images", "lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "lfwcrop_color", ".")


def find_image_dir(root: str, first_person: str) -> str:
    """The first of :data:`IMAGE_DIRS` under ``root`` that has a folder for ``first_person``."""
    for d in IMAGE_DIRS:
        candidate = os.path.normpath(os.path.join(root, d))
        if os.path.isdir(os.path.join(candidate, first_person)):
            return candidate
    tried = ", ".join(d for d in IMAGE_DIRS if d != ".")
    raise DataError(f"{root}: no folder {first_person}/ (the first person of its pairs.txt) in the root or in "
                    f"{tried}; point benchmarks.<name>.images at the image directory")


def lfw_benchmark(root: str, pairs: str | None = None, images: str | None = None, sets: list[int] | None = None,
                  name: str = "lfw", crop=None, skip_missing: bool = False, folds: str = "auto") -> PairBenchmark:
    """LFW in its original layout: ``pairs.txt`` and ``<images>/<name>/<name>_<n:04d>.jpg``.

    Args:
        root: the LFW directory; ``pairs`` defaults to ``root/pairs.txt``, ``images`` to the first of
            :data:`IMAGE_DIRS` under the root that has the people of the pairs (as LFW's downloads unpack).
        sets: the pairs sets to score (1-based; all by default). With all sets, the folds are the sets
            (the official protocol); with fewer, each set's matched and mismatched pairs are cut into
            10 consecutive chunks and chunk k of every set forms fold k (``folds: auto``).
        folds: ``auto`` (as above), ``sets`` (each chosen set is a fold: identity-disjoint folds, at least 2
            sets) or ``chunks`` (10 chunks of every set, also for all sets).
        crop: fractions (left, top, right, bottom) cut off each image, for unaligned originals.
        skip_missing: drop (and count) pairs whose image file is missing instead of failing.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    pairs_path = os.path.abspath(os.path.expanduser(str(pairs))) if pairs else os.path.join(root, "pairs.txt")
    rows, num_sets, per_kind = read_lfw_pairs(pairs_path)
    chosen = sorted(set(sets)) if sets else list(range(1, num_sets + 1))
    bad = [s for s in chosen if not 1 <= s <= num_sets]
    if bad:
        raise ConfigError(f"lfw sets {bad}: {pairs_path} has sets 1..{num_sets}")
    if folds not in ("auto", "sets", "chunks"):
        raise ConfigError(f"benchmarks.{name}.folds={folds!r}: expected auto, sets or chunks")
    by_set = folds == "sets" or (folds == "auto" and len(chosen) == num_sets)
    if by_set and len(chosen) < 2:
        raise ConfigError(f"benchmarks.{name}.folds=sets needs at least 2 sets, got {chosen}")
    image_dir = os.path.abspath(os.path.expanduser(str(images))) if images else find_image_dir(root, rows[0][0])
    file_pairs, issame, fold_of, where = [], [], [], []
    for k, (n1, i1, n2, i2, same, set_id) in enumerate(rows):
        if set_id not in chosen:
            continue
        file_pairs.append(tuple(os.path.join(image_dir, n, f"{n}_{i:04d}.jpg") for n, i in ((n1, i1), (n2, i2))))
        issame.append(same)
        position = k % (2 * per_kind) % per_kind  # rank of the pair among its set's pairs of its kind
        fold_of.append(set_id - 1 if by_set else position * 10 // per_kind)
        where.append(f"pair {k + 1} of {pairs_path}")
    notes = [] if len(chosen) == num_sets and by_set else [
        f"sets {chosen}: " + ("each set is a fold" if by_set else "folds are 10 chunks of each set, not the official sets")]
    return file_pair_benchmark(name, pairs_path, file_pairs, issame, fold_of, where, crop, skip_missing, notes,
                               unit="people (LFW's names)")
