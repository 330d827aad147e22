"""What decides a number, recorded beside it: the ``provenance`` of every report (``frtrain-eval``'s report.json,
a run's results.json, frtrain-compare's report).

    {"frtrain": "0.1.0",
     "model": {"path", "bytes", "sha256", "backbone", "input_size" [H, W], "mean", "std" (0..1 scale, RGB order),
               "channels" (the order the model takes)},
     "settings": {"eval.flip": "sum", "eval.thresholds": "exact", "eval.intervals": 1000, "input.channels": null,
                  "benchmarks.<name>.<option>": ..., ...},     # every option a command line can switch
     "benchmarks": {"<name>": {"files": [{"path", "bytes", "sha256"}...], "skipped": {"skipped_pairs": 0, ...},
                               "rules": {...}}}}

``settings`` is flat and keyed by the config path that sets each value, so ``frtrain-eval diff`` can name a
difference and re-score with it switched. ``files``: for a file option, the file; for a directory, its list and meta
files (text lists, CSV, JSON, YAML, ``.idx``, ``.mat``, up to :data:`MAX_LISTED` of them, at most two levels down,
each at most :data:`MAX_HASHED_BYTES`), not its images: the hash says which lists were scored, cheaply.
``rules`` are the fixed rules behind a kind's numbers (the FAR rule, pooling, alignment) that no option changes;
options that change them (IJB's flip, normalisation and score weighting, MegaFace's cleaning and distractor sizes)
are among the ``settings``.
"""

from __future__ import annotations

import hashlib
import os

import frtrain

#: meta files hashed per benchmark directory; files larger than MAX_HASHED_BYTES are recorded by size only
MAX_LISTED = 64
MAX_HASHED_BYTES = 512 << 20
META_SUFFIXES = (".txt", ".csv", ".json", ".yaml", ".yml", ".idx", ".mat", ".lst", ".list")
#: the rules a benchmark kind follows whatever its options (keyed by the reader's _target_ suffix)
KIND_RULES = {
    "pair": {"accuracy": "k-fold over the benchmark's folds: each fold's threshold the first best of the grid on the "
                         "other folds",
             "tar_at_far": "strict: the largest TAR whose FAR does not exceed the target",
             "embedding": "L2-normalised, cosine similarity",
             "alignment": "the files as they are (the crop option applied), resized to the model's input"},
    "ijb": {"tar_at_far": "insightface eval_ijbc.py: the ROC point nearest the target FAR, the later one on ties",
            "template": "media-averaged, then template-averaged (insightface)",
            "alignment": "5 landmarks onto insightface's ArcFace template (112x112), resized to the model's input"},
    "megaface": {"score": "MegaFace devkit: rank-1 over (probe, mate) trials, a tie against the mate; TAR@FAR=1e-6 "
                          "by the strict rule"},
    "identification": {"score": "rank-k and mAP of each probe against the gallery, a tie against the probe"},
    "closed_set": {"score": "top-1/top-5 of the head's classifier on the held-out images"},
    "groups": {"score": "per group at one global threshold (RFW: accuracy per race, mean, std, skewed error ratio)",
               "alignment": "the files as they are, resized to the model's input"},
}


def sha256_file(path: str, limit: int = MAX_HASHED_BYTES) -> str | None:
    """The file's SHA-256 (hex), streamed; None when it is larger than ``limit`` bytes."""
    if os.path.getsize(path) > limit:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str) -> dict:
    """{"path", "bytes", "sha256"} of one file (sha256 None above the hashing limit)."""
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def directory_files(root: str) -> list[dict]:
    """The list and meta files of a benchmark directory (two levels down, sorted), as :func:`file_record`."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if folder != root and os.path.relpath(folder, root).count(os.sep) >= 1:
            dirs[:] = []  # two levels: root and its sub-folders
        for name in sorted(files):
            if name.lower().endswith(META_SUFFIXES) and len(found) < MAX_LISTED:
                found.append(file_record(os.path.join(folder, name)))
        if len(found) >= MAX_LISTED:
            break
    return found


def benchmark_files(node: dict) -> list[dict]:
    """The files a benchmark's config names: each existing file or directory among its string options."""
    out = []
    for key, value in sorted(node.items()):
        if key in ("cache_dir", "_target_") or not isinstance(value, str) or not value:
            continue
        if os.path.isfile(value):
            out.append(dict(file_record(value), option=key))
        elif os.path.isdir(value):
            out.extend(dict(r, option=key) for r in directory_files(value))
    return out


