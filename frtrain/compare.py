"""``frtrain-compare``: one recipe trained with several heads and seeds, and which differences are real.

    frtrain-compare head=arcface,npt,unpg seeds=3 <frtrain-train overrides>        # train the grid, then report
    frtrain-compare head=arcface,cosface seeds=3 protocol=lfw_half_a,lfw_half_b paths.datasets=/data baseline=arcface
    frtrain-compare report runs/compare/<name> [more run directories] [baseline=arcface]   # report only

The grid is every value of ``head`` times every value of any other swept override (Hydra's ``key=a,b`` syntax;
``protocol=lfw_half_a,lfw_half_b`` scores two halves of a data set, a *split*) times seeds ``0 .. seeds-1``. Each
cell is one ``frtrain-train`` process (what Hydra's multirun would run) in ``<out>/runs/<head>/[<key>-<value>/]
seed-<s>``; a cell whose ``results.json`` exists is reused and an interrupted one resumes from its newest
checkpoint (``trainer.resume=auto``), so re-running the command continues the grid. ``@<head>:key=value``
applies an override to one head's runs only (``@npt:head.k=6``); a non-head key given so is a recipe difference
and the report flags it. Every cell's config is composed and checked before the first run starts.

Options (the rest goes to every run): ``seeds`` (3), ``baseline`` (a head: compare every head with it; default:
every pair), ``out`` (``runs/compare/<date>_<time>``), ``publish`` (also write the report to this Markdown
file, plots beside it; text below its ``<!-- notes: ... -->`` line is kept), ``resamples`` (10,000 bootstrap
resamples), ``jobs`` (1: runs trained at once, each pinned to its own share of this process's CPU cores, so
``threads: auto`` and ``num_workers: auto`` follow).
Cells run seed by seed (every head and split with seed 0, then seed 1, ...), so a grid stopped part-way has whole
seeds to report on.

The report (``<out>/comparison.md``, ``comparison.json``, ``accuracy_vs_step.png``, ``roc.png``), per benchmark:
accuracy as mean ± 95% confidence interval over seeds (the splits' pairs pooled: every pair scored by a model
that did not see its people), the per-seed values, TAR@FAR where every split has at least 1/FAR impostor pairs;
per pair of heads the accuracy difference with a paired bootstrap interval over pairs and seeds and a p-value
(:mod:`frtrain.evaluation.compare_stats`); the recipe (the runs' configs, which must differ only in the head and
the seed within a split: any other difference is listed).
"""

from __future__ import annotations

import itertools
import json
import re
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frtrain.cli import one_line_errors, quiet_third_party_warnings
from frtrain.errors import ConfigError, DataError, first_line
from frtrain.safe_files import read_json, read_npz, read_yaml

log = logging.getLogger("frtrain")

OPTIONS = ("seeds", "baseline", "out", "publish", "resamples", "jobs")
USAGE = ("usage: frtrain-compare head=A,B[,...] [seeds=3] [baseline=A] [out=DIR] [publish=FILE.md] [jobs=1] "
         "[@HEAD:key=value ...] [frtrain-train overrides]  |  frtrain-compare report DIR [DIR ...] [baseline=A]")
#: config keys that legitimately differ between the runs of one split
PER_RUN_KEYS = ("head", "seed", "output_dir", "trainer.resume")
FARS = (1e-2, 1e-3, 1e-4)
#: in a published file, what follows this line is the user's and survives a rewrite of the report
NOTES_MARKER = "<!-- notes: kept when frtrain-compare rewrites this file -->"


