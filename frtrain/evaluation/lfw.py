"""LFW in its original layout: ``pairs.txt`` and ``<images>/<name>/<name>_<n:04d>.jpg``.

Found as users download it: ``pairs.txt`` in the root, the images in ``images/``, ``lfw/``,
``lfw-deepfunneled/``, ``lfw_funneled/`` or the root itself (the first that holds the people of the pairs),
or where ``images`` says. Built on :func:`frtrain.evaluation.benchmarks.file_pair_benchmark`.
"""

from __future__ import annotations

import os

from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import PairBenchmark, file_pair_benchmark

#: image folders of LFW's releases, tried in this order under the root
IMAGE_DIRS = ("images", "lfw", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "lfwcrop_color", ".")


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
    return file_pair_benchmark(name, pairs_path, file_pairs, issame, fold_of, where, crop, skip_missing, notes)
