"""Comparing heads trained on one recipe: the runs of a grid read back, each head's accuracy with its interval over
seeds, and the paired differences between heads with bootstrap intervals (what frtrain-compare reports; the grid
itself is run by :mod:`frtrain.compare`; the Markdown and the plots are :mod:`frtrain.evaluation.comparison_report`).

Inputs are per-pair outcomes: for one model (a head at a seed), ``correct`` (P,) says whether each benchmark pair
was classified correctly at its fold's threshold (``pairs/<benchmark>.npz`` of a run). Two heads are compared on
the same pairs and the same seeds, so each (seed, pair) gives a paired difference in {-1, 0, 1}. TAR at FAR is the
strict rule (:mod:`frtrain.evaluation.metrics`), where every split has at least 1/FAR impostor pairs, with an
interval over seeds that stays within [0, 1] (:func:`proportion_ci`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from frtrain.errors import DataError
from frtrain.evaluation import metrics
from frtrain.safe_files import read_json, read_npz, read_yaml

#: config keys that legitimately differ between the runs of one split
PER_RUN_KEYS = ("head", "seed", "output_dir", "trainer.resume")


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``values`` (one per seed); low = high = mean for one."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


@dataclass
class PairedDifference:
    """Head A minus head B, in accuracy (fraction), from a paired bootstrap."""

    difference: float  # observed: mean over seeds and pairs of correct_A - correct_B
    low: float  # the bootstrap interval (percentiles)
    high: float
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero (x2)
    seeds: int
    pairs: int
    resamples: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "not distinguishable at this size"


def bootstrap_differences(diff: np.ndarray, resamples: int = 10_000, seed: int = 0, batch: int = 500) -> np.ndarray:
    """Resampled mean differences (``resamples``,) of a (seeds, pairs) matrix of paired differences.

    Each resample draws seeds and pairs independently with replacement and takes the mean of the differences of
    the drawn (seed, pair) grid. Draws, per batch of ``batch`` resamples: ``S = rng.integers(0, seeds, (b, seeds))``
    then ``P = rng.integers(0, pairs, (b, pairs))`` from ``numpy.random.default_rng(seed)``; resample k of the
    batch is ``diff[S[k]][:, P[k]].mean()`` (computed here through counts: (counts_S @ diff) . counts_P).
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired differences must be a non-empty (seeds, pairs) matrix, got shape {d.shape}")
    ns, np_ = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, batch):
        b = min(batch, resamples - start)
        s = rng.integers(0, ns, (b, ns))
        p = rng.integers(0, np_, (b, np_))
        seed_counts = np.bincount((s + ns * np.arange(b)[:, None]).ravel(), minlength=b * ns).reshape(b, ns)
        pair_counts = np.bincount((p + np_ * np.arange(b)[:, None]).ravel(), minlength=b * np_).reshape(b, np_)
        out[start:start + b] = ((seed_counts @ d) * pair_counts).sum(axis=1) / (ns * np_)
    return out


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """Accuracy difference A - B with its bootstrap interval and p-value.

    ``correct_a``, ``correct_b``: (seeds, pairs) booleans, row s of both from the same seed, column p the same pair.
    p-value: ``min(1, 2 * (1 + #resamples on the far side of zero) / (1 + resamples))``, the two-sided test that
    inverts the percentile interval.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same (seeds, pairs) shape, got {a.shape} and {b.shape}")
    d = a - b
    boot = bootstrap_differences(d, resamples, seed)
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    observed = float(d.mean())
    far_side = np.sum(boot <= 0) if observed > 0 else np.sum(boot >= 0) if observed < 0 else resamples
    p = min(1.0, 2.0 * (1 + far_side) / (1 + resamples))
    return PairedDifference(observed, float(low), float(high), float(p), d.shape[0], d.shape[1], resamples)


def proportion_ci(values, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed proportions (a TAR: k of ``n`` genuine pairs accepted) that stays within [0, 1]:
    the Student-t interval over seeds on the logit scale, each proportion taken as (k + 0.5) / (n + 1) there (so 0
    and 1 have a logit), mapped back. The mean is the plain mean of the values; one value gives (v, v, v)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    adjusted = (v * n + 0.5) / (n + 1.0)
    logits = np.log(adjusted / (1.0 - adjusted))
    centre, low, high = mean_ci(logits, level)
    expit = lambda x: float(1.0 / (1.0 + np.exp(-x)))  # noqa: E731
    return m, min(m, expit(low)), max(m, expit(high))


@dataclass
class Run:
    path: Path
    head: str
    seed: int
    split: str
    config: dict
    results: dict

    def pairs(self, benchmark: str) -> dict | None:
        """Each pair's ``issame``, ``score``, ``correct`` (and ``fold``) at the final evaluation, or None."""
        f = self.path / "pairs" / f"{benchmark}.npz"
        if not f.is_file():
            return None
        arrays = read_npz(f)
        missing = [k for k in ("issame", "score", "correct") if k not in arrays]
        if missing:
            raise DataError(f"{f}: has no {missing[0]!r} array (each pair's outcome, as frtrain-train writes it)")
        n = len(arrays["issame"])
        for key, value in arrays.items():
            if value.ndim != 1 or len(value) != n:
                raise DataError(f"{f}: array {key!r} has shape {value.shape}, expected ({n},) like 'issame'")
        arrays["issame"], arrays["correct"] = arrays["issame"].astype(bool), arrays["correct"].astype(bool)
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