def kind_rules(target: str) -> dict:
    """The fixed rules of a reader (``_target_``), by its module: pairs for the pair readers."""
    module = (target or "").rsplit(".", 2)[-2] if (target or "").count(".") >= 2 else ""
    kind = {"ijb_release": "ijb", "megaface": "megaface", "lowres": "identification", "closed_set": "closed_set",
            "groups": "groups"}.get(module, "pair")
    return KIND_RULES[kind]


def flat_settings(prefix: str, node) -> dict:
    """``{"prefix.key.sub": value}`` for a nested dict (lists and scalars are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(flat_settings(f"{prefix}.{key}", value))
    return out


def model_record(path: str, model, meta: dict) -> dict:
    """What the model file decides: its hash and its input convention (size, mean/std, channel order)."""
    onnx = str(path).endswith(".onnx")
    record = file_record(path) if os.path.isfile(path) else {"path": path, "bytes": None, "sha256": None}
    record.update({
        "backbone": (meta.get("backbone") or {}).get("_target_"),
        "format": "onnx" if onnx else "frtrain checkpoint",
        "input_size": list(getattr(model, "input_size", ()) or ()),
        "mean": list(getattr(model, "mean", ()) or ()),
        "std": list(getattr(model, "std", ()) or ()),
        "channels": getattr(model, "channels", "rgb"),
    })
    return record


def settings_provenance(eval_cfg: dict, input_cfg: dict | None, nodes: dict) -> dict:
    """The part known before scoring: frtrain's version, every switchable setting (flat, by config path) and each
    benchmark's files and rules. ``eval_cfg`` / ``input_cfg``: resolved nodes; ``nodes``: name -> (config key,
    resolved node), as :func:`frtrain.config.benchmark_nodes` gives them (resolved)."""
    settings = flat_settings("eval", {k: v for k, v in eval_cfg.items() if k != "benchmarks"})
    settings.update(flat_settings("input", input_cfg or {}))
    benches = {}
    for name, (where, node) in nodes.items():
        settings.update(flat_settings(where, {k: v for k, v in node.items() if k != "cache_dir"}))
        benches[name] = {"config_key": where, "files": benchmark_files(node), "rules": kind_rules(node.get("_target_"))}
    return {"frtrain": frtrain.__version__, "model": None, "settings": settings, "benchmarks": benches}


def with_results(record: dict, results: dict, model: dict | None = None) -> dict:
    """``record`` (:func:`settings_provenance`) completed after scoring: each benchmark's skipped-item counts (the
    integer fields of its result named *skip* or *missing*) and the model (:func:`model_record`)."""
    out = dict(record, model=model if model is not None else record.get("model"))
    out["benchmarks"] = {}
    for name, bench in record["benchmarks"].items():
        data = results[name].to_dict() if name in results else {}
        skipped = {k: v for k, v in data.items() if ("skip" in k or "missing" in k) and isinstance(v, int)}
        out["benchmarks"][name] = dict(bench, skipped=skipped)
    return out


def resolved_nodes(cfg) -> dict:
    """name -> (config key, resolved plain node) of a command's benchmarks."""
    from omegaconf import OmegaConf

    from frtrain.config import benchmark_nodes

    return {name: (where, OmegaConf.to_container(node, resolve=True))
            for name, (where, node) in benchmark_nodes(cfg).items()}


