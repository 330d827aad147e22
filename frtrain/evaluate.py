"""``frtrain-eval`` (also ``python -m frtrain.evaluate``): score a model on verification benchmarks.

    frtrain-eval model=runs/2026-11-23/06-53-00                       # its best.pt, synthetic pairs
    frtrain-eval model=best.pt benchmarks=[lfw_bin,cfp_fp_raw,ytf]    # files under FRTRAIN_BENCHMARKS
    frtrain-eval model=best.onnx benchmarks=[lfw] benchmarks.lfw.root=/data/lfw

``model`` is a frtrain checkpoint (the backbone is rebuilt from its own record through an allow-list, no
training config needed), a run directory (its best.pt), an ONNX file (run with onnxruntime; a model made
elsewhere takes ``input=<preset>`` or ``input.size=... input.mean=... input.std=... input.channels=...``), or a
plain backbone state dict such as insightface's ``backbone.pth`` together with ``backbone=<name>``. Writes to the
output directory: ``report.json`` (every metric and the ROC of each benchmark), ``report.md`` (a table with the
cosine thresholds at FAR 1e-3..1e-5), ``roc_<benchmark>.png`` and ``roc.png``; prints the table.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

from frtrain import config
from frtrain.cli import hydra_entry_point, run_directory
from frtrain.engine.build import build_benchmarks, embed_options
from frtrain.engine.model_files import load_model, resolve_checkpoint
from frtrain.evaluation.closed_set import class_scorer
from frtrain.evaluation.embed import Embedder, score_benchmarks
from frtrain.evaluation.report import write_report
from frtrain.runtime import resolve_device, resolve_precision, resolve_threads

log = logging.getLogger("frtrain")


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.model`` on the configured benchmarks; returns the results by benchmark name."""
    config.validate_eval_command(cfg)
    torch.set_num_threads(resolve_threads(cfg.eval.threads))
    path = resolve_checkpoint(cfg.model)
    model, meta = load_model(path, cfg.get("backbone"), cfg.get("input"))
    onnx = path.endswith(".onnx")
    device = resolve_device("cpu" if onnx else str(cfg.device))
    stat = os.stat(path)
    embedder = Embedder(model.to(device), device, autocast_dtype=resolve_precision(str(cfg.precision), device),
                        progress=True, model_key=f"{path}:{stat.st_size}:{stat.st_mtime_ns}",  # IJB embeddings resume
                        **embed_options(cfg.eval))
    embedder.classifier = class_scorer(meta.get("head_state"))  # closed-set protocols: the checkpoint's head
    results = score_benchmarks(build_benchmarks(config.benchmark_nodes(cfg)), embedder)
    record = {"backbone": (meta.get("backbone") or {}).get("_target_"),
              "config": {"eval": OmegaConf.to_container(cfg.eval, resolve=True),
                         "benchmarks": (OmegaConf.to_container(cfg.benchmarks, resolve=True)
                                        if cfg.get("benchmarks") else {})}}
    out_dir = run_directory(cfg)
    table = write_report(out_dir, path, results, record, roc_plots=bool(cfg.get("roc_plot", True)))
    print(table, flush=True)
    print(f"report: {os.path.join(out_dir, 'report.md')}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    hydra_entry_point("frtrain-eval", "evaluate", evaluate, argv, doc=__doc__)


if __name__ == "__main__":
    main()