def _safe(name: str) -> str:
    """A directory name from an override: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


@dataclass
class Cell:
    """One run of the grid: a head (with its own overrides), a split (the other swept values) and a seed."""

    head: str
    seed: int
    split: tuple[tuple[str, str], ...] = ()
    head_overrides: tuple[str, ...] = ()

    @property
    def split_name(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.split) or "-"

    def directory(self, out: Path) -> Path:
        parts = [self.head] + [_safe(f"{k}-{v}") for k, v in self.split] + [f"seed-{self.seed}"]
        return out.joinpath("runs", *parts)

    def overrides(self, common: list[str]) -> list[str]:
        return common + [f"head={self.head}", *self.head_overrides, *(f"{k}={v}" for k, v in self.split),
                         f"seed={self.seed}"]


@dataclass
class Grid:
    cells: list[Cell]
    common: list[str]
    options: dict[str, str]
    command: str
    per_head: dict[str, list[str]] = field(default_factory=dict)


def parse(argv: list[str]) -> Grid:
    """The grid a command line asks for (nothing is run or composed here)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    options, per_head, rest = {}, {}, []
    for a in argv:
        key = a.split("=", 1)[0]
        if a.startswith("@"):
            head, sep, override = a[1:].partition(":")
            if not sep or "=" not in override:
                raise ConfigError(f"{a}: a per-head override is @<head>:key=value, e.g. @npt:head.k=6")
            per_head.setdefault(head, []).append(override)
        elif key in OPTIONS:
            options[key] = a.split("=", 1)[1]
        else:
            rest.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(rest)
    except HydraException as e:
        raise ConfigError(first_line(e)) from None
    heads, sweeps, common = None, [], []
    for o, text in zip(parsed, rest):
        key = o.get_key_element()
        if key in ("seed", "output_dir", "hydra.run.dir"):
            raise ConfigError(f"{key}: frtrain-compare sets it per run; use seeds=N and out=DIR")
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            if key == "head":
                heads = values
            else:
                sweeps.append((key, values))
        elif key == "head":
            heads = [o.value()]
        else:
            common.append(text)
    if not heads:
        raise ConfigError(f"no heads to compare: give head=A,B,...; {USAGE}")
    if len(set(heads)) != len(heads):
        raise ConfigError(f"head={','.join(heads)}: a head is named twice")
    unknown = sorted(set(per_head) - set(heads))
    if unknown:
        raise ConfigError(f"@{unknown[0]}:...: {unknown[0]} is not one of the compared heads ({', '.join(heads)})")
    try:
        seeds = int(options.get("seeds", 3))
    except ValueError:
        raise ConfigError(f"seeds={options['seeds']!r}: expected a number of seeds, e.g. seeds=3") from None
    if seeds < 1:
        raise ConfigError(f"seeds={seeds}: expected at least 1")
    if options.get("baseline") and options["baseline"] not in heads:
        raise ConfigError(f"baseline={options['baseline']}: not one of the compared heads ({', '.join(heads)})")
    splits = [tuple(zip([k for k, _ in sweeps], values)) for values in itertools.product(*[v for _, v in sweeps])]
    try:
        jobs = int(options.get("jobs", 1))
    except ValueError:
        raise ConfigError(f"jobs={options['jobs']!r}: expected a number of runs at once, e.g. jobs=2") from None
    from frtrain.data.loader import usable_cores

    cores = usable_cores()
    if not 1 <= jobs <= cores:
        raise ConfigError(f"jobs={jobs}: expected 1 to {cores} (the CPU cores this process may use)")
    cells = [Cell(h, s, split, tuple(per_head.get(h, []))) for s in range(seeds) for h in heads for split in splits]
    return Grid(cells, common, options, "frtrain-compare " + " ".join(argv), per_head)


def check_grid(grid: Grid) -> None:
    """Compose and check every cell's config (each distinct one once) before anything is trained."""
    from frtrain.config import check_command_line, compose, validate_train

    for cell in grid.cells:
        if cell.seed:  # the seed changes nothing a check looks at
            continue
        overrides = cell.overrides(grid.common)
        try:
            check_command_line("train", overrides)
            validate_train(compose("train", overrides))
        except ConfigError as e:
            raise ConfigError(f"run head={cell.head} {cell.split_name}: {e}") from None


