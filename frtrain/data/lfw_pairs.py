"""LFW's ``pairs.txt``: the pairs and the people of each set. Read by the LFW benchmark (evaluation) and by the
identity selection of training data (``data.identities={lfw_pairs: ..., sets: [...]}``: train without the people a
benchmark scores), so it lives with the data readers."""

from __future__ import annotations

import os

from frtrain.errors import DataError


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
