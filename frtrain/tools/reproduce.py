"""Reproduce the papers' tables: run (or collect) experiments and write reported vs reproduced.

Each EXPERIMENT is a file of configs/experiment/ whose ``paper`` block holds the table it belongs
to, the method's name and the numbers the paper reports (percent). For every experiment this script
reads ``RUNS_DIR/<experiment>/results.json`` (written by frtrain-train at the end of a run) and, with
``--run``, first trains it there (resuming if a run was interrupted). Extra arguments after ``--`` are
Hydra overrides passed to every run, e.g. the data location:

    python -m frtrain.tools.reproduce npt_casia_r50 arcface_casia_r50 --run -- paths.datasets=/data
    python -m frtrain.tools.reproduce                    # every experiment: collect what has been run

Writes a Markdown table (two columns per cell: reported, reproduced) to ``--out``, then the protocol behind every
cell, and the same data as JSON next to it. A cell of ``paper.reported`` is a benchmark's headline (``lfw``), its
TAR at a FAR by insightface's rule (``ijbc_tar_at_far_1e-4``) or a value of its result by path
(``megaface/sizes/1000000/rank1``); a reported value of null means the paper reports the cell but its number is not in
frtrain's notes ("see paper"). A reproduced cell says "not run" when the experiment has no results yet, "not scored"
when the experiment's benchmarks leave that protocol out, "not evaluated" when the run did not score it, and
"no protocol" when frtrain has no evaluator for it (IFRT, insightface's undistributed test set).
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


def bench_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else metric_of(key)[0]


def reproduced_value(final: dict, key: str):
    """Percent: the benchmark's accuracy, its TAR at the key's FAR (insightface's rule, as papers report) or the value
    at the key's path in its result."""
    if "/" in key:
        value = final
        for part in key.split("/")[1:]:
            if not isinstance(value, dict) or part not in value:
                return "not evaluated"
            value = value[part]
        return round(100.0 * value, 2) if isinstance(value, (int, float)) else "not evaluated"
    _, far = metric_of(key)
    if far is None:
        return round(100.0 * final["accuracy"], 2)
    tars = {float(k): v for k, v in (final.get("tar_at_far") or {}).items()}
    return round(100.0 * tars[far], 2) if far in tars else "not evaluated"


#: the protocol behind a cell, by the benchmark reader's name (written under each table)
PROTOCOLS = {
    "bin_benchmark": "insightface .bin, 10-fold accuracy as verification.py (flip-sum, threshold grid 0..4 step 0.01)",
    "lfw_benchmark": "LFW pairs.txt, 10-fold accuracy as verification.py",
    "ytf_benchmark": "YTF splits.txt, 5,000 video pairs in 10 splits, video = mean of frame embeddings",
    "ijb_benchmark": "IJB 1:1 templates as eval_ijbc.py, TAR at FAR by insightface's rule",
    "megaface_benchmark": "MegaFace Challenge 1 as the devkit (every probe/mate trial, ties against the mate; TAR at "
                          "FAR 1e-6, strict rule), clean=insightface",
    "rfw_benchmark": "RFW, 10-fold accuracy per group (the mean as headline)",
    "tinyface_benchmark": "TinyFace, rank-k against Gallery_Match + Gallery_Distractor",
}
NO_PROTOCOL = {"mfr_all": "no protocol: MFR-ALL is insightface's MFR test server (its images are not distributed)",
               "ifrt": "no protocol: IFRT is insightface's own test set, not distributed (rfw scores the same four "
                       "groups on another test set, not comparable)"}


def collect(name: str, runs_dir: Path, overrides: list[str]) -> dict:
    """The experiment's paper block and, if it was run, its reproduced numbers (percent)."""
    cfg = compose(name, overrides)
    if "paper" not in cfg:
        raise SystemExit(f"reproduce: configs/experiment/{name}.yaml has no 'paper' block")
    paper = cfg.paper
    nodes = dict(cfg.eval.benchmarks) if cfg.eval.get("benchmarks") else {}
    evaluated = list(nodes)
    results_file = runs_dir / name / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    reported = {str(k): v for k, v in paper.reported.items()}
    row = {"experiment": name, "table": str(paper.table), "method": str(paper.method), "reported": reported,
           "reproduced": {}, "protocols": {}, "run": str(runs_dir / name) if results else None}
    cells = list(reported) + [b for b in evaluated if b not in reported and not any(
        bench_of(k) == b for k in reported)]
    for key in cells:
        bench = bench_of(key)
        if bench in NO_PROTOCOL or bench not in evaluated:
            row["reproduced"][key] = "no protocol" if bench in NO_PROTOCOL else "not scored"
            row["protocols"][key] = NO_PROTOCOL.get(bench, "not in this experiment's benchmarks")
            continue
        target = str(nodes[bench].get("_target_", "")).rsplit(".", 1)[-1]
        row["protocols"][key] = PROTOCOLS.get(target, target)
        if results is None:
            row["reproduced"][key] = "not run"
        elif bench not in results.get("final", {}):
            row["reproduced"][key] = "not evaluated"
        else:
            row["reproduced"][key] = reproduced_value(results["final"][bench], key)
    if results:
        row["steps"], row["train_hours"] = results.get("steps"), round(results.get("train_seconds", 0) / 3600, 2)
    return row


def _cell(value, reported: bool = False) -> str:
    if value is None:
        return "see paper" if reported else "—"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    """One table per paper table: a row per cell (reported and reproduced for each method, then the protocol)."""
    lines = ["# Paper tables: reported and reproduced", "",
             "Written by `python -m frtrain.tools.reproduce`. Percent; reported = the paper's number (\"see paper\": "
             "the paper reports the cell, its number is not in frtrain's notes), reproduced = frtrain's run of the "
             "same setting; the last column names the protocol behind the cell.", ""]
    for table in dict.fromkeys(r["table"] for r in rows):
        group = [r for r in rows if r["table"] == table]
        cells = list(dict.fromkeys(b for r in group for b in r["reproduced"]))
        lines += [f"## {table}", "",
                  "| cell | " + " | ".join(f"{r['method']}: reported | reproduced" for r in group) + " | protocol |",
                  "|---|" + "---:|---:|" * len(group) + "---|"]
        for c in cells:
            values = [f"{_cell(r['reported'].get(c), c in r['reported'])} | {_cell(r['reproduced'].get(c))}"
                      for r in group]
            protocol = next(r["protocols"][c] for r in group if c in r["protocols"])
            lines.append(f"| {c} | " + " | ".join(values) + f" | {protocol} |")
        lines += ["", "Experiments: " + "; ".join(f"{r['method']} = `{r['experiment']}`" for r in group) + ".", ""]
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
