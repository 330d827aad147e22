"""``frtrain-eval diff A B [model=PATH]``: the settings that differ between two reports and how much of the gap each
explains.

A side is a report directory (``report.json`` of frtrain-eval, or a run's ``results.json``), one of those files, or
a paper's table row as a small YAML file::

    name: ArcFace (Deng et al. 2019), Table 8, R100 MS1MV2
    settings: {eval.flip: sum, model.channels: rgb, model.input_size: [112, 112]}   # what the paper states
    results: {lfw: 99.83, cfp_fp: 98.27, agedb_30: 98.28}                            # percent, as printed

Settings are compared by their config path (``eval.flip``, ``input.channels``, ``benchmarks.lfw.folds``; a training
run's ``eval.benchmarks.<name>.*`` read as ``benchmarks.<name>.*``), the model's input convention and file hash as
``model.*``, each benchmark's list and meta files as ``files.<benchmark>.<file>`` (their SHA-256). A paper row is
compared on what it states only. With ``model=``, the model is scored with A's recorded evaluation config, then once
per differing setting that a command line can switch (``eval.*``, ``input.*``, ``benchmarks.*``) with that one
setting taken from B: the change from A's score is how much of the gap that setting explains on its own.
"""

from __future__ import annotations

import os

from frtrain.errors import ConfigError
from frtrain.evaluation.provenance import flat_settings
from frtrain.safe_files import read_json, read_yaml

SWITCHABLE = ("eval.", "input.", "benchmarks.")
#: settings that say where a run or a cache is, not how a number is made
IGNORED = ("eval.progress", "eval.num_workers", "eval.batch_size", "eval.memory_budget_mb", "eval.threads",
           "eval.every_steps", "eval.at_start", "eval.select", "eval.final_only", "model.path", "model.bytes")


class Side:
    """One side of a diff: ``label``, ``settings`` (flat, by config path; comparable), ``numbers`` (benchmark ->
    percent) and whether it is a ``paper`` row."""

    def __init__(self, label: str, settings: dict, numbers: dict, paper: bool = False):
        self.label, self.settings, self.numbers, self.paper = label, settings, numbers, paper


def _normal_key(key: str) -> str:
    return key[len("eval."):] if key.startswith("eval.benchmarks.") else key


def load_side(path: str) -> Side:
    """A report directory, report.json / results.json, or a paper row (.yaml/.yml) -> :class:`Side`."""
    if os.path.isdir(path):
        for name in ("report.json", "results.json"):
            if os.path.isfile(os.path.join(path, name)):
                return load_side(os.path.join(path, name))
        raise ConfigError(f"{path}: neither report.json (frtrain-eval) nor results.json (a training run) is there")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such report or paper row")
    if path.endswith((".yaml", ".yml")):
        return _paper_side(path)
    data = read_json(path, "report")
    prov = data.get("provenance")
    if not isinstance(prov, dict) or not isinstance(prov.get("settings"), dict):
        raise ConfigError(f"{path}: has no provenance record (written by a frtrain older than its diff); score the "
                          "model again to record its settings")
    results = data.get("results") if "results" in data else data.get("final")
    numbers = {name: 100 * float(r["accuracy"]) for name, r in (results or {}).items()
               if isinstance(r, dict) and isinstance(r.get("accuracy"), (int, float))}
    settings = {_normal_key(k): v for k, v in prov["settings"].items()}
    if isinstance(prov.get("model"), dict):
        settings.update(flat_settings("model", prov["model"]))
    settings["frtrain"] = prov.get("frtrain")
    for bench, record in (prov.get("benchmarks") or {}).items():
        for f in record.get("files") or []:
            settings[f"files.{bench}.{os.path.basename(f['path'])}"] = f.get("sha256") or f"{f.get('bytes')} bytes"
        for k, v in (record.get("skipped") or {}).items():
            settings[f"skipped.{bench}.{k}"] = v
    return Side(os.path.dirname(os.path.abspath(path)), settings, numbers)


