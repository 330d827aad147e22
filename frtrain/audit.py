"""``frtrain-audit`` (also ``python -m frtrain.audit``): benchmark identities that also occur in a training set.

    frtrain-audit train=/data/casia benchmarks=[lfw]                     # by name (folder names against LFW's)
    frtrain-audit train=/data/casia benchmarks=[lfw] model=runs/<run>    # and by embedding; accuracy with and without
    frtrain-audit train=/data/faces_emore benchmarks=[pairs_csv] benchmarks.pairs_csv.path=pairs.csv model=best.pt

Writes to the output directory ``audit.md`` (the overlapping identities with their evidence, the threshold and its
rule, the accuracy on all pairs and on the overlap-free pairs, each with its interval), ``audit.json`` and
``overlap_free_pairs.csv`` (``path1,path2,is_same,fold``: score it with ``benchmarks=[pairs_csv]``). The rules are
:mod:`frtrain.evaluation.overlap`'s.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from omegaconf import DictConfig

from frtrain import config
from frtrain.cli import hydra_entry_point, run_directory
from frtrain.data.labelled import LabelledImages, SampleImages
from frtrain.engine.model_files import embedder_for
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation import overlap as ov
from frtrain.evaluation.results import jsonable

log = logging.getLogger("frtrain")


def validate(cfg: DictConfig) -> None:
    """Every option checked before any file is indexed or model loaded."""
    config.check_schema_keys(cfg)
    config.check_typed(cfg.eval, config.EvalConfig, skip=("benchmarks",))
    if not os.path.exists(str(cfg.train)):
        raise ConfigError(f"train={cfg.train}: no such directory or .rec file")
    far = cfg.far
    if not isinstance(far, (int, float)) or not 0 < far < 1:
        raise ConfigError(f"far={far!r}: expected a false-accept rate between 0 and 1 (e.g. 1e-6)")
    if not isinstance(cfg.images_per_class, int) or not 1 <= cfg.images_per_class <= 1000:
        raise ConfigError(f"images_per_class={cfg.images_per_class!r}: expected an integer 1..1000")
    if cfg.class_vectors not in ("mean", "head"):
        raise ConfigError(f"class_vectors={cfg.class_vectors!r}: expected mean or head")
    if cfg.class_vectors == "head" and cfg.model is None:
        raise ConfigError("class_vectors=head reads the checkpoint's head: give model=")
    config.check_benchmarks(cfg)
    if len(config.benchmark_nodes(cfg)) != 1:
        raise ConfigError("audit one benchmark at a time: benchmarks=[lfw] (or cfp_fp_raw, pairs_csv, rfw, bfw)")


def class_vectors(train: LabelledImages, embedder, k: int, head_state) -> tuple[np.ndarray, list[str]]:
    """(C, d) unit class vectors and their names: means of the first ``k`` images per class, or the head's rows."""
    if head_state is not None:
        w = next((v for key, v in head_state.items() if key.endswith("weight") and v.ndim == 2), None)
        if w is None or w.shape[0] != len(train.names):
            raise DataError(f"the checkpoint's head has {None if w is None else w.shape[0]} class rows; {train.data.root} "
                            f"has {len(train.names)} classes: it was not trained on this set (use class_vectors=mean)")
        w = w.float().numpy().astype(np.float64)
        return w / np.linalg.norm(w, axis=1, keepdims=True), train.names
    chosen = train.first_per_class(k)
    emb, _ = embedder.embed(SampleImages(train.data, chosen), len(chosen), "training classes")
    labels = train.labels()[chosen]
    present = np.unique(labels)
    return ov.identity_means(emb, np.searchsorted(present, labels), len(present)), [train.names[i] for i in present]


