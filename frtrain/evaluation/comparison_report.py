"""The comparison report: ``comparison.md``, ``comparison.json``, ``accuracy_vs_step.png`` and ``roc.png`` (and a
published copy that keeps the user's notes), from :func:`frtrain.evaluation.comparison.build_report`."""

from __future__ import annotations

import json
from pathlib import Path

from frtrain.evaluation.comparison import Run, build_report
from frtrain.evaluation.provenance import provenance_markdown

#: in a published file, what follows this line is the user's and survives a rewrite of the report
NOTES_MARKER = "<!-- notes: kept when frtrain-compare rewrites this file -->"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(report: dict, command: str, plots: dict[str, str]) -> str:
    """The report as Markdown. ``command`` made the grid; a report rewritten later by ``frtrain-compare report``
    also names that command (``report["report_command"]``)."""
    lines = ["# Head comparison", "", f"Command: `{command}`", ""]
    if report.get("report_command"):
        lines += [f"Report written by: `{report['report_command']}`", ""]
    lines += [
             f"{report['runs']} runs: heads {', '.join(report['heads'])}; splits {', '.join(report['splits'])}. "
             "Accuracy: the fraction of pairs classified correctly at their fold's threshold, the splits' pairs "
             "pooled (template protocols: TAR@FAR=1e-4 by insightface's rule), as mean and 95% confidence interval "
             "(Student t) over seeds. Differences: paired cluster bootstrap over seeds and the identity clusters named "
             f"under each benchmark (a pair kept with its people's multiplicities; {report['resamples']:,} resamples, "
             "at most 1,000 for TAR), 95% interval, two-sided p-value, and the smallest difference these seeds and "
             "pairs detect at 80% power (5% two-sided): 2.80 bootstrap standard errors.", ""]
    for bench, b in report["benchmarks"].items():
        fars = sorted({f for e in b["heads"].values() for f in e["tar_at_far"]}, key=float, reverse=True)
        metric = "accuracy" if b.get("metric", "accuracy") == "accuracy" else "TAR@FAR=1e-4"
        lines += [f"## {bench}", "",
                  f"Seeds {', '.join(map(str, b['seeds']))}; {next(iter(b['heads'].values()))['pairs']:,} pairs per seed; "
                  f"resampled: {b.get('unit', 'pairs')}.",
                  "", f"| head | {metric} (%) | 95% CI | per seed |" + "".join(f" TAR@FAR={f} (%) |" for f in fars),
                  "|---|---:|---|---|" + "---:|" * len(fars)]
        ranked = sorted(b["heads"].items(), key=lambda kv: -kv[1]["accuracy"])
        for h, e in ranked:
            seeds = ", ".join(_pct(v) for v in e["per_seed"].values())
            tars = "".join(f" {_pct(e['tar_at_far'][f]['mean'])} [{_pct(e['tar_at_far'][f]['low'])}, "
                           f"{_pct(e['tar_at_far'][f]['high'])}] |" if f in e["tar_at_far"] else " - |" for f in fars)
            lines.append(f"| {h} | {_pct(e['accuracy'])} | [{_pct(e['low'])}, {_pct(e['high'])}] | {seeds} |{tars}")
        lines += ["", "| A | B | A - B (points) | 95% CI | p | verdict | detectable at 80% power (points) | clusters |",
                  "|---|---|---:|---|---:|---|---:|---:|"]
        for d in sorted(b["differences"], key=lambda d: -abs(d["difference"])):
            verdict = {"A better": f"{d['a']} better", "B better": f"{d['b']} better"}.get(d["verdict"], d["verdict"])
            lines.append(f"| {d['a']} | {d['b']} | {100 * d['difference']:+.2f} | [{100 * d['low']:+.2f}, "
                         f"{100 * d['high']:+.2f}] | {d['p_value']:.3g} | {verdict} | "
                         f"{100 * d.get('detectable', float('nan')):.2f} | {d.get('clusters', '—')} |")
        lines.append("")
    for title, name in plots.items():
        lines += [f"![{title}]({name})", ""]
    lines += geometry_markdown(report.get("geometry") or {})
    lines += provenance_markdown(report.get("provenance") or {})
    lines += ["## Recipe", ""]
    if report["recipe_differences"]:
        lines += ["**The runs differ in more than the head and the seed:**", ""]
        lines += [f"- {n}" for n in report["recipe_differences"]] + [""]
    else:
        lines += ["Within each split, the runs' composed configs (config.yaml) differ only in the head and the seed.", ""]
    lines += ["Training time (minutes, all seeds and splits): "
              + ", ".join(f"{h} {m:.1f}" for h, m in report["train_minutes"].items()), ""]
    wall = report.get("wall_time")
    if wall:
        lines += [f"Wall time of the grid: {wall['seconds'] / 60:.1f} min ({wall.get('trained', '?')} runs trained, "
                  f"{wall.get('resumed', '?')} resumed, {wall.get('reused', '?')} reused; wall_time.json).", ""]
    return "\n".join(lines)


def geometry_markdown(table: dict) -> list[str]:
    """The "Geometry" section: each measured head's geometry scalars (frtrain-analyze's measures, docs/analysis.md),
    mean and 95% interval over seeds (the value alone where one seed was measured); heads without a measurement are
    listed, not tabulated."""
    missing = [h for h, v in table.items() if not v]
    table = {h: v for h, v in table.items() if v}
    if not table:
        return []
    keys = sorted({k for v in table.values() for k in v})
    lines = ["## Geometry", "", "What each paper claims its loss does to the embedding space, measured (docs/analysis.md): "
             "mean over seeds [95% interval, Student t]. pairs: d' and overlap of genuine/impostor cosines, the share "
             "of identities whose genuine pairs all beat their impostors (UNPG); separation: nearest-neighbour angle, "
             "degrees (NPT, margin heads); shape: intra-class anisotropy and effective rank (IntraLoss); margins: "
             "nearest-other minus own centre angle, degrees, and the share below 0 (IE, Margin Loss); norms: Spearman "
             "of feature norm against sharpness (AdaFace, MagFace). Each seed's value is the mean over its splits."
             + (f" Not measured: {', '.join(missing)}." if missing else ""), "",
             "| head | seeds | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for head, values in table.items():
        cells = []
        for k in keys:
            v = values.get(k)
            if v is None:
                cells.append("—")
            elif v["seeds"] < 2:
                cells.append(f"{v['mean']:.3g}")
            else:
                cells.append(f"{v['mean']:.3g} [{v['low']:.3g}, {v['high']:.3g}]")
        seeds = max(v["seeds"] for v in values.values())
        lines.append(f"| {head} | {seeds} | " + " | ".join(cells) + " |")
    return lines + [""]


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
                 publish: str | None = None, report_command: str | None = None) -> dict:
    """Writes the report into ``out`` (and ``publish``). ``command`` is the grid's command line; ``report_command``,
    when given, the ``frtrain-compare report`` line that rewrote it. ``out/wall_time.json``, where the grid left
    one, goes into the report."""
    report = build_report(runs, baseline, resamples)
    if report_command:
        report["report_command"] = report_command
    wall = out / "wall_time.json"
    if wall.is_file():
        try:
            record = json.loads(wall.read_text())
            if isinstance(record, dict) and isinstance(record.get("seconds"), (int, float)):
                report["wall_time"] = record
        except json.JSONDecodeError:
            pass
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
