"""``frtrain-train`` (also ``python -m frtrain.train``): compose the config, build, fit.

    frtrain-train                                   # the CPU-sized default on the embedded synthetic faces
    frtrain-train backbone=iresnet18 head=cosface data=folder data.root=/data/casia optim.lr=0.05
    frtrain-train -m head=arcface,cosface           # Hydra multirun
    frtrain-train experiment=npt_casia_r50 paths.datasets=/data
    torchrun --nproc_per_node=8 -m frtrain.train data=rec data.root=/data/ms1m-retinaface-t1 output_dir=runs/ms1m

Config groups (``configs/``): paths, backbone, head, data (with data.loader), eval, benchmarks, optim,
sched, trainer, data_head (head settings specialised to a data set), experiment, debug.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from frtrain import config
from frtrain import distributed as D
from frtrain.backbones.common import check_backbone
from frtrain.cli import hydra_entry_point, run_directory
from frtrain.data.loader import ResumableBatchSampler, make_loader
from frtrain.data.shard_stream import ShardFaces, ShardLoader, ShardStream
from frtrain.runtime import resolve_device, resolve_threads, resolve_workers
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import finetune
from frtrain.engine.build import build, build_benchmarks, embed_options
from frtrain.engine.memory_plan import check_before_training
from frtrain.evaluation.provenance import model_record, resolved_nodes, settings_provenance
from frtrain.evaluation.training_geometry import target_margin_degrees
from frtrain.engine.run_dir import RunDirectoryBusy, RunLock, remove_unstarted, untouched

log = logging.getLogger("frtrain")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: DictConfig) -> dict:
    """Build everything ``cfg`` describes and train; returns the final verification results by name.

    A run that stops before its first step (a config mistake, missing data) removes the run directory Hydra made
    for it; a run directory is held by one run at a time (:class:`~frtrain.engine.run_dir.RunLock`).
    """
    fresh = untouched(run_directory(cfg))
    lock, trainer, busy = None, None, False
    try:
        config.validate_train(cfg)  # every node, before any data is generated or indexed
        D.init_from_env(rendezvous_seconds=float(cfg.trainer.dist_timeout))
        if not D.is_main():  # rank 0 logs, evaluates and writes; the others only warn
            log.setLevel(logging.WARNING)
        out_dir = D.broadcast_object(run_directory(cfg))  # Hydra's timestamped directory can differ between ranks
        os.makedirs(out_dir, exist_ok=True)
        message = None
        if D.is_main():  # one run at a time in a directory
            try:
                lock = RunLock(out_dir)
                lock.acquire()
            except RunDirectoryBusy as e:
                lock, message = None, str(e)
        message = D.broadcast_object(message)
        if message:
            busy = True
            raise RunDirectoryBusy(message)
        if D.is_main():
            ckpt_io.remove_stale_temporaries(os.path.join(out_dir, "checkpoints"))
        # the memory plan (trainer.plan): before any data is generated or read; every rank refuses alike
        check_before_training(cfg, out_dir if D.is_main() else None, ranks=D.world_size())
        trainer = build_trainer(cfg, out_dir)
        trainer.restore()
        results = trainer.fit()
    except BaseException:
        if fresh and not busy and D.is_main() and (trainer is None or trainer.steps_run == 0):
            remove_unstarted(run_directory(cfg))  # a run that never took a step leaves no directory behind
        raise
    finally:
        if lock is not None:
            lock.release()
    if D.is_main():
        for name, r in results.items():
            print(f"verification on {name}: {r.headline()} "
                  f"(best {100 * trainer.state.best_score:.2f}% at step {trainer.state.best_step}); "
                  f"checkpoints in {trainer.ckpt_dir}", flush=True)
    return {name: r.to_dict() for name, r in results.items()}


def build_trainer(cfg: DictConfig, out_dir: str):
    """Everything ``cfg`` describes, built top to bottom and handed to a :class:`Trainer`."""
    from frtrain.engine.model_record import model_meta
    from frtrain.engine.schedule import schedule_length
    from frtrain.engine.trainer import Trainer  # TensorBoard, sklearn: imported after the checks

    opts, loader_cfg = config.to_object(cfg.trainer), config.to_object(cfg.data.loader)
    workers = resolve_workers(loader_cfg.num_workers)
    torch.set_num_threads(resolve_threads(opts.threads))
    seed_everything(cfg.seed + D.rank())
    if D.is_main():
        OmegaConf.save(cfg, os.path.join(out_dir, "config.yaml"), resolve=True)
    device = resolve_device(opts.device)

    backbone = check_backbone(build("backbone", cfg.backbone), "backbone")
    tuning = finetune.apply(backbone, cfg.backbone)  # backbone.freeze, backbone.lora: before the optimiser sees it
    dataset = build("data", cfg.data, exclude=("loader",), input_size=backbone.input_size)
    head = build("head", cfg.head, embedding_size=backbone.embedding_size, num_classes=dataset.num_classes)
    backbone, head = backbone.to(device), head.to(device)
    pin = device.type == "cuda" if loader_cfg.pin_memory == "auto" else bool(loader_cfg.pin_memory)
    if isinstance(dataset, ShardFaces):  # a stream of shards: its plan is the sampler (frtrain.data.shard_stream)
        sampler = ShardStream(dataset, loader_cfg.batch_size, cfg.seed, D.rank(), D.world_size(), workers)
        loader = ShardLoader(sampler, workers, pin, loader_cfg.prefetch_factor)
    else:
        sampler = ResumableBatchSampler(len(dataset), loader_cfg.batch_size, cfg.seed, D.rank(), D.world_size())
        # worker seeds come from the loader's own generator, so the global RNG (dropout, Partial FC sampling)
        # advances the same way whether or not a run was interrupted and resumed
        loader = make_loader(dataset, sampler, workers, pin, loader_cfg.prefetch_factor,
                             generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch, total_steps = schedule_length(sampler.batches_per_epoch, opts)
    backbone_params = [p for p in backbone.parameters() if p.requires_grad]
    # trainer.backbone_lr_scale: the backbone's share of optim.lr (1.0: the plain group of every run before it)
    backbone_group = {"params": backbone_params}
    if opts.backbone_lr_scale != 1.0:
        backbone_group["lr"] = float(cfg.optim.lr) * opts.backbone_lr_scale
    optimizer = build("optim", cfg.optim)(([backbone_group] if backbone_params else []) + head.param_groups())
    schedule = build("sched", cfg.sched)(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    benchmarks = build_benchmarks(config.benchmark_nodes(cfg))
    finetune.log_counts(tuning, head)
    meta = model_meta(finetune.constructor_node(cfg.backbone),
                      OmegaConf.to_container(cfg.head, resolve=True), backbone, dataset.num_classes)
    log.info("output directory: %s; %d CPU threads, %d loader workers; head: %s", out_dir,
             torch.get_num_threads(), workers, head)
    return Trainer(backbone, head, dataset, sampler, loader, optimizer, scheduler, benchmarks,
                   embed_options(cfg.eval), opts, out_dir, meta,
                   total_steps, steps_per_epoch, seed=cfg.seed, eval_every=cfg.eval.every_steps,
                   eval_at_start=cfg.eval.at_start, select=cfg.eval.select,
                   final_only=tuple(cfg.eval.get("final_only") or ()), device=device,
                   provenance=run_provenance(cfg, backbone), analysis=tuple(cfg.eval.get("analysis") or ()),
                   target_margin_degrees=target_margin_degrees(OmegaConf.to_container(cfg.head, resolve=True)))


def run_provenance(cfg: DictConfig, backbone) -> dict:
    """The provenance results.json records: the evaluation settings, the benchmarks' files and the backbone's input
    convention (its checkpoints are written as it trains; their hashes are not part of the scores' record)."""
    record = settings_provenance(OmegaConf.to_container(cfg.eval, resolve=True), None, resolved_nodes(cfg))
    record["model"] = model_record("", backbone, {"backbone": finetune.constructor_node(cfg.backbone)})
    return record


def _task(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except BaseException:
        D.shutdown(wait=False)
        raise
    D.shutdown()
    first = next(iter(results.values()), None)
    return None if first is None else first["accuracy"]


def main(argv: list[str] | None = None) -> None:
    hydra_entry_point("frtrain-train", "train", _task, argv, doc=__doc__)


if __name__ == "__main__":
    main()
