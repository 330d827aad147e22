"""Results per group of people: RFW (four racial groups, each an LFW-style protocol) and BFW (subgroup attributes of
each pair, scored with the breakdown of :mod:`frtrain.evaluation.group_breakdown` at one global threshold).

RFW: per group the 10-fold accuracy as for LFW; then the mean, the standard deviation across groups and the skewed
error ratio max(error) / min(error).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field

import numpy as np

from frtrain.errors import DataError
from frtrain.evaluation import metrics
from frtrain.evaluation.benchmarks import file_pair_benchmark
from frtrain.evaluation.group_breakdown import MIXED
from frtrain.evaluation.results import WithoutPairs, pct

# -- RFW ---------------------------------------------------------------------------------------------------------
RFW_GROUPS = ("African", "Asian", "Caucasian", "Indian")


def read_rfw_pairs(path: str) -> tuple[list[tuple[str, int, str, int, bool]], np.ndarray]:
    """RFW's ``<Group>_pairs.txt``: LFW's line format ('name n1 n2' same, 'name1 n1 name2 n2' different), with or
    without LFW's header line; folds: LFW's sets with a header, else 10 consecutive equal chunks."""
    from frtrain.data.lfw_pairs import read_lfw_pairs

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (RFW's pairs list)")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if lines and len(lines[0].split()) == 2 and all(x.isdigit() for x in lines[0].split()):
        pairs, _, _ = read_lfw_pairs(path)
        return [p[:5] for p in pairs], np.array([p[5] - 1 for p in pairs], np.int64)
    out = []
    for lineno, line in enumerate(lines, 1):
        f = line.split()
        try:
            if len(f) == 3:
                out.append((f[0], int(f[1]), f[0], int(f[2]), True))
                continue
            if len(f) == 4:
                out.append((f[0], int(f[1]), f[2], int(f[3]), False))
                continue
        except ValueError:
            pass
        raise DataError(f"{path}:{lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {line!r}")
    if len(out) < 10:
        raise DataError(f"{path}: {len(out)} pairs cannot be split into 10 folds")
    return out, metrics.kfold_ids(len(out), 10)


@dataclass
class GroupedResult(WithoutPairs):
    """RFW's result: each group's 10-fold accuracy; ``accuracy`` (the headline) is their mean."""

    name: str
    groups: dict  # group -> {"accuracy", "accuracy_std", "pairs", "auc"}
    options: dict

    caption = ("Per-group protocols (RFW): each group's 10-fold accuracy (insightface's protocol, as LFW) with its 95% "
               "interval (cluster bootstrap over the group's people); the mean, the standard deviation across groups "
               "and the skewed error ratio max(error)/min(error).")

    @property
    def accuracy(self) -> float:
        return float(np.mean([g["accuracy"] for g in self.groups.values()]))

    @property
    def std_across_groups(self) -> float:
        return float(np.std([g["accuracy"] for g in self.groups.values()]))

    @property
    def skewed_error_ratio(self) -> float | None:
        errors = [1.0 - g["accuracy"] for g in self.groups.values()]
        return max(errors) / min(errors) if min(errors) > 0 else None

    def headline(self) -> str:
        ser = self.skewed_error_ratio
        return (f"mean accuracy {pct(self.accuracy)}% over {len(self.groups)} groups (std {pct(self.std_across_groups)}, "
                f"SER {'—' if ser is None else f'{ser:.2f}'})")

    def scalars(self) -> dict[str, float]:
        out = {f"{g}/accuracy": r["accuracy"] for g, r in self.groups.items()}
        out.update(accuracy=self.accuracy, std_across_groups=self.std_across_groups)
        if self.skewed_error_ratio is not None:
            out["skewed_error_ratio"] = self.skewed_error_ratio
        return out

    def table(self) -> dict[str, str]:
        row = {"benchmark": self.name}
        row.update({g: pct(r["accuracy"]) + (f" [{pct(r['interval']['low'])}, {pct(r['interval']['high'])}]"
                                             if r.get("interval") else "") for g, r in self.groups.items()})
        ser = self.skewed_error_ratio
        row.update({"mean (%)": pct(self.accuracy), "std (%)": pct(self.std_across_groups),
                    "SER": "—" if ser is None else f"{ser:.2f}", "time (s)": f"{self.seconds:.1f}"})
        return row

    def details(self) -> list[str]:
        return ["", f"{self.name}: " + "; ".join(f"{k} {v}" for k, v in self.options.items())]

    def to_dict(self, with_roc: bool = False) -> dict:
        return dict(super().to_dict(with_roc), std_across_groups=self.std_across_groups,
                    skewed_error_ratio=self.skewed_error_ratio)


@dataclass
class GroupedPairBenchmark:
    """Several pair protocols scored alike (RFW's groups), one result."""

    name: str
    parts: dict  # group -> PairBenchmark
    options: dict = field(default_factory=dict)

    def score(self, embedder) -> GroupedResult:
        start = time.perf_counter()
        rows, notes = {}, []
        for g, bench in self.parts.items():
            r = bench.score(embedder)
            rows[g] = {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std, "pairs": r.num_pairs, "auc": r.auc,
                       "interval": r.interval.to_dict() if r.interval else None}
            notes += [f"{g}: {n}" for n in r.notes]
        options = dict(self.options, flip=embedder.flip, thresholds=embedder.thresholds)
        return GroupedResult(self.name, rows, options, seconds=time.perf_counter() - start, notes=notes)


def rfw_benchmark(root: str, name: str = "rfw", groups=RFW_GROUPS, skip_missing: bool = False) -> GroupedPairBenchmark:
    """RFW as released: ``<root>/test/data/<Group>/<name>/<name>_<n:04d>.jpg`` and
    ``<root>/test/txts/<Group>/<Group>_pairs.txt`` (``test/`` may be the root itself)."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    test = os.path.join(root, "test") if os.path.isdir(os.path.join(root, "test")) else root
    parts = {}
    for g in groups:
        pairs_file = os.path.join(test, "txts", g, f"{g}_pairs.txt")
        pairs, folds = read_rfw_pairs(pairs_file)
        images = os.path.join(test, "data", g)
        if not os.path.isdir(images):
            raise DataError(f"{images}: no such directory (RFW's images of {g})")

        def path(person, n):
            return os.path.join(images, person, f"{person}_{n:04d}.jpg")

        parts[g] = file_pair_benchmark(
            f"{name}/{g}", pairs_file, [(path(a, i), path(b, j)) for a, i, b, j, _ in pairs],
            [p[4] for p in pairs], folds.tolist(), [f"{pairs_file}:{k + 1}" for k in range(len(pairs))],
            skip_missing=skip_missing)
    return GroupedPairBenchmark(name, parts, {"groups": ", ".join(groups), "folds": "10 per group"})


# -- BFW ---------------------------------------------------------------------------------------------------------
def bfw_benchmark(csv_path: str, root: str | None = None, name: str = "bfw", far: float = 1e-3,
                  skip_missing: bool = False):
    """BFW's pair table (``bfw-v*.csv``): columns ``p1, p2, label, fold, att1, att2`` (others ignored); images under
    ``root`` (default: the CSV's directory). Scored as a pair benchmark (10-fold accuracy on BFW's folds) with the
    breakdown by subgroup at one global threshold at ``far``."""
    csv_path = os.path.abspath(os.path.expanduser(str(csv_path)))
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: no such file (BFW's pair table)")
    base = os.path.abspath(os.path.expanduser(str(root))) if root else os.path.dirname(csv_path)
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    need = ("p1", "p2", "label", "fold", "att1", "att2")
    if not rows or any(c not in rows[0] for c in need):
        raise DataError(f"{csv_path}: expected a header with {', '.join(need)}")
    file_pairs, same, folds, groups, where = [], [], [], [], []
    fold_of: dict[str, int] = {}
    for lineno, r in enumerate(rows, 2):
        if r["label"] not in ("0", "1"):
            raise DataError(f"{csv_path}:{lineno}: label {r['label']!r}, expected 0 or 1")
        file_pairs.append((os.path.join(base, r["p1"]), os.path.join(base, r["p2"])))
        same.append(r["label"] == "1")
        folds.append(fold_of.setdefault(r["fold"], len(fold_of)))
        groups.append(r["att1"] if r["att1"] == r["att2"] else MIXED)
        where.append(f"{csv_path}:{lineno}")
    bench = file_pair_benchmark(name, csv_path, file_pairs, same, folds, where, skip_missing=skip_missing)
    kept = np.array([os.path.isfile(a) and os.path.isfile(b) for a, b in file_pairs]) if skip_missing else None
    bench.pair_groups = np.array(groups)[kept] if kept is not None else np.array(groups)
    bench.groups_far = float(far)
    return bench
