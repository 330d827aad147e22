"""Comparing heads trained on one recipe: the runs of a grid read back, each head's accuracy with its interval over
seeds, and the paired differences between heads with bootstrap intervals (what frtrain-compare reports; the grid
itself is run by :mod:`frtrain.compare`; the Markdown and the plots are :mod:`frtrain.evaluation.comparison_report`).

Inputs are per-pair outcomes (``pairs/<benchmark>.npz`` of a run): for one model (a head at a seed), each pair's
``score``, ``issame``, the identity clusters of its two sides (``cluster_a``, ``cluster_b``) and, for pair protocols,
``correct`` (classified correctly at its fold's threshold). Two heads are compared on the same pairs and seeds. The
paired difference is resampled over seeds and over identity clusters (the cluster bootstrap of
:mod:`frtrain.evaluation.intervals`: a pair is kept with its people's multiplicities), so pairs that share people are
not counted as independent; pair protocols compare accuracy, template protocols (IJB) compare TAR@FAR=1e-4 by
insightface's rule, recomputed on every resample. Each difference comes with the smallest difference these seeds and
pairs can detect at 80% power. TAR at FAR per head is the strict rule (:mod:`frtrain.evaluation.metrics`), where
every split has at least 1/FAR impostor pairs, with an interval over seeds that stays within [0, 1]
(:func:`proportion_ci`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frtrain.errors import DataError
from frtrain.evaluation import metrics
from frtrain.evaluation.paired_stats import mean_ci, paired_bootstrap, paired_tar_bootstrap, proportion_ci
from frtrain.evaluation.provenance import runs_provenance
from frtrain.safe_files import read_json, read_npz, read_yaml

#: config keys that legitimately differ between the runs of one split
PER_RUN_KEYS = ("head", "seed", "output_dir", "trainer.resume")


@dataclass
class Run:
    path: Path
    head: str
    seed: int
    split: str
    config: dict
    results: dict
    _pairs: dict = field(default_factory=dict, repr=False, compare=False)  # benchmark -> arrays, read once

    def pairs(self, benchmark: str) -> dict | None:
        """Each pair's ``issame``, ``score``, (for pair protocols) ``correct``, and ``fold``, ``cluster_a``,
        ``cluster_b`` where the run wrote them, at the final evaluation; None if the run has none."""
        if benchmark in self._pairs:
            return self._pairs[benchmark]
        f = self.path / "pairs" / f"{benchmark}.npz"
        if not f.is_file():
            return None
        arrays = read_npz(f)
        missing = [k for k in ("issame", "score") if k not in arrays]
        if missing:
            raise DataError(f"{f}: has no {missing[0]!r} array (each pair's outcome, as frtrain-train writes it)")
        n = len(arrays["issame"])
        for key, value in arrays.items():
            if value.ndim != 1 or len(value) != n:
                raise DataError(f"{f}: array {key!r} has shape {value.shape}, expected ({n},) like 'issame'")
        arrays["issame"] = arrays["issame"].astype(bool)
        if "correct" in arrays:
            arrays["correct"] = arrays["correct"].astype(bool)
        for key in ("cluster_a", "cluster_b"):
            if key in arrays and (arrays[key].dtype.kind not in "iu" or (arrays[key] < 0).any()):
                raise DataError(f"{f}: array {key!r} must hold non-negative integers (identity clusters)")
        self._pairs[benchmark] = arrays
        return arrays


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def read_run(path: Path) -> Run:
    """A finished run directory: its cell (compare_cell.json, else its Hydra overrides), config and results."""
    results = checked_results(path / "results.json")
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise DataError(f"{path}: no config.yaml (not a frtrain-train run directory)")
    config = read_yaml(config_file, "run config")
    if not isinstance(config, dict) or not isinstance(config.get("seed", 0), int) or \
            not isinstance(config.get("head", {}), dict):
        raise DataError(f"{config_file}: is not a frtrain-train config (a mapping with an integer seed and a head)")
    cell_file = path / "compare_cell.json"
    if cell_file.is_file():
        cell = read_json(cell_file, "comparison cell")
        if not isinstance(cell.get("head"), str) or not isinstance(cell.get("split"), list) or \
                not all(isinstance(kv, list) and len(kv) == 2 for kv in cell["split"]):
            raise DataError(f"{cell_file}: expected {{\"head\": <name>, \"split\": [[key, value], ...]}}")
        head, split = cell["head"], ", ".join(f"{k}={v}" for k, v in cell["split"]) or "-"
    else:
        overrides_file = path / ".hydra" / "overrides.yaml"
        overrides = read_yaml(overrides_file, "override list") if overrides_file.is_file() else []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise DataError(f"{overrides_file}: expected a list of overrides")
        head = next((o.split("=", 1)[1] for o in overrides if o.startswith("head=")),
                    str(config.get("head", {}).get("_target_", "?")).rsplit(".", 1)[-1])
        split = ", ".join(o for o in overrides if o.startswith(("protocol=", "experiment="))) or "-"
    return Run(path, head, int(config.get("seed", 0)), split, config, results)


def checked_results(path: Path) -> dict:
    """A run's ``results.json``, with the fields the comparison reads checked (types, not values)."""
    results = read_json(path, "run's results")
    final, history_ = results.get("final", {}), results.get("history", {})
    ok = isinstance(final, dict) and all(isinstance(v, dict) for v in final.values()) and \
        isinstance(results.get("train_seconds", 0), (int, float)) and isinstance(history_, dict) and \
        isinstance(history_.get("eval", []), list) and all(
            isinstance(e, dict) and isinstance(e.get("step"), int) and isinstance(e.get("accuracy"), (int, float))
            for e in history_.get("eval", []))
    if not ok:
        raise DataError(f"{path}: is not a frtrain-train results.json (final scores by benchmark, train_seconds, "
                        "history.eval entries with step and accuracy)")
    return results