def core_slots(jobs: int) -> list[set[int] | None]:
    """Disjoint CPU core sets, one per concurrent run (``None``: no pinning, for one job or no affinity API)."""
    if jobs <= 1 or not hasattr(os, "sched_setaffinity"):
        return [None] * max(1, jobs)
    cores = sorted(os.sched_getaffinity(0))
    return [set(cores[i::jobs]) for i in range(jobs)]


def run_cell(cell: Cell, grid: Grid, out: Path, cores: set[int] | None = None) -> str:
    """Train one cell unless it has finished, pinned to ``cores`` if given; returns ``reused``, ``resumed`` or
    ``trained``."""
    run_dir = cell.directory(out)
    if (run_dir / "results.json").is_file():
        return "reused"
    resumed = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*.pt"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "compare_cell.json").write_text(json.dumps(
        {"head": cell.head, "seed": cell.seed, "split": [list(kv) for kv in cell.split],
         "head_overrides": list(cell.head_overrides), "common": grid.common}, indent=1) + "\n")
    cmd = [sys.executable, "-m", "frtrain.train", *cell.overrides(grid.common), f"output_dir='{run_dir}'",
           "trainer.resume=auto", "trainer.progress=false"]
    log.info("frtrain-compare: %s", " ".join(cmd))
    with open(run_dir / "compare_stdout.log", "a") as stdout:
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        done = subprocess.run(cmd, stdout=stdout, stderr=subprocess.STDOUT, check=False, preexec_fn=pin)
    if done.returncode != 0:
        raise DataError(f"the run head={cell.head} {cell.split_name} seed={cell.seed} failed (exit {done.returncode}); "
                        f"see {run_dir / 'compare_stdout.log'} and {run_dir / 'train.log'}")
    return "resumed" if resumed else "trained"


def run_grid(grid: Grid, out: Path) -> dict[str, int]:
    """Train the grid's cells, ``jobs`` at a time; the first failure stops new runs and is raised once the
    running ones end."""
    import queue
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm import tqdm

    jobs = int(grid.options.get("jobs", 1))
    slots: queue.Queue = queue.Queue()
    for cores in core_slots(jobs):
        slots.put(cores)

    def one(cell: Cell) -> str:
        cores = slots.get()
        try:
            return run_cell(cell, grid, out, cores)
        finally:
            slots.put(cores)

    counts = {"reused": 0, "resumed": 0, "trained": 0}
    todo, running, failure = list(grid.cells), {}, None
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(todo), desc="frtrain-compare", unit="run", dynamic_ncols=True) as bar:
        while todo or running:
            while todo and len(running) < jobs and failure is None:
                cell = todo.pop(0)
                running[pool.submit(one, cell)] = cell
            bar.set_postfix_str("; ".join(f"{c.head} {c.split_name} seed={c.seed}" for c in running.values()))
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                try:
                    counts[future.result()] += 1
                except DataError as e:
                    failure = failure or e
                bar.update(1)
    if failure is not None:
        raise failure
    return counts


# -- reading runs ------------------------------------------------------------------------------------------------


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
    """Mean over splits of the TAR at FAR (strict: FAR at most ``far``) of one seed; None with too few impostors."""
    from sklearn.metrics import roc_curve

    values = []
    for split in splits:
        run = next(r for r in runs if (r.head, r.seed, r.split) == (head, seed, split))
        pairs = run.pairs(benchmark)
        impostors = int((~pairs["issame"]).sum())
        if impostors < 1 / far:
            return None
        fpr, tpr, _ = roc_curve(pairs["issame"], pairs["score"])
        values.append(float(tpr[fpr <= far].max()))
    return float(np.mean(values))


