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
from frtrain.data.loader import resolve_threads
from frtrain.engine.checkpoint import load_model, resolve_checkpoint
from frtrain.engine.trainer import resolve_device, resolve_precision
from frtrain.evaluation.report import write_report
from frtrain.evaluation.verify import Verifier

log = logging.getLogger("frtrain")


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.model`` on the configured benchmarks; returns the results by benchmark name."""
    config.validate_eval_command(cfg)
    torch.set_num_threads(resolve_threads(cfg.eval.threads))
    path = resolve_checkpoint(cfg.model)
    model, meta = load_model(path, cfg.get("backbone"), cfg.get("input"))
    onnx = path.endswith(".onnx")
    device = resolve_device("cpu" if onnx else str(cfg.device))
    verifier = Verifier.from_config(cfg, model, cache_images=False)
    stat = os.stat(path)
    verifier.model_key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"  # IJB embeddings resume for the same file
    results = verifier.run(model.to(device), device, resolve_precision(str(cfg.precision), device), progress=True)
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
    hydra_entry_point("frtrain-eval", "evaluate", evaluate, argv)


if __name__ == "__main__":
    main()