def find_runs(directories: list[str]) -> list[Run]:
    runs = []
    for d in directories:
        root = Path(d)
        if not root.exists():
            raise DataError(f"{root}: no such directory")
        found = sorted(p.parent for p in root.rglob("results.json"))
        if not found:
            raise DataError(f"{root}: no finished run (no results.json below it)")
        runs += [read_run(p) for p in found]
    return runs


def recipe_differences(runs: list[Run]) -> list[str]:
    """Config keys, other than the head, the seed and the output paths, that differ between runs of one split."""
    notes = []
    for split in sorted({r.split for r in runs}):
        group = [r for r in runs if r.split == split]
        flat = [{k: v for k, v in _flatten(r.config).items() if not k.startswith(PER_RUN_KEYS)} for r in group]
        ref = flat[0]
        for run, f in zip(group[1:], flat[1:]):
            for key in sorted(set(ref) | set(f)):
                if ref.get(key, "<absent>") != f.get(key, "<absent>"):
                    notes.append(f"split {split}: {run.head} seed {run.seed} has {key}={f.get(key, '<absent>')!r}, "
                                 f"{group[0].head} seed {group[0].seed} has {ref.get(key, '<absent>')!r}")
    return notes


# -- the report --------------------------------------------------------------------------------------------------


def outcomes(runs: list[Run], head: str, benchmark: str, seeds: list[int], splits: list[str],
             key: str = "correct") -> np.ndarray | None:
    """(seeds, pairs) of ``key`` (``correct``, or ``score`` for template protocols) of ``head`` on ``benchmark``, the
    splits' pairs concatenated; None if incomplete."""
    rows = []
    for seed in seeds:
        parts = []
        for split in splits:
            run = next((r for r in runs if (r.head, r.seed, r.split) == (head, seed, split)), None)
            pairs = run.pairs(benchmark) if run else None
            if pairs is None or key not in pairs:
                return None
            parts.append(pairs[key])
        rows.append(np.concatenate(parts))
    return np.stack(rows)


NO_CLUSTERS = "pairs (the runs wrote no identity clusters)"


