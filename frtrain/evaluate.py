"""``frtrain-eval`` (also ``python -m frtrain.evaluate``): score a checkpoint on verification benchmarks.

    frtrain-eval checkpoint=runs/2026-11-23/06-53-00                       # its best.pt, synthetic pairs
    frtrain-eval checkpoint=best.pt eval=lfw eval.benchmarks.lfw.root=/data/lfw
    frtrain-eval checkpoint=best.pt eval=bin eval.benchmarks.lfw.path=/data/lfw.bin

The backbone is rebuilt from the checkpoint's own record (no training config needed). Writes to the
output directory: ``report.json`` (every metric and the ROC of each benchmark), ``report.md`` (a table)
and ``roc_<benchmark>.png``; prints one line per benchmark.
"""

from __future__ import annotations

import json
import logging
import os

from frtrain.cli import quiet_third_party_warnings, report_errors

quiet_third_party_warnings()

import hydra  # noqa: E402
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


def load_backbone(path: str):
    """(backbone in eval mode, checkpoint meta) from a frtrain checkpoint."""
    ckpt = ckpt_io.load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if "backbone" not in meta:
        raise CheckpointError(f"{path}: has no record of its backbone (meta.backbone); was it written by frtrain?")
    backbone = build("backbone", meta["backbone"])
    ckpt_io.load_state_checked(backbone, ckpt["model"], path, "backbone")
    return backbone.eval(), meta


def plot_roc(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    fpr = [max(f, 1e-6) for f in result.roc["fpr"]]
    ax.plot(fpr, result.roc["tpr"], label=f"{result.name}: acc {100 * result.accuracy:.2f}%, AUC {result.auc:.4f}")
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
             "| benchmark | pairs | accuracy (%) | ± std | TAR@FAR=1e-3 | TAR@FAR=1e-4 | AUC | EER (%) | threshold | XNorm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        tars = [("—" if r.tar_at_far.get(k) is None else f"{100 * r.tar_at_far[k]:.2f}") for k in ("0.001", "0.0001")]
        lines.append(f"| {r.name} | {r.num_pairs} | {100 * r.accuracy:.2f} | {100 * r.accuracy_std:.2f} | {tars[0]} | "
                     f"{tars[1]} | {r.auc:.4f} | {100 * r.eer:.2f} | {r.threshold:.3f} | "
                     f"{'—' if r.xnorm is None else f'{r.xnorm:.2f}'} |")
    notes = [f"- {r.name}: {n}" for r in results.values() for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.checkpoint`` on ``cfg.eval.benchmarks``; returns the results by benchmark name."""
    from frtrain.engine.trainer import resolve_device, resolve_precision
    from frtrain.train import build_verifier, output_dir

    path = resolve_checkpoint(cfg.checkpoint)
    backbone, meta = load_backbone(path)
    device = resolve_device(str(cfg.device))
    autocast = resolve_precision(str(cfg.precision), device)
    verifier = build_verifier(cfg, backbone)
    if verifier is None:
        raise ConfigError("eval.benchmarks is empty: nothing to score (choose eval=synthetic|bin|lfw)")
    results = verifier.run(backbone.to(device), device, autocast)
    out_dir = output_dir(cfg)
    os.makedirs(out_dir, exist_ok=True)
    report = {"checkpoint": path, "backbone": meta["backbone"].get("_target_"),
              "config": OmegaConf.to_container(cfg.eval, resolve=True),
              "results": {name: r.to_dict(with_roc=True) for name, r in results.items()}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report_markdown(path, results))
    for name, r in results.items():
        if cfg.get("roc_plot", True):
            plot_roc(r, os.path.join(out_dir, f"roc_{name}.png"))
        print(f"{name}: accuracy {100 * r.accuracy:.2f}% ± {100 * r.accuracy_std:.2f} over {r.num_pairs} pairs, "
              f"AUC {r.auc:.4f}, EER {100 * r.eer:.2f}%", flush=True)
    print(f"report: {os.path.join(out_dir, 'report.md')}", flush=True)
    return results


@hydra.main(config_path="configs", config_name="evaluate", version_base="1.3")
@report_errors("frtrain-eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