def _paper_side(path: str) -> Side:
    data = read_yaml(path, "paper row")
    if not isinstance(data, dict) or not isinstance(data.get("settings", {}), dict) \
            or not isinstance(data.get("results", {}), dict):
        raise ConfigError(f"{path}: a paper row is a mapping with 'name', 'settings' (config path -> value) and "
                          "'results' (benchmark -> percent)")
    numbers = {}
    for name, value in (data.get("results") or {}).items():
        if not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ConfigError(f"{path}: results.{name}={value!r}: expected a percentage")
        numbers[str(name)] = float(value)
    settings = {_normal_key(str(k)): v for k, v in (data.get("settings") or {}).items()}
    return Side(str(data.get("name") or path), settings, numbers, paper=True)


def differing(a: Side, b: Side) -> list[tuple[str, object, object]]:
    """(key, A's value, B's value) of every compared setting that differs; a paper row on either side limits the
    comparison to what it states. Values missing on one side are None."""
    if a.paper or b.paper:
        keys = set(a.settings if a.paper else b.settings)
    else:
        keys = set(a.settings) | set(b.settings)
    keys = sorted(k for k in keys if not k.startswith(IGNORED) and not k.endswith("._target_"))
    out = []
    for key in keys:
        va, vb = a.settings.get(key), b.settings.get(key)
        if _comparable(va) != _comparable(vb):
            out.append((key, va, vb))
    return out


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, float):
        return round(value, 6)
    return value


def scoring_settings(side: Side) -> dict:
    """The settings a command line can switch (config path -> value): what re-scoring with A's settings applies."""
    return {k: v for k, v in side.settings.items() if k.startswith(SWITCHABLE) and not k.startswith(IGNORED)}


def switchable(a: Side, diffs: list) -> list[tuple[str, object]]:
    """(key, B's value) of each differing setting that can be switched alone on A's config (a benchmark A scored)."""
    scored = {k.split(".")[1] for k in a.settings if k.startswith("benchmarks.")}
    return [(key, vb) for key, _va, vb in diffs
            if key.startswith(SWITCHABLE) and vb is not None
            and (not key.startswith("benchmarks.") or key.split(".")[1] in scored)]


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a SHA-256
    return str(value)


def diff_markdown(a: Side, b: Side, diffs: list, rescored: dict | None = None) -> str:
    """The settings that differ, the numbers side by side and, from ``rescored`` (``{"A": {bench: pct}, key: {bench:
    pct}}``), each switched setting's effect."""
    lines = [f"A: {a.label}", f"B: {b.label}", "", "## Settings that differ", ""]
    if diffs:
        lines += ["| setting | A | B |", "|---|---|---|"] + [f"| {k} | {_fmt(va)} | {_fmt(vb)} |" for k, va, vb in diffs]
    else:
        lines.append("none of the compared settings differ")
    lines += ["", "## Numbers (headline accuracy, %)", "", "| benchmark | A | B | B - A |", "|---|---:|---:|---:|"]
    for name in sorted(set(a.numbers) | set(b.numbers)):
        na, nb = a.numbers.get(name), b.numbers.get(name)
        gap = f"{nb - na:+.2f}" if na is not None and nb is not None else "—"
        lines.append(f"| {name} | {'—' if na is None else f'{na:.2f}'} | {'—' if nb is None else f'{nb:.2f}'} | {gap} |")
    if rescored:
        base = rescored["A"]
        names = sorted(base)
        lines += ["", "## Each setting switched alone (model re-scored with A's settings but this one from B)", "",
                  "| switched | " + " | ".join(f"{n} (points)" for n in names) + " |",
                  "|---|" + "---:|" * len(names),
                  "| none (A's settings) | " + " | ".join(f"{base[n]:.2f}" for n in names) + " |"]
        for key, numbers in rescored.items():
            if key != "A":
                lines.append(f"| {key} | " + " | ".join(f"{numbers[n] - base[n]:+.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"
