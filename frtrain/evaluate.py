"""``frtrain-eval`` (also ``python -m frtrain.evaluate``): score a model on verification benchmarks.

    frtrain-eval model=runs/2026-11-23/06-53-00                       # its best.pt, synthetic pairs
    frtrain-eval model=best.pt benchmarks=[lfw_bin,cfp_fp_raw,ytf]    # files under FRTRAIN_BENCHMARKS
    frtrain-eval model=best.onnx benchmarks=[lfw] benchmarks.lfw.root=/data/lfw

``model`` is a frtrain checkpoint (the backbone is rebuilt from its own record, no training config
needed), a run directory (its best.pt), an ONNX export (run with onnxruntime), or a plain backbone state
dict such as insightface's ``backbone.pth`` together with ``backbone=<name>`` (``model=backbone.pth
backbone=iresnet50``; float16 files load into float32). Writes to the output
directory: ``report.json`` (every metric and the ROC of each benchmark), ``report.md`` (a table),
``roc_<benchmark>.png`` and ``roc.png`` (all benchmarks); prints the table.
"""

from __future__ import annotations

import json
import logging
import os

from frtrain.cli import quiet_third_party_warnings, report_errors

quiet_third_party_warnings()

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from frtrain.engine import checkpoint as ckpt_io  # noqa: E402
from frtrain.engine.build import build  # noqa: E402
from frtrain.errors import CheckpointError, ConfigError  # noqa: E402

log = logging.getLogger("frtrain")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory's ``checkpoints/best.pt`` (else its newest step-N.pt)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "checkpoints", "best.pt"), os.path.join(path, "best.pt")):
            if os.path.isfile(candidate):
                return candidate
        latest = ckpt_io.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: a directory with no checkpoints/best.pt and no step-N.pt checkpoint")
        return latest
    return path


def load_backbone(path: str, ckpt: dict | None = None):
    """(backbone in eval mode, checkpoint meta) from a frtrain checkpoint."""
    ckpt = ckpt if ckpt is not None else ckpt_io.load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if "backbone" not in meta:
        raise CheckpointError(f"{path}: has no record of its backbone (meta.backbone); was it written by frtrain?")
    backbone = build("backbone", meta["backbone"])
    ckpt_io.load_state_checked(backbone, ckpt["model"], path, "backbone")
    return backbone.eval(), meta


def load_model(path: str, backbone_cfg=None):
    """(embedding model, meta) from a frtrain checkpoint, an ``.onnx`` export, or a plain backbone state
    dict (insightface's ``backbone.pth``), which needs ``backbone_cfg`` to say what network it is."""
    if str(path).endswith(".onnx"):
        from frtrain.evaluation.onnx_model import OnnxEmbedder

        model = OnnxEmbedder(path)
        return model, {"backbone": model.meta.get("backbone") or {}, "format": "onnx"}
    obj = ckpt_io.load_file(path)
    if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
        return load_backbone(path, obj)
    if backbone_cfg is None:
        kind = ("a plain state dict (insightface's backbone.pth layout)"
                if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())
                else "not a frtrain checkpoint")
        raise CheckpointError(f"{path}: {kind}; say which network it is with backbone=<name> "
                              "(e.g. backbone=iresnet50; the names are the files of configs/backbone)")
    from frtrain.interop import load_backbone_file

    return load_backbone_file(path, backbone_cfg)


def plot_roc(results, path: str) -> None:
    """ROC curves (log false-accept axis) of one result or a dict of results, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = isinstance(results, dict)
    fig, ax = plt.subplots(figsize=(5, 4.2) if many else (4.5, 4))
    for r in (results.values() if many else [results]):
        label = f"{r.name}: {100 * r.accuracy:.2f}%" if many else f"{r.name}: acc {100 * r.accuracy:.2f}%, AUC {r.auc:.4f}"
        ax.plot([max(f, 1e-6) for f in r.roc["fpr"]], r.roc["tpr"], label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_markdown(checkpoint: str, results: dict) -> str:
    lines = [f"# Verification of `{checkpoint}`", "",
             "| benchmark | pairs | accuracy (%) | ± std | TAR@FAR=1e-3 | TAR@FAR=1e-4 | AUC | EER (%) | threshold | XNorm | skipped | time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        tars = [("—" if r.tar_at_far.get(k) is None else f"{100 * r.tar_at_far[k]:.2f}") for k in ("0.001", "0.0001")]
        lines.append(f"| {r.name} | {r.num_pairs} | {100 * r.accuracy:.2f} | {100 * r.accuracy_std:.2f} | {tars[0]} | "
                     f"{tars[1]} | {r.auc:.4f} | {100 * r.eer:.2f} | {r.threshold:.3f} | "
                     f"{'—' if r.xnorm is None else f'{r.xnorm:.2f}'} | {r.skipped_pairs} | {r.seconds:.1f} |")
    notes = [f"- {r.name}: {n}" for r in results.values() for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.model`` on the configured benchmarks; returns the results by benchmark name."""
    from frtrain.engine.trainer import resolve_device, resolve_precision
    from frtrain.train import build_verifier, output_dir

    path = resolve_checkpoint(cfg.model)
    model, meta = load_model(path, cfg.get("backbone"))
    device = resolve_device(str(cfg.device)) if not path.endswith(".onnx") else resolve_device("cpu")
    autocast = resolve_precision(str(cfg.precision), device)
    verifier = build_verifier(cfg, model, cache_images=False)
    if verifier is None:
        raise ConfigError("no benchmarks to score: choose some with benchmarks=[lfw_bin,cfp_fp,...] or eval=lfw|bin")
    results = verifier.run(model.to(device), device, autocast, progress=True)
    out_dir = output_dir(cfg)
    os.makedirs(out_dir, exist_ok=True)
    report = {"model": path, "backbone": (meta.get("backbone") or {}).get("_target_"),
              "config": {"eval": OmegaConf.to_container(cfg.eval, resolve=True),
                         "benchmarks": (OmegaConf.to_container(cfg.benchmarks, resolve=True)
                                        if cfg.get("benchmarks") else {})},
              "results": {name: r.to_dict(with_roc=True) for name, r in results.items()}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = report_markdown(path, results)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(table)
    if cfg.get("roc_plot", True):
        for name, r in results.items():
            plot_roc(r, os.path.join(out_dir, f"roc_{name}.png"))
        plot_roc(results, os.path.join(out_dir, "roc.png"))
    print(table, flush=True)
    print(f"report: {os.path.join(out_dir, 'report.md')}", flush=True)
    return results


@hydra.main(config_path="configs", config_name="evaluate", version_base="1.3")
@report_errors("frtrain-eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