def run_audit(cfg: DictConfig) -> dict:
    """The audit of ``cfg``; returns its record (also written as audit.json)."""
    validate(cfg)
    from frtrain.engine.build import build_benchmarks

    bench = build_benchmarks(config.benchmark_nodes(cfg))[0]
    if getattr(bench, "image_people", None) is None:
        raise ConfigError(f"{bench.name}: its images carry no person names (a .bin or video list); audit a benchmark "
                          "of image files in a folder per person (lfw, cfp_*_raw, pairs_csv, rfw, bfw)")
    people = np.asarray(bench.image_people)
    names, person_of_image = np.unique(people, return_inverse=True)
    record = {"benchmark": bench.name, "source": bench.source, "train": os.path.abspath(str(cfg.train)),
              "benchmark_identities": len(names), "far": float(cfg.far)}
    out_dir = run_directory(cfg)
    os.makedirs(out_dir, exist_ok=True)
    found = ov.Overlap()
    embedder = None
    if cfg.model is not None:
        embedder, meta = embedder_for(cfg)
        head_state = meta.get("head_state")
        train = LabelledImages(str(cfg.train), embedder.model.input_size)
    else:
        train = LabelledImages(str(cfg.train), (112, 112))
    record["training_classes"] = len(train.names)
    if train.with_names:
        found.by_name = ov.name_matches(list(names), train.names)
    full = clean = None
    keep = np.ones(bench.num_pairs, dtype=bool)
    if embedder is not None:
        emb, _ = bench.embeddings(embedder)
        means = ov.identity_means(emb, person_of_image, len(names))
        found.threshold = ov.impostor_threshold(means, float(cfg.far))
        vectors, class_names = class_vectors(train, embedder, int(cfg.images_per_class),
                                             head_state if cfg.class_vectors == "head" else None)
        found.by_embedding = ov.embedding_matches(means, list(names), vectors, class_names, found.threshold)
        found.comparisons = len(names) * len(class_names)
    keep = ov.clean_pair_mask(people[bench.pairs], set(found.identities))
    if embedder is not None:
        full, clean = _scores(bench, emb, keep, embedder)
    csv_path = os.path.join(out_dir, "overlap_free_pairs.csv")
    kept = ov.write_pair_csv(csv_path, list(bench.load.paths), bench.pairs, bench.issame, bench.folds, keep)
    record.update({"by_name": found.by_name, "by_embedding": found.by_embedding,
                   "threshold": None if found.threshold is None else vars(found.threshold),
                   "comparisons": found.comparisons, "expected_by_chance": found.expected_by_chance(),
                   "overlapping": found.identities, "pairs": int(bench.num_pairs), "overlap_free_pairs": kept,
                   "overlap_free_list": csv_path,
                   "accuracy": None if full is None else _summary(full),
                   "accuracy_overlap_free": None if clean is None else _summary(clean)})
    with open(os.path.join(out_dir, "audit.json"), "w") as f:
        json.dump(jsonable(record), f, indent=1)
    text = markdown(record)
    with open(os.path.join(out_dir, "audit.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    print(f"report: {os.path.join(out_dir, 'audit.md')}", flush=True)
    return record


def _scores(bench, emb, keep: np.ndarray, embedder):
    """The benchmark's result on all its pairs and on the kept ones (clusters renumbered within the subset)."""
    from frtrain.evaluation.benchmarks import verification_scores

    clusters, _count, unit = bench.clusters()
    out = []
    for mask in (np.ones(len(keep), dtype=bool), keep):
        if bench.issame[mask].all() or not bench.issame[mask].any():
            out.append(None)
            continue
        used, dense = np.unique(clusters[mask], return_inverse=True)
        pairs = bench.pairs[mask]
        out.append(verification_scores(bench.name, emb[pairs[:, 0]], emb[pairs[:, 1]], bench.issame[mask],
                                       bench.folds[mask], embedder.thresholds, None,
                                       clusters=(dense.reshape(-1, 2), len(used), unit),
                                       resamples=embedder.interval_resamples))
    return out


def _summary(result) -> dict:
    interval = getattr(result, "interval", None)
    return {"accuracy": result.accuracy, "pairs": int(result.num_pairs),
            "interval": None if interval is None else interval.to_dict()}


def markdown(r: dict) -> str:
    """audit.md from the record of :func:`run_audit`."""
    lines = [f"# Overlap of {r['benchmark']} with {r['train']}", "",
             f"{r['benchmark_identities']:,} benchmark identities, {r['training_classes']:,} training classes.", ""]
    rows = sorted(set(r["by_name"]) | set(r["by_embedding"]))
    if rows:
        lines += ["| benchmark identity | by name | by embedding (class, cosine) |", "|---|---|---|"]
        for name in rows:
            emb = r["by_embedding"].get(name)
            lines.append(f"| {name} | {r['by_name'].get(name, '—')} | "
                         f"{'—' if emb is None else f'{emb[0]}, {emb[1]:.4f}'} |")
    else:
        lines.append("No benchmark identity was found in the training set.")
    lines.append("")
    t = r["threshold"]
    if t is None:
        lines.append("By name only (no model= given): identities under other names are not found.")
    else:
        lines.append(f"Embedding threshold: cosine {t['cosine']:.4f} at FAR {t['far']:g} per comparison ({t['rule']}); "
                     f"{r['comparisons']:,} comparisons, so about {r['expected_by_chance']:.2g} clean identities are "
                     "flagged by chance.")
    lines += ["", f"Pairs: {r['pairs']:,}; overlap-free (neither person flagged): {r['overlap_free_pairs']:,}, written "
              f"to {r['overlap_free_list']}.", ""]
    if r["accuracy"] is not None:
        lines += ["| pairs | accuracy (%) | 95% interval |", "|---|---:|---|"]
        for label, s in (("all", r["accuracy"]), ("overlap-free", r["accuracy_overlap_free"])):
            if s is None:
                lines.append(f"| {label} | — (one kind of pair left) | |")
                continue
            i = s["interval"]
            lines.append(f"| {label} ({s['pairs']:,}) | {100 * s['accuracy']:.2f} | "
                         + ("—" if i is None else f"[{100 * i['low']:.2f}, {100 * i['high']:.2f}] ({i['unit']})") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    hydra_entry_point("frtrain-audit", "audit", run_audit, argv, doc=__doc__)


if __name__ == "__main__":
    main()
