"""CFP (Celebrities in Frontal-Profile) in its original layout, frontal-frontal (FF) and frontal-profile (FP).

    <root>/Protocol/Pair_list_F.txt        "<index> ../Data/Images/001/frontal/01.jpg" (paths relative to Protocol/)
    <root>/Protocol/Pair_list_P.txt        the same for the profile images
    <root>/Protocol/Split/{FF,FP}/01..10/{same,diff}.txt     "<i>,<j>" lines

In FF both indices refer to Pair_list_F; in FP the first refers to Pair_list_F and the second to
Pair_list_P. Fold k is split folder k; within it the ``same`` pairs come before the ``diff`` pairs (the
order of insightface's cfp_fp.bin).
"""

from __future__ import annotations

import os

from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import PairBenchmark, file_pair_benchmark


def read_pair_list(path: str) -> dict[int, str]:
    """``Pair_list_{F,P}.txt`` -> {index: absolute image path}; paths are relative to the list's folder."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (CFP's image list)")
    base, images = os.path.dirname(path), {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split(None, 1)
            if len(fields) != 2 or not fields[0].isdigit():
                raise DataError(f"{path}:{lineno}: expected '<index> <relative image path>', got {line.rstrip()!r}")
            index = int(fields[0])
            if index in images:
                raise DataError(f"{path}:{lineno}: index {index} appears twice")
            images[index] = os.path.normpath(os.path.join(base, fields[1].strip()))
    if not images:
        raise DataError(f"{path}: the image list is empty")
    return images


def read_split_file(path: str) -> list[tuple[int, int, int]]:
    """``same.txt``/``diff.txt`` -> [(i, j, line number)]."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (a CFP split file)")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [x.strip() for x in line.split(",")]
            if len(fields) != 2 or not all(x.isdigit() for x in fields):
                raise DataError(f"{path}:{lineno}: expected '<i>,<j>' (two image indices), got {line.rstrip()!r}")
            pairs.append((int(fields[0]), int(fields[1]), lineno))
    return pairs


def cfp_benchmark(root: str, protocol: str = "FP", name: str | None = None, num_folds: int = 10,
                  crop=None, skip_missing: bool = False) -> PairBenchmark:
    """CFP-FF or CFP-FP from ``root`` (the directory holding ``Data`` and ``Protocol``).

    Args:
        protocol: ``FF`` or ``FP``.
        num_folds: split folders expected (01..num_folds); a different count is an error.
        crop: fractions (left, top, right, bottom) cut off each image (CFP's photos are unaligned;
            null expects images already aligned into the same layout).
        skip_missing: drop (and count) pairs whose image file is missing instead of failing.
    """
    protocol = str(protocol).upper()
    if protocol not in ("FF", "FP"):
        raise ConfigError(f"cfp protocol must be 'FF' or 'FP', got {protocol!r}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    proto_dir = os.path.join(root, "Protocol")
    frontal = read_pair_list(os.path.join(proto_dir, "Pair_list_F.txt"))
    second = frontal if protocol == "FF" else read_pair_list(os.path.join(proto_dir, "Pair_list_P.txt"))
    second_list = "Pair_list_F.txt" if protocol == "FF" else "Pair_list_P.txt"
    split_dir = os.path.join(proto_dir, "Split", protocol)
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir}: no such directory (CFP's {protocol} splits)")
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    expected = [f"{k:02d}" for k in range(1, num_folds + 1)]
    if found != expected:
        raise DataError(f"{split_dir}: expected {num_folds} split folders {expected[0]}..{expected[-1]}, "
                        f"found {len(found)}: {found}")
    file_pairs, issame, folds, where = [], [], [], []
    for fold, split in enumerate(expected):
        for kind in ("same", "diff"):
            path = os.path.join(split_dir, split, f"{kind}.txt")
            for i, j, lineno in read_split_file(path):
                if i not in frontal:
                    raise DataError(f"{path}:{lineno}: index {i} is not in Pair_list_F.txt ({len(frontal)} images)")
                if j not in second:
                    raise DataError(f"{path}:{lineno}: index {j} is not in {second_list} ({len(second)} images)")
                file_pairs.append((frontal[i], second[j]))
                issame.append(kind == "same")
                folds.append(fold)
                where.append(f"{path}:{lineno}")
    return file_pair_benchmark(name or f"cfp_{protocol.lower()}", split_dir, file_pairs, issame, folds, where,
                               crop=crop, skip_missing=skip_missing, identity_of=cfp_person,
                               unit="people (CFP's Data/Images/<id>)")


def cfp_person(path: str) -> str:
    """CFP's ``Data/Images/<id>/{frontal,profile}/<n>.jpg``: the person is the folder above the pose."""
    return os.path.basename(os.path.dirname(os.path.dirname(path)))
