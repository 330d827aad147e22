"""The breakdown of a pair benchmark by group of people at one global threshold (BFW's protocol, and the ``groups``
option of any pair benchmark: a CSV mapping image -> group).

The global threshold is the cosine at which the false match rate over all impostor pairs is ``far``
(:func:`frtrain.evaluation.metrics.threshold_at_far`); per group the TAR and the false match rate (FMR) at that
threshold, and the group's own threshold at the same FAR. A pair belongs to a group when both of its images do (pairs
across groups: ``mixed``, reported apart). The report names the group with the highest FMR at the global threshold.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from frtrain.errors import DataError
from frtrain.evaluation import metrics
from frtrain.evaluation.results import pct

MIXED = "mixed"


def breakdown(scores: np.ndarray, issame: np.ndarray, pair_groups: np.ndarray, far: float,
              correct: np.ndarray | None = None) -> dict:
    """The per-group figures at one global threshold (see the module docstring): ``{"far", "threshold",
    "impostors", "groups": {group: {pairs, genuine, impostors, tar, fmr, own_threshold, accuracy}}, "highest_fmr"}``.
    ``correct``: each pair's outcome at its fold's threshold (the 10-fold accuracy per group), when known."""
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    pair_groups = np.asarray(pair_groups).astype(str)
    glob = metrics.threshold_at_far(scores[~issame], far)
    out = {"far": far, "threshold": glob["cosine"], "impostors": glob["impostors"], "groups": {}}
    for g in sorted(set(pair_groups.tolist()), key=lambda x: (x == MIXED, x)):
        m = pair_groups == g
        gen, imp = scores[m & issame], scores[m & ~issame]
        row = {"pairs": int(m.sum()), "genuine": int(len(gen)), "impostors": int(len(imp)),
               "tar": float(np.mean(gen >= glob["cosine"])) if len(gen) else None,
               "fmr": float(np.mean(imp >= glob["cosine"])) if len(imp) else None,
               "own_threshold": metrics.threshold_at_far(imp, far)["cosine"] if len(imp) else None}
        if correct is not None:
            row["accuracy"] = float(np.mean(np.asarray(correct)[m]))
        out["groups"][g] = row
    rated = {g: r["fmr"] for g, r in out["groups"].items() if r["fmr"] is not None and g != MIXED}
    out["highest_fmr"] = max(rated, key=rated.get) if rated else None
    return out


def breakdown_lines(name: str, b: dict) -> list[str]:
    """The Markdown of a :func:`breakdown`."""
    lines = ["", f"{name} by group, at one global threshold {b['threshold']:.4f} (FAR {b['far']:g} over all "
                 f"{b['impostors']:,} impostor pairs); highest false match rate: {b['highest_fmr']}", "",
             "| group | pairs | genuine | impostors | accuracy (%) | TAR (%) | FMR (%) | own threshold at FAR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g, r in b["groups"].items():
        own = "—" if r["own_threshold"] is None else f"{r['own_threshold']:.4f}"
        lines.append(f"| {g} | {r['pairs']} | {r['genuine']} | {r['impostors']} | {pct(r.get('accuracy'))} | "
                     f"{pct(r['tar'])} | {pct(r['fmr'])} | {own} |")
    return lines


def read_image_groups(path: str) -> dict[str, str]:
    """A ``groups`` CSV: ``image,group`` lines (a header line whose first field is 'image' is skipped); image paths
    absolute or relative to the CSV's directory, normalised."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (a groups CSV: 'image,group' lines)")
    base, out = os.path.dirname(path), {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [x.strip() for x in row]
            if not any(row) or (lineno == 1 and row[0].lower() == "image"):
                continue
            if len(row) != 2 or not row[1]:
                raise DataError(f"{path}:{lineno}: expected 'image,group', got {','.join(row)!r}")
            out[os.path.normpath(os.path.join(base, row[0]))] = row[1]
    if not out:
        raise DataError(f"{path}: no 'image,group' lines")
    return out


def pair_groups_of(image_paths: list[str], pairs: np.ndarray, groups: dict[str, str], source: str) -> np.ndarray:
    """The group of each pair: its images' group when they share one, else ``mixed``; every image must be listed."""
    per_image = []
    for p in image_paths:
        g = groups.get(os.path.normpath(p))
        if g is None:
            raise DataError(f"{source}: {p} has no group (every image of the benchmark must be listed)")
        per_image.append(g)
    per_image = np.array(per_image, dtype=object)
    a, b = per_image[pairs[:, 0]], per_image[pairs[:, 1]]
    return np.where(a == b, a, MIXED).astype(str)
