"""Verification reports: the Markdown table, the JSON record and ROC plots of a set of results."""

from __future__ import annotations

import json
import os

from frtrain.evaluation.metrics import VerificationResult

TEMPLATE_FARS = ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1")


def roc_figure(results: VerificationResult | dict[str, VerificationResult]):
    """A matplotlib figure of ROC curves (log false-accept axis): one result, or a dict of them overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = isinstance(results, dict)
    fig, ax = plt.subplots(figsize=(5, 4.2) if many else (4.5, 4))
    for r in (results.values() if many else [results]):
        label = f"{r.name}: {r.headline()}" + ("" if many else f", AUC {r.auc:.4f}")
        ax.plot([max(f, 1e-6) for f in r.roc["fpr"]], r.roc["tpr"], label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6 if any(getattr(r, "num_impostors", 0) >= 1e6 for r in (results.values() if many else [results]))
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


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def report_markdown(model: str, results: dict) -> str:
    """The report's tables: pair benchmarks, template benchmarks (IJB), the thresholds users can deploy, notes."""
    pairs = {n: r for n, r in results.items() if isinstance(r, VerificationResult)}
    templates = {n: r for n, r in results.items() if not isinstance(r, VerificationResult)}
    lines = [f"# Verification of `{model}`", ""]
    if pairs:
        lines += ["| benchmark | pairs | accuracy (%) | ± std | TAR@FAR=1e-3 | TAR@FAR=1e-4 | AUC | EER (%) | threshold | "
                  "XNorm | skipped | time (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in pairs.values():
        lines.append(f"| {r.name} | {r.num_pairs} | {100 * r.accuracy:.2f} | {100 * r.accuracy_std:.2f} | "
                     f"{_pct(r.tar_at_far.get('0.001'))} | {_pct(r.tar_at_far.get('0.0001'))} | {r.auc:.4f} | "
                     f"{100 * r.eer:.2f} | {r.threshold:.3f} | {'—' if r.xnorm is None else f'{r.xnorm:.2f}'} | "
                     f"{r.skipped_pairs} | {r.seconds:.1f} |")
    if templates:
        lines += ["", "Template benchmarks (1:1): TAR (%) at FAR by insightface's rule (the ROC point whose FPR is nearest "
                      "the target: what papers report) / by the strict rule (the best TPR with FPR at most the target).",
                  "", "| benchmark | templates | pairs | " + " | ".join(f"FAR={f}" for f in TEMPLATE_FARS)
                  + " | AUC | time (s) |", "|---|---:|---:|" + "---:|" * (len(TEMPLATE_FARS) + 2)]
        for r in templates.values():
            cells = [f"{_pct(r.tar_at_far.get(f))} / {_pct(r.tar_at_far_strict.get(f))}" for f in TEMPLATE_FARS]
            lines.append(f"| {r.name} | {r.num_templates} | {r.num_pairs} | " + " | ".join(cells)
                         + f" | {r.auc:.4f} | {r.seconds:.1f} |")
        for r in templates.values():
            lines.append("")
            lines.append(f"{r.name} settings: " + "; ".join(f"{k} {v}" for k, v in r.settings.items()))
            if r.identification:
                lines += ["", f"{r.name} 1:N identification (%):", "",
                          "| gallery | top-1 | top-5 | top-10 | TPIR@FPIR=1e-2 | TPIR@FPIR=1e-1 |", "|---|---:|---:|---:|---:|---:|"]
                for g, rates in r.identification.items():
                    lines.append(f"| {g} | " + " | ".join(_pct(rates.get(k)) for k in
                                                          ("top1", "top5", "top10", "tpir@fpir=0.01", "tpir@fpir=0.1")) + " |")
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
                     "hold that FAR in deployment.")
    notes = [f"- {r.name}: {n}" for r in results.values() for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_report(out_dir: str, model: str, results: dict[str, VerificationResult], record: dict,
                 roc_plots: bool = True) -> str:
    """``report.json`` (record + results with ROC), ``report.md``, ``roc_<name>.png`` and ``roc.png``;
    returns the Markdown table."""
    os.makedirs(out_dir, exist_ok=True)
    report = dict(record, model=model, results={n: r.to_dict(with_roc=True) for n, r in results.items()})
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = report_markdown(model, results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(table)
    if roc_plots:
        for name, r in results.items():
            plot_roc(r, os.path.join(out_dir, f"roc_{name}.png"))
        plot_roc(results, os.path.join(out_dir, "roc.png"))
    return table