def runs_provenance(runs) -> dict:
    """split -> the provenance of a comparison's runs (the first run of each split; frtrain-compare's recipe check
    says whether the others differ): its results.json record, or for a run written before frtrain recorded one,
    the same record rebuilt from its config.yaml with the benchmark files hashed as the report is written
    (``source`` says which)."""
    out = {}
    for split in sorted({r.split for r in runs}):
        run = next(r for r in runs if r.split == split)
        record = run.results.get("provenance")
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            out[split] = dict(record, source="results.json")
            continue
        evaluation = dict((run.config or {}).get("eval") or {})
        nodes = {name: (f"eval.benchmarks.{name}", node) for name, node in (evaluation.get("benchmarks") or {}).items()
                 if isinstance(node, dict)}
        out[split] = dict(settings_provenance(evaluation, None, nodes),
                          source="config.yaml; benchmark files hashed when this report was written")
    return out


def provenance_markdown(by_split: dict) -> list[str]:
    """The report lines of :func:`runs_provenance`: the settings (one column per split), the benchmark files (names
    relative to the option that names them, SHA-256 prefix) and the fixed rules."""
    splits = list(by_split)
    keys = sorted({k for p in by_split.values() for k in p["settings"]
                   if not k.endswith(("._target_", ".root", ".path", ".images", ".pairs"))
                   and k.split(".")[-1] not in ("every_steps", "at_start", "select", "num_workers", "threads",
                                                "memory_budget_mb", "batch_size", "final_only", "progress")})
    lines = ["## Provenance", "", f"frtrain {next(iter(by_split.values()))['frtrain'] if by_split else '?'}; "
             + "; ".join(f"{s}: from {p['source']}" for s, p in by_split.items()) + ".", "",
             "| setting | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {k} | " + " | ".join(str(by_split[s]["settings"].get(k, "—")) for s in splits) + " |" for k in keys]
    lines += ["", "| split | benchmark | file | bytes | SHA-256 |", "|---|---|---|---:|---|"]
    for split, p in by_split.items():
        for bench, record in p["benchmarks"].items():
            for f in record["files"]:
                base = p["settings"].get(f"{record.get('config_key', 'eval.benchmarks.' + bench)}.{f.get('option')}")
                rel = os.path.relpath(f["path"], base) if isinstance(base, str) and os.path.isdir(base) else \
                    os.path.basename(f["path"])
                lines.append(f"| {split} | {bench} | {rel} | {f['bytes']:,} | {(f['sha256'] or 'not hashed')[:16]} |")
    rules = {f"{bench}: {k}": v for p in by_split.values() for bench, r in p["benchmarks"].items()
             for k, v in r["rules"].items()}
    lines += [""] + [f"- {k}: {v}" for k, v in rules.items()] + [""]
    return lines


def report_lines(record: dict) -> list[str]:
    """A report's provenance as Markdown lines (report.md; report.json holds all of it)."""
    model = record.get("model") or {}
    s = record["settings"]
    lines = ["## Provenance", "",
             f"frtrain {record['frtrain']}; model {model.get('format', '?')} sha256 {(model.get('sha256') or '?')[:16]}, "
             f"input {model.get('input_size')} {model.get('channels')}, mean {model.get('mean')}, std {model.get('std')}; "
             f"flip {s.get('eval.flip')}, thresholds {s.get('eval.thresholds')}, interval resamples "
             f"{s.get('eval.intervals')}. Every setting, with the benchmarks' options and rules: report.json "
             "(`provenance`); `frtrain-eval diff A B` compares two reports.", "",
             "| benchmark | file | bytes | SHA-256 | skipped |", "|---|---|---:|---|---|"]
    for name, b in record["benchmarks"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in (b.get("skipped") or {}).items()) or "—"
        for f in b["files"] or [{"path": "(no file: generated)", "bytes": 0, "sha256": None}]:
            lines.append(f"| {name} | {f['path']} | {f['bytes']:,} | {(f['sha256'] or 'not hashed')[:16]} | {skipped} |")
    return lines + [""]