def build_report(runs: list[Run], baseline: str | None = None, resamples: int = 10_000) -> dict:
    from frtrain.evaluation.compare_stats import mean_ci, paired_bootstrap

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
            for far in FARS:
                tars = [tar_at_far(runs, h, bench, s, splits, far) for s in seeds]
                if all(t is not None for t in tars):
                    tm, tlo, thi = mean_ci(tars)
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
    from sklearn.metrics import roc_curve

    out = {}
    for h in dict.fromkeys(r.head for r in runs):
        curves, smallest = [], 1.0
        for r in (r for r in runs if r.head == h):
            pairs = r.pairs(benchmark)
            if pairs is None:
                continue
            fpr, tpr, _ = roc_curve(pairs["issame"], pairs["score"])
            smallest = min(smallest, 1.0 / max(1, int((~pairs["issame"]).sum())))
            curves.append((fpr, tpr))
        if curves:
            grid = np.logspace(np.log10(smallest), 0, points)
            tars = np.mean([np.interp(grid, f, t) for f, t in curves], axis=0)
            out[h] = [[float(a), float(b)] for a, b in zip(grid, tars)]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(report: dict, command: str, plots: dict[str, str]) -> str:
    lines = ["# Head comparison", "",
             f"Command: `{command}`", "",
             f"{report['runs']} runs: heads {', '.join(report['heads'])}; splits {', '.join(report['splits'])}. "
             "Accuracy: the fraction of pairs classified correctly at their fold's threshold, the splits' pairs "
             "pooled, as mean and 95% confidence interval (Student t) over seeds. Differences: paired bootstrap "
             f"over pairs and seeds ({report['resamples']:,} resamples), 95% interval and two-sided p-value.", ""]
    for bench, b in report["benchmarks"].items():
        fars = sorted({f for e in b["heads"].values() for f in e["tar_at_far"]}, key=float, reverse=True)
        lines += [f"## {bench}", "",
                  f"Seeds {', '.join(map(str, b['seeds']))}; {next(iter(b['heads'].values()))['pairs']:,} pairs per seed.",
                  "", "| head | accuracy (%) | 95% CI | per seed |" + "".join(f" TAR@FAR={f} (%) |" for f in fars),
                  "|---|---:|---|---|" + "---:|" * len(fars)]
        ranked = sorted(b["heads"].items(), key=lambda kv: -kv[1]["accuracy"])
        for h, e in ranked:
            seeds = ", ".join(_pct(v) for v in e["per_seed"].values())
            tars = "".join(f" {_pct(e['tar_at_far'][f]['mean'])} [{_pct(e['tar_at_far'][f]['low'])}, "
                           f"{_pct(e['tar_at_far'][f]['high'])}] |" if f in e["tar_at_far"] else " - |" for f in fars)
            lines.append(f"| {h} | {_pct(e['accuracy'])} | [{_pct(e['low'])}, {_pct(e['high'])}] | {seeds} |{tars}")
        lines += ["", "| A | B | A - B (points) | 95% CI | p | verdict |", "|---|---|---:|---|---:|---|"]
        for d in sorted(b["differences"], key=lambda d: -abs(d["difference"])):
            verdict = {"A better": f"{d['a']} better", "B better": f"{d['b']} better"}.get(d["verdict"], d["verdict"])
            lines.append(f"| {d['a']} | {d['b']} | {100 * d['difference']:+.2f} | [{100 * d['low']:+.2f}, "
                         f"{100 * d['high']:+.2f}] | {d['p_value']:.3g} | {verdict} |")
        lines.append("")
    for title, name in plots.items():
        lines += [f"![{title}]({name})", ""]
    lines += ["## Recipe", ""]
    if report["recipe_differences"]:
        lines += ["**The runs differ in more than the head and the seed:**", ""]
        lines += [f"- {n}" for n in report["recipe_differences"]] + [""]
    else:
        lines += ["Within each split, the runs' composed configs (config.yaml) differ only in the head and the seed.", ""]
    lines += ["Training time (minutes, all seeds and splits): "
              + ", ".join(f"{h} {m:.1f}" for h, m in report["train_minutes"].items()), ""]
    return "\n".join(lines)


