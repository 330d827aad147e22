"""Verification reports: the Markdown table, the JSON record and ROC plots of a set of results."""

from __future__ import annotations

import json
import os

from frtrain.evaluation.provenance import report_lines
from frtrain.evaluation.results import BenchmarkResult


def roc_figure(results: BenchmarkResult | dict[str, BenchmarkResult]):
    """A matplotlib figure of ROC curves (log false-accept axis): one result, or a dict of them overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = isinstance(results, dict)
    fig, ax = plt.subplots(figsize=(5, 4.2) if many else (4.5, 4))
    for r in (results.values() if many else [results]):
        if not r.roc.get("fpr"):  # protocols without pairs (identification) have no ROC
            continue
        label = f"{r.name}: {r.headline()}" + ("" if many or r.auc is None else f", AUC {r.auc:.4f}")
        ax.plot([max(f, 1e-6) for f in r.roc["fpr"]], r.roc["tpr"], label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6 if any(r.num_impostors >= 1e6 for r in (results.values() if many else [results]))
                else 1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_roc(results, path: str) -> None:
    """ROC curves of one result or a dict of results, in one PNG."""
    import matplotlib.pyplot as plt

    fig = roc_figure(results)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _separator(columns) -> str:
    return "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"


def report_markdown(model: str, results: dict) -> str:
    """The report: one table per kind of result (results with the same columns, under the caption that says what
    the numbers are and the rules behind them), each result's further lines, the cosine thresholds users can deploy,
    and the notes. Any :class:`~frtrain.evaluation.results.BenchmarkResult` renders here as it is."""
    lines = [f"# Evaluation of `{model}`", ""]
    groups: dict[tuple, list] = {}
    for r in results.values():
        groups.setdefault(tuple(r.table()), []).append(r)
    for columns, group in groups.items():
        lines += [group[0].caption, "", "| " + " | ".join(columns) + " |", _separator(columns)]
        lines += ["| " + " | ".join(r.table().values()) + " |" for r in group]
        lines.append("")
    for r in results.values():
        lines += r.details()
    rows = [r for r in results.values() if r.far_thresholds]
    if rows:
        lines += ["", "Cosine thresholds at a false accept rate (pairs scoring at or above it are called the same "
                      "person); `impostors` is the number of different-person pairs behind each figure:", "",
                  "| benchmark | impostors | FAR=1e-3 | FAR=1e-4 | FAR=1e-5 |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            cells = []
            for far in ("0.001", "0.0001", "1e-05"):
                t = r.far_thresholds.get(far)
                cells.append("—" if t is None else f"{t['cosine']:.4f}" + ("" if t["reliable"] else " (*)"))
            lines.append(f"| {r.name} | {r.num_impostors} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("(*) fewer than 10/FAR impostor pairs: the threshold rests on a handful of pairs and will not "
                     "hold that FAR in deployment (frtrain-export refuses it without threshold.allow_few_impostors=true).")
    notes = [f"- {r.name}: {n}" for r in results.values() for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_report(out_dir: str, model: str, results: dict[str, BenchmarkResult], record: dict,
                 roc_plots: bool = True) -> str:
    """``report.json`` (record + results with ROC), ``report.md``, ``roc_<name>.png`` and ``roc.png``;
    returns the Markdown table."""
    os.makedirs(out_dir, exist_ok=True)
    report = dict(record, model=model, results={n: r.to_dict(with_roc=True) for n, r in results.items()})
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = report_markdown(model, results)
    provenance = record.get("provenance")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(table + ("\n" + "\n".join(report_lines(provenance)) if provenance else ""))
    with_roc = {n: r for n, r in results.items() if r.roc.get("fpr")}
    if roc_plots and with_roc:
        for name, r in with_roc.items():
            plot_roc(r, os.path.join(out_dir, f"roc_{name.replace('/', '_')}.png"))
        plot_roc(with_roc, os.path.join(out_dir, "roc.png"))
    return table
