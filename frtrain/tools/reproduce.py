"""Reproduce the papers' tables: run (or collect) experiments and write reported vs reproduced.

Each EXPERIMENT is a file of configs/experiment/ whose ``paper`` block holds the table it belongs
to, the method's name and the numbers the paper reports (percent). For every experiment this script
reads ``RUNS_DIR/<experiment>/results.json`` (written by frtrain-train at the end of a run) and, with
``--run``, first trains it there (resuming if a run was interrupted). Extra arguments after ``--`` are
Hydra overrides passed to every run, e.g. the data location:

    python -m frtrain.tools.reproduce npt_casia_r50 arcface_casia_r50 --run -- paths.datasets=/data
    python -m frtrain.tools.reproduce                    # every experiment: collect what has been run

Writes a Markdown table (two columns per benchmark: reported, reproduced) to ``--out`` and the same
data as JSON next to it. A reproduced cell says "not run" when the experiment has no results yet,
"not evaluated" when the run did not score that benchmark, and "no protocol" when frtrain has no
evaluator for it (IJB-C).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

#: the experiment files, as installed (configs/experiment in the repository)
EXPERIMENTS = importlib.resources.files("frtrain.configs") / "experiment"


def available() -> list[str]:
    return sorted(p.name[:-5] for p in EXPERIMENTS.iterdir() if p.name.endswith(".yaml"))


def compose(name: str, overrides: list[str]):
    from frtrain.config import compose as compose_config

    return compose_config("train", [f"experiment={name}", *overrides])


def run_experiment(name: str, out_dir: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "frtrain.train", f"experiment={name}", f"output_dir={out_dir}",
           "trainer.resume=auto", *overrides]
    print("reproduce:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"reproduce: experiment {name} failed (exit {done.returncode}); its log is in {out_dir}")


def metric_of(key: str) -> tuple[str, float | None]:
    """A reported key -> (benchmark, FAR): ``ijbc_tar_at_far_1e-4`` -> ("ijbc", 1e-4), ``lfw`` -> ("lfw", None)."""
    bench, sep, far = key.partition("_tar_at_far_")
    return (bench, float(far)) if sep else (key, None)


def reproduced_value(final: dict, far: float | None):
    """Percent: the benchmark's accuracy, or its TAR at ``far`` (insightface's rule, as papers report)."""
    if far is None:
        return round(100.0 * final["accuracy"], 2)
    tars = {float(k): v for k, v in (final.get("tar_at_far") or {}).items()}
    return round(100.0 * tars[far], 2) if far in tars else "not evaluated"


def collect(name: str, runs_dir: Path, overrides: list[str]) -> dict:
    """The experiment's paper block and, if it was run, its reproduced numbers (percent)."""
    cfg = compose(name, overrides)
    if "paper" not in cfg:
        raise SystemExit(f"reproduce: configs/experiment/{name}.yaml has no 'paper' block")
    paper = cfg.paper
    evaluated = list(cfg.eval.benchmarks) if cfg.eval.get("benchmarks") else []
    results_file = runs_dir / name / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    reported = {str(k): v for k, v in paper.reported.items()}
    row = {"experiment": name, "table": str(paper.table), "method": str(paper.method), "reported": reported,
           "reproduced": {}, "run": str(runs_dir / name) if results else None}
    cells = list(reported) + [b for b in evaluated if b not in reported and not any(
        metric_of(k)[0] == b for k in reported)]
    for key in cells:
        bench, far = metric_of(key)
        if bench not in evaluated:
            row["reproduced"][key] = "no protocol"
        elif results is None:
            row["reproduced"][key] = "not run"
        elif bench not in results.get("final", {}):
            row["reproduced"][key] = "not evaluated"
        else:
            row["reproduced"][key] = reproduced_value(results["final"][bench], far)
    if results:
        row["steps"], row["train_hours"] = results.get("steps"), round(results.get("train_seconds", 0) / 3600, 2)
    return row


def _cell(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["# Paper tables: reported and reproduced", "",
             "Written by `python -m frtrain.tools.reproduce`. Accuracy in percent (IJB-C: TAR at FAR = 1e-4); "
             "reported = the paper's number, reproduced = frtrain's run of the same setting.", ""]
    for table in dict.fromkeys(r["table"] for r in rows):
        group = [r for r in rows if r["table"] == table]
        benches = list(dict.fromkeys(b for r in group for b in r["reproduced"]))
        lines += [f"## {table}", "",
                  "| method | experiment | " + " | ".join(f"{b} reported | {b} reproduced" for b in benches) + " |",
                  "|---|---|" + "---:|---:|" * len(benches)]
        for r in group:
            cells = [f"{_cell(r['reported'].get(b))} | {_cell(r['reproduced'].get(b))}" for b in benches]
            lines.append(f"| {r['method']} | `{r['experiment']}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", help=f"default: all of {EXPERIMENTS}")
    parser.add_argument("--run", action="store_true", help="train the experiments that have no results yet")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "experiments")
    parser.add_argument("--out", type=Path, default=Path("docs") / "reproduction.md")
    args = parser.parse_args(argv)

    names = args.experiments or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise SystemExit(f"reproduce: no experiment {', '.join(unknown)} in configs/experiment; "
                         f"there are: {', '.join(available())}")
    for name in names:
        if args.run and not (args.runs_dir / name / "results.json").is_file():
            run_experiment(name, args.runs_dir / name, overrides)
    rows = [collect(name, args.runs_dir, overrides) for name in names]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
