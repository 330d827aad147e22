"""A generic CSV pair list for users' own data: ``path1,path2,is_same[,fold]``, one pair a line.

Paths are absolute or relative to ``root`` (default: the CSV's directory). ``is_same`` is 1/0,
true/false or yes/no. A first line whose third field is none of these is a header. Without the fold
column the pairs are cut into ``num_folds`` consecutive chunks (like a .bin); with it, the fold values
(any labels, in order of first appearance) must number exactly ``num_folds``.
"""

from __future__ import annotations

import csv
import os

from frtrain.errors import DataError
from frtrain.evaluation.benchmarks import PairBenchmark, file_pair_benchmark
from frtrain.evaluation.metrics import kfold_ids

_TRUE, _FALSE = {"1", "true", "yes", "same"}, {"0", "false", "no", "diff", "different"}


def read_pair_csv(path: str) -> list[tuple[str, str, bool, str | None, int]]:
    """-> [(path1, path2, same, fold label or None, line number)]; every line has a fold or none does."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (a CSV pair list)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = [(n, [x.strip() for x in r]) for n, r in enumerate(csv.reader(f), 1) if any(x.strip() for x in r)]
    if rows and len(rows[0][1]) >= 3 and rows[0][1][2].lower() not in _TRUE | _FALSE:
        rows = rows[1:]  # header
    if not rows:
        raise DataError(f"{path}: no pairs; expected lines 'path1,path2,is_same[,fold]'")
    width = len(rows[0][1])
    out = []
    for lineno, r in rows:
        if len(r) not in (3, 4) or len(r) != width:
            raise DataError(f"{path}:{lineno}: expected {width if width in (3, 4) else '3 or 4'} fields "
                            f"'path1,path2,is_same{',fold' if width == 4 else '[,fold]'}', got {len(r)}: {','.join(r)!r}")
        same = r[2].lower()
        if same not in _TRUE | _FALSE:
            raise DataError(f"{path}:{lineno}: is_same must be 1/0, true/false or yes/no, got {r[2]!r}")
        out.append((r[0], r[1], same in _TRUE, r[3] if width == 4 else None, lineno))
    return out


def csv_benchmark(path: str, root: str | None = None, name: str | None = None, num_folds: int = 10,
                  crop=None, skip_missing: bool = False) -> PairBenchmark:
    """Pairs from a CSV pair list; see the module docstring for the format."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    rows = read_pair_csv(path)
    base = os.path.abspath(os.path.expanduser(str(root))) if root else os.path.dirname(path)
    if rows[0][3] is None:
        if len(rows) < num_folds:
            raise DataError(f"{path}: {len(rows)} pairs cannot be split into {num_folds} folds")
        folds = kfold_ids(len(rows), num_folds).tolist()
    else:
        labels: dict[str, int] = {}
        folds = [labels.setdefault(r[3], len(labels)) for r in rows]
        if len(labels) != num_folds:
            raise DataError(f"{path}: the fold column has {len(labels)} distinct values {list(labels)}, "
                            f"expected num_folds={num_folds}")
    file_pairs = [tuple(os.path.join(base, p) for p in (r[0], r[1])) for r in rows]
    return file_pair_benchmark(name or os.path.splitext(os.path.basename(path))[0], path, file_pairs,
                               [r[2] for r in rows], folds, [f"{path}:{r[4]}" for r in rows],
                               crop=crop, skip_missing=skip_missing)
