"""``frtrain-compare``: one recipe trained with several heads and seeds, and which differences are real.

    frtrain-compare head=arcface,npt,unpg seeds=3 <frtrain-train overrides>        # train the grid, then report
    frtrain-compare head=arcface,cosface seeds=3 protocol=lfw_half_a,lfw_half_b paths.datasets=/data baseline=arcface
    frtrain-compare report runs/compare/<name> [more run directories] [baseline=arcface]   # report only

A report-only rewrite keeps the grid's command line (from the earlier comparison.json) and wall time
(wall_time.json), and adds its own command line.

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
that did not see its people), the per-seed values, TAR@FAR (strict rule) where every split has at least 1/FAR
impostor pairs, with an interval within [0, 1]; per pair of heads the accuracy difference with a paired bootstrap
interval over pairs and seeds and a p-value (:mod:`frtrain.evaluation.comparison`); the recipe (the runs' configs,
which must differ only in the head and the seed within a split: any other difference is listed). The reported wall
time includes the checks of every cell's config before the first run.
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


from frtrain.cli import HELP_FLAGS, command_help, one_line_errors, quiet_third_party_warnings
from frtrain.errors import ConfigError, DataError, first_line
from frtrain.evaluation.comparison import find_runs, read_run
from frtrain.evaluation.comparison_report import write_report

log = logging.getLogger("frtrain")

OPTIONS = ("seeds", "baseline", "out", "publish", "resamples", "jobs")
USAGE = ("usage: frtrain-compare head=A,B[,...] [seeds=3] [baseline=A] [out=DIR] [publish=FILE.md] [jobs=1] "
         "[@HEAD:key=value ...] [frtrain-train overrides]  |  frtrain-compare report DIR [DIR ...] [baseline=A]")


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
    from frtrain.runtime import usable_cores

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


def grid_command(out: Path) -> str | None:
    """The grid command line an earlier report in ``out`` recorded (comparison.json), so that a report rewritten by
    ``frtrain-compare report`` still says what trained the runs; None without one."""
    f = out / "comparison.json"
    try:
        command = json.loads(f.read_text()).get("command") if f.is_file() else None
    except (json.JSONDecodeError, AttributeError, OSError):
        return None
    return command if isinstance(command, str) and not command.startswith("frtrain-compare report") else None


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_warnings("frtrain-compare")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        print(command_help("frtrain-compare", __doc__ + "\nThe other key=value options are frtrain-train's: "
                                                        "frtrain-train --help lists them."))
        return 0
    with one_line_errors("frtrain-compare"):
        if argv and argv[0] == "report":
            dirs = [a for a in argv[1:] if "=" not in a]
            opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
            bad = sorted(set(opts) - {"baseline", "out", "publish", "resamples"})
            if bad or not dirs:
                raise ConfigError(f"{bad[0] + ': not an option of frtrain-compare report; ' if bad else ''}{USAGE}")
            out = Path(opts.get("out", dirs[0]))
            runs = find_runs(dirs)
            this = "frtrain-compare " + " ".join(argv)
            write_report(runs, out, grid_command(out) or this, opts.get("baseline"),
                         int(opts.get("resamples", 10_000)), opts.get("publish"), report_command=this)
            print(f"frtrain-compare: {len(runs)} runs; report in {out / 'comparison.md'}", flush=True)
            return 0
        grid = parse(argv)
        out = Path(grid.options.get("out") or os.path.join("runs", "compare", time.strftime("%Y-%m-%d_%H-%M-%S")))
        started = time.time()
        check_grid(grid)
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