def plot(report: dict, directory: Path, stem: str = "") -> dict[str, str]:
    """accuracy_vs_step.png and roc.png (one panel per benchmark); returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(report["benchmarks"])
    if not benches:
        return {}
    files = {}
    for kind, title in (("history", "accuracy against training step"), ("roc", "ROC (mean of the runs)")):
        fig, axes = plt.subplots(1, len(benches), figsize=(6.5 * len(benches), 4.5), squeeze=False)
        for ax, bench in zip(axes[0], benches):
            for head, points in report["benchmarks"][bench][kind].items():
                if points:
                    x, y = zip(*points)
                    ax.plot(x, [100 * v for v in y], marker="." if kind == "history" else None, label=head)
            if kind == "roc":
                ax.set_xscale("log")
                ax.set_xlabel("false accept rate")
                ax.set_ylabel("true accept rate (%)")
            else:
                ax.set_xlabel("training step")
                ax.set_ylabel("accuracy (%), mean of runs")
            ax.set_title(bench)
            ax.grid(alpha=0.3)
            ax.legend(ncol=2, fontsize=7)
        fig.tight_layout()
        name = f"{stem}{'accuracy_vs_step' if kind == 'history' else 'roc'}.png"
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        files[title] = name
    return files


def write_report(runs: list[Run], out: Path, command: str, baseline: str | None, resamples: int,
                 publish: str | None = None) -> dict:
    report = build_report(runs, baseline, resamples)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(report, out)
    (out / "comparison.md").write_text(markdown(report, command, plots))
    (out / "comparison.json").write_text(json.dumps({"command": command, **report}, indent=1) + "\n")
    if publish:
        target = Path(publish)
        target.parent.mkdir(parents=True, exist_ok=True)
        published = plot(report, target.parent, f"{target.stem}_")
        old = target.read_text() if target.is_file() else ""
        notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else NOTES_MARKER + "\n"
        target.write_text(markdown(report, command, published).rstrip("\n") + "\n\n" + notes)
    return report


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_warnings("frtrain-compare")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    with one_line_errors("frtrain-compare"):
        if argv and argv[0] == "report":
            dirs = [a for a in argv[1:] if "=" not in a]
            opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
            bad = sorted(set(opts) - {"baseline", "out", "publish", "resamples"})
            if bad or not dirs:
                raise ConfigError(f"{bad[0] + ': not an option of frtrain-compare report; ' if bad else ''}{USAGE}")
            out = Path(opts.get("out", dirs[0]))
            runs = find_runs(dirs)
            write_report(runs, out, "frtrain-compare " + " ".join(argv), opts.get("baseline"),
                         int(opts.get("resamples", 10_000)), opts.get("publish"))
            print(f"frtrain-compare: {len(runs)} runs; report in {out / 'comparison.md'}", flush=True)
            return 0
        grid = parse(argv)
        out = Path(grid.options.get("out") or os.path.join("runs", "compare", time.strftime("%Y-%m-%d_%H-%M-%S")))
        check_grid(grid)
        started = time.time()
        counts = run_grid(grid, out)
        wall = time.time() - started
        runs = [read_run(c.directory(out)) for c in grid.cells]
        report = write_report(runs, out, grid.command, grid.options.get("baseline"),
                              int(grid.options.get("resamples", 10_000)), grid.options.get("publish"))
        (out / "wall_time.json").write_text(json.dumps({"seconds": wall, **counts}) + "\n")
        print(f"frtrain-compare: {len(grid.cells)} runs ({counts['trained']} trained, {counts['resumed']} resumed, "
              f"{counts['reused']} reused) in {wall / 60:.1f} min; report in {out / 'comparison.md'}", flush=True)
        for note in report["recipe_differences"][:5]:
            print(f"frtrain-compare: recipe difference: {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
