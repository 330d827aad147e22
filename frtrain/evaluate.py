"""``frtrain-eval`` (also ``python -m frtrain.evaluate``): score a model on verification benchmarks.

    frtrain-eval model=runs/2026-11-23/06-53-00                       # its best.pt, synthetic pairs
    frtrain-eval model=best.pt benchmarks=[lfw_bin,cfp_fp_raw,ytf]    # files under FRTRAIN_BENCHMARKS
    frtrain-eval model=best.onnx benchmarks=[lfw] benchmarks.lfw.root=/data/lfw

``model`` is a frtrain checkpoint (the backbone is rebuilt from its own record through an allow-list, no
training config needed), a run directory (its best.pt), an ONNX file (run with onnxruntime; a model made
elsewhere takes ``input=<preset>`` or ``input.size=... input.mean=... input.std=... input.channels=...``), or a
plain backbone state dict such as insightface's ``backbone.pth`` together with ``backbone=<name>``. Writes to the
output directory: ``report.json`` (every metric and the ROC of each benchmark), ``report.md`` (a table with the
cosine thresholds at FAR 1e-3..1e-5, the provenance), ``roc_<benchmark>.png`` and ``roc.png``; prints the table.

    frtrain-eval diff A B [model=PATH]        # two reports (or a paper row): see frtrain-eval diff --help
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from frtrain import config
from frtrain.cli import (HELP_FLAGS, command_help, hydra_entry_point, one_line_errors, quiet_third_party_warnings,
                         run_directory)
from frtrain.engine.build import build_benchmarks, embed_options
from frtrain.engine.model_files import load_model, resolve_checkpoint
from frtrain.errors import ConfigError
from frtrain.evaluation.closed_set import class_scorer
from frtrain.evaluation.embed import Embedder, score_benchmarks
from frtrain.evaluation.provenance import model_record, resolved_nodes, settings_provenance, with_results
from frtrain.evaluation.report import write_report
from frtrain.evaluation.report_diff import diff_markdown, differing, load_side, scoring_settings, switchable
from frtrain.runtime import resolve_device, resolve_precision, resolve_threads

log = logging.getLogger("frtrain")


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.model`` on the configured benchmarks and write the report; returns the results by benchmark name."""
    path, results, record = score(cfg)
    out_dir = run_directory(cfg)
    table = write_report(out_dir, path, results, record, roc_plots=bool(cfg.get("roc_plot", True)))
    print(table, flush=True)
    print(f"report: {os.path.join(out_dir, 'report.md')}", flush=True)
    return results


def score(cfg: DictConfig) -> tuple[str, dict, dict]:
    """(model file, results by benchmark name, the report's record: config and provenance) of ``cfg``."""
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
    nodes = resolved_nodes(cfg)
    settings = settings_provenance(OmegaConf.to_container(cfg.eval, resolve=True),
                                   OmegaConf.to_container(cfg.input, resolve=True) if cfg.get("input") else None, nodes)
    results = score_benchmarks(build_benchmarks(config.benchmark_nodes(cfg)), embedder)
    record = {"backbone": (meta.get("backbone") or {}).get("_target_"),
              "config": {"eval": OmegaConf.to_container(cfg.eval, resolve=True),
                         "benchmarks": (OmegaConf.to_container(cfg.benchmarks, resolve=True)
                                        if cfg.get("benchmarks") else {}),
                         "input": OmegaConf.to_container(cfg.input, resolve=True) if cfg.get("input") else None},
              "provenance": with_results(settings, results, model_record(path, model, meta))}
    return path, results, record


# -- frtrain-eval diff ------------------------------------------------------------------------------------------

DIFF_DOC = """``frtrain-eval diff A B [model=PATH] [out=FILE] [key=value ...]``: which settings differ between two reports
(or a report and a paper's table row) and, with ``model=``, how much of the gap each one explains alone.

    frtrain-eval diff runs/eval/a runs/eval/b
    frtrain-eval diff runs/eval/mine paper_arcface_r100.yaml
    frtrain-eval diff runs/eval/a runs/eval/b model=best.pt        # re-score: A's settings, then each switched

The rules are :mod:`frtrain.evaluation.report_diff`'s. Further ``key=value`` options are frtrain-eval's and apply to
every re-scoring (``device=cuda``, ``eval.num_workers=8``, ``paths.benchmarks=...``). Prints Markdown; ``out=``
also writes it to a file.
"""
USAGE = "usage: frtrain-eval diff A B [model=PATH] [out=FILE] [key=value ...]  (A, B: report directories or paper YAML)"


def headline_numbers(cfg) -> dict:
    """benchmark -> headline accuracy (%) of ``cfg.model`` scored with ``cfg``."""
    _path, results, _record = score(cfg)
    return {name: 100 * r.accuracy for name, r in results.items()}


def config_with(base_overrides: list[str], settings: dict, model: str):
    """The evaluate config for ``model`` with ``base_overrides`` and then ``settings`` (config path -> value: the
    recorded evaluation of a report; its benchmarks replace the default ones)."""
    cfg = config.compose("evaluate", [f"model={model}", *base_overrides])
    with open_dict(cfg):
        cfg.benchmarks = {}
        for key, value in settings.items():
            section, _, rest = key.partition(".")
            if section == "eval" and rest.split(".")[0] not in cfg.eval:
                continue  # a training-only option (eval.every_steps, ...)
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def rescore(model: str, a, switches: list, overrides: list[str]) -> dict:
    """``{"A": numbers}`` with A's settings, then ``{key: numbers}`` with each (key, value) of ``switches`` alone."""
    base = scoring_settings(a)
    out = {"A": headline_numbers(config_with(overrides, base, model))}
    for key, value in switches:
        log.info("re-scoring with %s=%s (from B)", key, value)
        out[key] = headline_numbers(config_with(overrides, dict(base, **{key: value}), model))
    return out


def diff_main(argv: list[str]) -> int:
    """``frtrain-eval diff A B [model=PATH] [out=FILE] [key=value ...]``: see :data:`DIFF_DOC`."""
    quiet_third_party_warnings("frtrain-eval diff")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if any(a in HELP_FLAGS for a in argv):
        print(command_help("frtrain-eval diff", DIFF_DOC))
        return 0
    with one_line_errors("frtrain-eval diff"):
        sides = [a for a in argv if "=" not in a]
        opts = [a for a in argv if "=" in a]
        model = next((o.split("=", 1)[1] for o in opts if o.startswith("model=")), None)
        out = next((o.split("=", 1)[1] for o in opts if o.startswith("out=")), None)
        overrides = [o for o in opts if not o.startswith(("model=", "out="))]
        if len(sides) != 2:
            raise ConfigError(USAGE)
        a, b = load_side(sides[0]), load_side(sides[1])
        diffs = differing(a, b)
        rescored = None
        if model is not None:
            if a.paper:
                raise ConfigError(f"{sides[0]}: re-scoring starts from A's recorded settings, so A must be a report "
                                  "(put the paper row second)")
            rescored = rescore(model, a, switchable(a, diffs), overrides)
        text = diff_markdown(a, b, diffs, rescored)
        print(text, flush=True)
        if out:
            with open(out, "w") as f:
                f.write(text)
    return 0


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "diff":
        raise SystemExit(diff_main(argv[1:]))
    hydra_entry_point("frtrain-eval", "evaluate", evaluate, argv, doc=__doc__)


if __name__ == "__main__":
    main()