def pair_clusters(runs: list[Run], benchmark: str, splits: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels (P,), identity clusters (P, 2), unit) of the splits' pairs concatenated: each split's clusters apart
    (splits score different people); every pair its own cluster where a run did not write them."""
    labels, parts, offset, unit = [], [], 0, None
    for split in splits:
        run = next(r for r in runs if r.split == split and r.pairs(benchmark) is not None)
        pairs = run.pairs(benchmark)
        n = len(pairs["issame"])
        if "cluster_a" in pairs and "cluster_b" in pairs:
            raw = np.stack([pairs["cluster_a"], pairs["cluster_b"]], 1).astype(np.int64)
            entry = run.results.get("final", {}).get(benchmark, {})
            unit = unit or ((entry.get("interval") or {}).get("unit") if isinstance(entry, dict) else None)
        else:
            raw, unit = np.repeat(np.arange(n)[:, None], 2, 1), NO_CLUSTERS
        dense = np.unique(raw, return_inverse=True)[1].reshape(raw.shape)
        parts.append(dense + offset)
        offset += int(dense.max()) + 1
        labels.append(pairs["issame"])
    return np.concatenate(labels), np.concatenate(parts), unit or "identity clusters"


def tar_at_far(runs: list[Run], head: str, benchmark: str, seed: int, splits: list[str], far: float) -> float | None:
    """Mean over splits of the TAR at FAR (strict rule: FAR at most ``far``) of one seed; None with too few impostors."""
    values = []
    for split in splits:
        run = next(r for r in runs if (r.head, r.seed, r.split) == (head, seed, split))
        pairs = run.pairs(benchmark)
        tar = metrics.tar_at_far(pairs["issame"], pairs["score"], (far,), rule="strict", measurable_only=True)
        if tar[f"{far:g}"] is None:
            return None
        values.append(tar[f"{far:g}"])
    return float(np.mean(values))


def run_geometry(run: Run) -> dict[str, float]:
    """A run's geometry scalars: results.json's ``geometry`` (eval.analysis), else ``analysis/analysis.json`` in its
    directory (frtrain-analyze output_dir=<run>/analysis); {} without either."""
    record = run.results.get("geometry")
    if not isinstance(record, dict):
        f = run.path / "analysis" / "analysis.json"
        record = read_json(f, "analysis record") if f.is_file() else {}
    values = record.get("scalars") if isinstance(record, dict) else None
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float))}


def geometry_table(runs: list[Run], heads: list[str], seeds: list[int]) -> dict:
    """head -> scalar -> {mean, low, high, seeds}: each seed's value the mean over its splits, then the Student-t
    interval over seeds (as the accuracy)."""
    table = {}
    for h in heads:
        per_seed: dict[str, list[float]] = {}
        for seed in seeds:
            values: dict[str, list[float]] = {}
            for run in (r for r in runs if r.head == h and r.seed == seed):
                for k, v in run_geometry(run).items():
                    values.setdefault(k, []).append(v)
            for k, v in values.items():
                per_seed.setdefault(k, []).append(float(np.mean(v)))
        table[h] = {}
        for k, v in per_seed.items():
            m, lo, hi = mean_ci(v)
            table[h][k] = {"mean": m, "low": lo, "high": hi, "seeds": len(v)}
    return table if any(table.values()) else {}


def build_report(runs: list[Run], baseline: str | None = None, resamples: int = 10_000) -> dict:
    heads = list(dict.fromkeys(r.head for r in runs))
    splits = sorted({r.split for r in runs})
    benchmarks = sorted({b for r in runs for b in r.results.get("final", {})})
    report = {"heads": heads, "splits": splits, "benchmarks": {}, "runs": len(runs),
              "recipe_differences": recipe_differences(runs), "baseline": baseline, "resamples": resamples,
              "train_minutes": {h: sum(r.results.get("train_seconds", 0) for r in runs if r.head == h) / 60
                                for h in heads},
              "provenance": runs_provenance(runs)}
    all_seeds = sorted(set.intersection(*[{r.seed for r in runs if r.head == h} for h in heads]))
    report["geometry"] = geometry_table(runs, heads, all_seeds)
    for bench in benchmarks:
        seeds = sorted(set.intersection(*[{r.seed for r in runs if r.head == h} for h in heads]))
        with_pairs = [r.pairs(bench) for r in runs if r.pairs(bench) is not None]
        if not with_pairs:
            continue
        metric = "accuracy" if all("correct" in p for p in with_pairs) else "tar@far=1e-4"
        key = "correct" if metric == "accuracy" else "score"
        labels, clusters, unit = pair_clusters(runs, bench, splits)
        per_head, values = {}, {}
        for h in heads:
            c = outcomes(runs, h, bench, seeds, splits, key)
            if c is None:
                continue
            values[h] = c
            if metric == "accuracy":
                per_seed = c.mean(axis=1)
            else:  # the headline of each run: TAR@FAR=1e-4 by insightface's rule, the mean over splits
                per_seed = np.array([np.mean([next(r for r in runs if (r.head, r.seed, r.split) == (h, s, sp))
                                              .results["final"][bench]["accuracy"] for sp in splits]) for s in seeds])
            m, lo, hi = mean_ci(per_seed)
            entry = {"accuracy": m, "low": lo, "high": hi, "per_seed": dict(zip(map(str, seeds), per_seed.tolist())),
                     "pairs": int(c.shape[1]), "tar_at_far": {}}
            for far in metrics.FARS if metric == "accuracy" else ():
                tars = [tar_at_far(runs, h, bench, s, splits, far) for s in seeds]
                if all(t is not None for t in tars):
                    genuine = sum(int(r.pairs(bench)["issame"].sum()) for r in runs if r.head == h and r.seed == seeds[0])
                    tm, tlo, thi = proportion_ci(tars, genuine)
                    entry["tar_at_far"][f"{far:g}"] = {"mean": tm, "low": tlo, "high": thi}
            per_head[h] = entry
        names = list(values)
        if baseline in values:
            pairs = [(h, baseline) for h in names if h != baseline]
        else:
            pairs = list(itertools.combinations(names, 2))
        differences = []
        for a, b in pairs:
            if metric == "accuracy":
                d = paired_bootstrap(values[a], values[b], resamples=resamples, seed=0, clusters=clusters)
            else:  # every resample recomputes the TAR of both heads: fewer resamples
                d = paired_tar_bootstrap(values[a], values[b], labels, clusters, resamples=min(resamples, 1000))
            differences.append({"a": a, "b": b, "difference": d.difference, "low": d.low, "high": d.high,
                                "p_value": d.p_value, "verdict": d.verdict, "seeds": d.seeds, "pairs": d.pairs,
                                "clusters": d.clusters, "detectable": d.detectable, "resamples": d.resamples})
        report["benchmarks"][bench] = {"seeds": seeds, "heads": per_head, "differences": differences, "metric": metric,
                                       "unit": unit, "history": history(runs, bench), "roc": mean_roc(runs, bench)}
    return report


def history(runs: list[Run], benchmark: str) -> dict[str, list[list[float]]]:
    """Per head: [step, mean accuracy over the runs that evaluated at that step]."""
    out = {}
    for h in dict.fromkeys(r.head for r in runs):
        at: dict[int, list[float]] = {}
        for r in (r for r in runs if r.head == h):
            for e in r.results.get("history", {}).get("eval", []):
                if e.get("benchmark") == benchmark:
                    at.setdefault(int(e["step"]), []).append(float(e["accuracy"]))
        out[h] = [[s, float(np.mean(v))] for s, v in sorted(at.items())]
    return out


def mean_roc(runs: list[Run], benchmark: str, points: int = 60) -> dict[str, list[list[float]]]:
    """Per head: the runs' ROC curves averaged at log-spaced false accept rates, [[far, tar], ...]."""
    out = {}
    for h in dict.fromkeys(r.head for r in runs):
        curves, smallest = [], 1.0
        for r in (r for r in runs if r.head == h):
            pairs = r.pairs(benchmark)
            if pairs is None:
                continue
            curve = metrics.roc(pairs["issame"], pairs["score"], roc_points=1 << 30)
            smallest = min(smallest, 1.0 / max(1, curve.impostors))
            curves.append((curve.fpr, curve.tpr))
        if curves:
            grid = np.logspace(np.log10(smallest), 0, points)
            tars = np.mean([np.interp(grid, f, t) for f, t in curves], axis=0)
            out[h] = [[float(a), float(b)] for a, b in zip(grid, tars)]
    return out
