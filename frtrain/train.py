"""``frtrain-train`` (also ``python -m frtrain.train``): compose the config, build, fit.

    frtrain-train                                   # MobileFaceNet-class CPU default on synthetic faces
    frtrain-train backbone=iresnet18 head=cosface data=folder data.root=/data/casia optim.lr=0.05
    frtrain-train -m head=arcface,cosface           # Hydra multirun
    torchrun --nproc_per_node=8 -m frtrain.train data=rec data.root=/data/ms1m-retinaface-t1 output_dir=runs/ms1m

Config groups (``frtrain/configs``): backbone, head, data, eval, optim, sched, trainer, experiment, debug.
"""

from __future__ import annotations

import logging
import os

from frtrain.cli import quiet_third_party_warnings, report_errors

quiet_third_party_warnings()

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from frtrain.engine import distributed as D  # noqa: E402
from frtrain.engine.build import build  # noqa: E402
from frtrain.engine.trainer import Trainer, _LOADER_KEYS  # noqa: E402
from frtrain.errors import ConfigError  # noqa: E402

log = logging.getLogger("frtrain")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir(cfg: DictConfig) -> str:
    """The run's own directory: Hydra's output directory, or ``cfg.output_dir`` when composed without it."""
    if cfg.get("output_dir"):
        return os.path.abspath(os.path.expanduser(str(cfg.output_dir)))
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def benchmark_nodes(cfg: DictConfig) -> dict:
    """The benchmarks to score: ``cfg.eval.benchmarks`` and the named ones (``benchmarks=[lfw_bin,...]``)."""
    nodes = dict(cfg.eval.get("benchmarks") or {})
    for name, node in (cfg.get("benchmarks") or {}).items():
        if name in nodes:
            raise ConfigError(f"benchmark {name!r} is both in eval.benchmarks and in benchmarks=[...]; keep one")
        nodes[name] = node
    return nodes


def build_verifier(cfg: DictConfig, backbone, cache_images: bool = True):
    """The benchmarks of ``cfg`` bound to the backbone's input size and normalisation (or None)."""
    from frtrain.evaluation.verify import Verifier

    nodes = benchmark_nodes(cfg)
    if not nodes:
        return None
    built = []
    for name, node in nodes.items():
        where = f"eval.benchmarks.{name}" if name in (cfg.eval.get("benchmarks") or {}) else f"benchmarks.{name}"
        built.append(build(where, node, name=name))
    return Verifier(built, backbone.input_size, backbone.mean, backbone.std, batch_size=int(cfg.eval.batch_size),
                    num_workers=int(cfg.eval.num_workers), flip=cfg.eval.flip, thresholds=cfg.eval.thresholds,
                    cache_images=cache_images)


def train(cfg: DictConfig) -> dict:
    """Build everything ``cfg`` describes and train; returns the final verification results by name."""
    D.init_from_env()
    if not D.is_main():  # rank 0 logs, evaluates and writes; the others only warn
        log.setLevel(logging.WARNING)
    # every rank writes to rank 0's directory (Hydra's timestamped run directory can differ between ranks)
    out_dir = D.broadcast_object(output_dir(cfg))
    os.makedirs(out_dir, exist_ok=True)
    seed = int(cfg.seed)
    seed_everything(seed + D.rank())
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    if D.is_main():
        OmegaConf.save(cfg, os.path.join(out_dir, "config.yaml"), resolve=True)
    backbone = build("backbone", cfg.backbone)
    for attr in ("input_size", "mean", "std", "embedding_size"):
        if not hasattr(backbone, attr):
            raise ConfigError(f"backbone: {cfg.backbone._target_} has no attribute {attr!r}; see frtrain.backbones")
    dataset = build("data", cfg.data, exclude=_LOADER_KEYS, input_size=backbone.input_size)
    head = build("head", cfg.head, embedding_size=backbone.embedding_size, num_classes=dataset.num_classes)
    verifier = build_verifier(cfg, backbone)
    log.info("output directory: %s", out_dir)
    trainer = Trainer(cfg, backbone, head, dataset, verifier, out_dir)
    results = trainer.fit()
    if D.is_main():
        for name, r in results.items():
            best = trainer.state.best_score
            print(f"verification on {name}: accuracy {100 * r.accuracy:.2f}% ± {100 * r.accuracy_std:.2f} "
                  f"(best {100 * best:.2f}% at step {trainer.state.best_step}); checkpoints in {trainer.ckpt_dir}",
                  flush=True)
    return {name: r.to_dict() for name, r in results.items()}


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
@report_errors("frtrain-train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except BaseException:
        D.shutdown(wait=False)
        raise
    D.shutdown()
    first = next(iter(results.values()), None)
    return None if first is None else first["accuracy"]


if __name__ == "__main__":
    main()
