"""``frtrain-analyze`` (also ``python -m frtrain.analyze``): what a model's embedding space looks like, measured
against the seed papers' claims (definitions: :mod:`frtrain.evaluation.geometry`, docs/analysis.md).

    frtrain-analyze model=runs/<run> data=/data/casia images_per_class=20 max_classes=2000   # data= or dataset=
    frtrain-analyze model=best.pt benchmarks=[lfw] benchmarks.lfw.root=/data/lfw
    frtrain-analyze model=runs/<run> dataset=/data/faces measures=[pairs,shape]

Writes ``analysis.json``, ``analysis.md`` and the plots (``similarities.png``, ``angles.png``, ``spectrum.png``,
``norm_quality.png``) to the output directory. The centres of the margins are the checkpoint head's rows when the
data has as many classes as the head (its own training set), else the identities' mean embeddings; the head's rows'
own separation is reported whatever the data.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
from omegaconf import DictConfig, OmegaConf

from frtrain import config
from frtrain.cli import hydra_entry_point, run_directory
from frtrain.data.labelled import LabelledImages, SampleImages
from frtrain.engine.build import build_benchmarks
from frtrain.engine.model_files import embedder_for
from frtrain.errors import ConfigError
from frtrain.evaluation import geometry as G
from frtrain.evaluation.analysis_report import markdown, plot
from frtrain.evaluation.results import jsonable

log = logging.getLogger("frtrain")
MEASURES = ("pairs", "separation", "shape", "margins", "norms")


def validate(cfg: DictConfig) -> None:
    """Every option checked before any image is read or model loaded."""
    config.check_schema_keys(cfg)
    config.check_typed(cfg.eval, config.EvalConfig, skip=("benchmarks",))
    unknown = [m for m in cfg.measures if m not in MEASURES]
    if unknown or not cfg.measures:
        raise ConfigError(f"measures={list(cfg.measures)}: expected some of {', '.join(MEASURES)}")
    for key, low in (("images_per_class", 2), ("max_classes", 2), ("min_images", 2), ("batch_size", 2),
                     ("batches", 1), ("max_impostors", 1)):
        if not isinstance(cfg[key], int) or cfg[key] < low:
            raise ConfigError(f"{key}={cfg[key]!r}: expected an integer >= {low}")
    if cfg.margin_degrees is not None and not (isinstance(cfg.margin_degrees, (int, float))
                                               and 0 <= cfg.margin_degrees < 180):
        raise ConfigError(f"margin_degrees={cfg.margin_degrees!r}: expected degrees in [0, 180)")
    nodes = config.benchmark_nodes(cfg)
    if cfg.dataset is None and len(nodes) != 1:
        raise ConfigError("give dataset=<identity folders or .rec> or one benchmark: benchmarks=[lfw]")
    if cfg.dataset is not None and nodes:
        raise ConfigError("give dataset= or benchmarks=[...], not both")
    if cfg.dataset is not None and not os.path.exists(str(cfg.dataset)):
        raise ConfigError(f"dataset={cfg.dataset}: no such directory or .rec file")
    config.check_benchmarks(cfg)


def head_target(meta: dict) -> tuple[float | None, dict]:
    """(the head's target margin in degrees or None, notes on it) from the checkpoint's head record."""
    head = meta.get("head") or {}
    name = str(head.get("_target_", "")).rsplit(".", 1)[-1]
    if "margin_rad" in head:
        return math.degrees(float(head["margin_rad"])), {"head": name, "margin": f"margin_rad={head['margin_rad']}"}
    if name.lower().startswith("npt"):
        delta = float(head.get("delta", 0.5))
        bound = math.degrees(math.acos(max(-1.0, min(1.0, 1 - delta))))
        return None, {"head": name, "npt_bound_degrees": bound,
                      "npt_bound": f"zero loss with a sample on its own proxy needs cos(W_i, W_j) <= 1 - delta = "
                                   f"{1 - delta:g}: proxies at least {bound:.1f} degrees apart (derived from the "
                                   "loss here; the paper states a minimum separation)"}
    return None, {"head": name}


def images_and_labels(cfg: DictConfig, input_size):
    """(load, count, labels (n,), class names, the data's class count, source) of what is analysed."""
    if cfg.dataset is not None:
        data = LabelledImages(str(cfg.dataset), input_size)
        chosen = data.first_per_class(int(cfg.images_per_class), int(cfg.max_classes))
        return (SampleImages(data.data, chosen), len(chosen), data.labels()[chosen], data.names, len(data.names),
                os.path.abspath(str(cfg.dataset)))
    bench = build_benchmarks(config.benchmark_nodes(cfg))[0]
    people = getattr(bench, "image_people", None)
    if people is None:
        raise ConfigError(f"{bench.name}: its images carry no person names; analyse identity folders with dataset=")
    names, labels = np.unique(np.asarray(people), return_inverse=True)
    return bench.load, bench.num_images, labels, list(names), len(names), bench.source


def analyze(cfg: DictConfig) -> dict:
    """The measures of ``cfg``; returns the record written to analysis.json."""
    validate(cfg)
    embedder, meta = embedder_for(cfg)
    load, count, labels, names, num_classes, source = images_and_labels(cfg, embedder.model.input_size)
    raw, _ = embedder.embed(load, count, "images")
    raw = np.asarray(raw, dtype=np.float64)
    target, head_notes = head_target(meta)
    target = float(cfg.margin_degrees) if cfg.margin_degrees is not None else target
    head = meta.get("head_state") or {}
    weight = next((v for k, v in head.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2), None)
    own_head = weight is not None and weight.shape[0] == num_classes
    quality = np.array([G.sharpness(load(i)) for i in range(count)]) if "norms" in cfg.measures else None
    record = {"model": meta.get("path"), "data": source, "images": int(count), "identities": int(len(np.unique(labels))),
              "class_vectors": ("the head's rows" if own_head else "identities' mean embeddings (the head's rows, of "
                                "other classes, only for their own separation)"), **head_notes,
              "measures": list(cfg.measures), "flip": embedder.flip}
    record.update(G.measure_all(raw, labels, list(cfg.measures), weight.float().numpy() if own_head else None, target,
                                quality, int(cfg.batch_size), int(cfg.batches), int(cfg.max_impostors),
                                int(cfg.min_images), max(int(cfg.eval.intervals), 100)))
    if "norms" in record:
        record["norms"]["quality"] = "sharpness (variance of the Laplacian of the grey image)"
    if weight is not None and not own_head and "separation" in cfg.measures:
        record["separation_classes"] = G.separation(G.unit(weight.float().numpy()))  # independent of the data
    record["scalars"] = G.scalars(record)
    out_dir = run_directory(cfg)
    os.makedirs(out_dir, exist_ok=True)
    record = jsonable(record)
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(dict(record, config=OmegaConf.to_container(cfg, resolve=True)), f, indent=1)
    plots = plot(record, out_dir, raw_norms=np.linalg.norm(raw, axis=1), quality=quality)
    text = markdown(record, plots)
    with open(os.path.join(out_dir, "analysis.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    print(f"report: {os.path.join(out_dir, 'analysis.md')}", flush=True)
    return record


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    # data=<path> reads as dataset=<path> (frtrain's data group holds training-set configs, not paths)
    argv = ["dataset=" + a[len("data="):] if a.startswith("data=") else a for a in argv]
    hydra_entry_point("frtrain-analyze", "analyze", analyze, argv, doc=__doc__)


if __name__ == "__main__":
    main()