def outcomes(runs: list[Run], head: str, benchmark: str, seeds: list[int], splits: list[str]) -> np.ndarray | None:
    """(seeds, pairs) correctness of ``head`` on ``benchmark``, the splits' pairs concatenated; None if incomplete."""
    rows = []
    for seed in seeds:
        parts = []
        for split in splits:
            run = next((r for r in runs if (r.head, r.seed, r.split) == (head, seed, split)), None)
            pairs = run.pairs(benchmark) if run else None
            if pairs is None:
                return None
            parts.append(pairs["correct"])
        rows.append(np.concatenate(parts))
    return np.stack(rows)


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


def build_report(runs: list[Run], baseline: str | None = None, resamples: int = 10_000) -> dict:
    heads = list(dict.fromkeys(r.head for r in runs))
    splits = sorted({r.split for r in runs})
    benchmarks = sorted({b for r in runs for b in r.results.get("final", {})})
    report = {"heads": heads, "splits": splits, "benchmarks": {}, "runs": len(runs),
              "recipe_differences": recipe_differences(runs), "baseline": baseline, "resamples": resamples,
              "train_minutes": {h: sum(r.results.get("train_seconds", 0) for r in runs if r.head == h) / 60
                                for h in heads}}
    for bench in benchmarks:
        seeds = sorted(set.intersection(*[{r.seed for r in runs if r.head == h} for h in heads]))
        per_head, correct = {}, {}
        for h in heads:
            c = outcomes(runs, h, bench, seeds, splits)
            if c is None:
                continue
            correct[h] = c
            acc = c.mean(axis=1)
            m, lo, hi = mean_ci(acc)
            entry = {"accuracy": m, "low": lo, "high": hi, "per_seed": dict(zip(map(str, seeds), acc.tolist())),
                     "pairs": int(c.shape[1]), "tar_at_far": {}}
            for far in metrics.FARS:
                tars = [tar_at_far(runs, h, bench, s, splits, far) for s in seeds]
                if all(t is not None for t in tars):
                    genuine = sum(int(r.pairs(bench)["issame"].sum()) for r in runs if r.head == h and r.seed == seeds[0])
                    tm, tlo, thi = proportion_ci(tars, genuine)
                    entry["tar_at_far"][f"{far:g}"] = {"mean": tm, "low": tlo, "high": thi}
            per_head[h] = entry
        names = list(correct)
        if baseline in correct:
            pairs = [(h, baseline) for h in names if h != baseline]
        else:
            pairs = list(itertools.combinations(names, 2))
        differences = []
        for a, b in pairs:
            d = paired_bootstrap(correct[a], correct[b], resamples=resamples, seed=0)
            differences.append({"a": a, "b": b, "difference": d.difference, "low": d.low, "high": d.high,
                                "p_value": d.p_value, "verdict": d.verdict, "seeds": d.seeds, "pairs": d.pairs})
        report["benchmarks"][bench] = {"seeds": seeds, "heads": per_head, "differences": differences,
                                       "history": history(runs, bench), "roc": mean_roc(runs, bench)}
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
