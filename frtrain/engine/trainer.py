"""The training loop: named phases (train_step, evaluate, state_dict, load_state_dict, save, close).

The trainer knows nothing about a particular head or data set: it moves uint8 image batches to the
device, normalises them with the backbone's mean/std, runs backbone and head, steps the optimiser and
schedule, logs, evaluates, and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from frtrain import __version__
from frtrain.data.loader import ResumableBatchSampler, make_loader
from frtrain.data.transforms import normalize_batch
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import distributed as D
from frtrain.engine import sharded_state
from frtrain.engine.build import build
from frtrain.errors import CheckpointError, ConfigError, FrtrainError

log = logging.getLogger("frtrain")

_LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "prefetch_factor")
#: backbone options that change parameter shapes; a checkpoint must agree on them to be resumed
_STRUCTURAL_BACKBONE_KEYS = ("_target_", "depth", "layers", "width", "embedding_size", "input_size", "blocks", "scale", "name")


class TrainingDiverged(FrtrainError):
    """The loss or gradient norm became NaN or infinite."""


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed (at an optimiser-step boundary)
    best_score: float = -1.0
    best_step: int = -1
    images_seen: int = 0
    images_per_batch: int = 0  # images of one micro-batch over all ranks (batch_size x world size)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{D.local_rank()}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None for fp32). ``auto`` is bf16 on CUDA when supported, fp16 otherwise, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision={name!r}: expected auto, fp32, bf16 or fp16")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp32":
        return None
    if device.type != "cuda":
        raise ConfigError(f"trainer.precision={name}: mixed precision is for CUDA; use fp32 (or auto) on {device.type}")
    return torch.bfloat16 if name == "bf16" else torch.float16


def model_meta(cfg: DictConfig, backbone, num_classes: int) -> dict:
    """What a checkpoint needs to rebuild and check the model without the run's config."""
    return {
        "frtrain_version": __version__,
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "head": OmegaConf.to_container(cfg.head, resolve=True),
        "num_classes": int(num_classes),
        "embedding_size": int(backbone.embedding_size),
        "input_size": list(backbone.input_size),
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "world_size": D.world_size(),
    }


def check_compatible(meta: dict, current: dict, path: str) -> None:
    """Refuse to resume a checkpoint of another backbone, head or class count, naming both."""
    old_b, new_b = meta.get("backbone", {}), current["backbone"]
    for key in _STRUCTURAL_BACKBONE_KEYS:
        if old_b.get(key) != new_b.get(key):
            raise CheckpointError(
                f"{path}: was trained with backbone {old_b.get('_target_')} ({key}={old_b.get(key)!r}), "
                f"this run builds {new_b.get('_target_')} ({key}={new_b.get(key)!r})"
            )
    old_h, new_h = meta.get("head", {}).get("_target_"), current["head"].get("_target_")
    if old_h != new_h:
        raise CheckpointError(f"{path}: was trained with head {old_h}, this run builds {new_h}")
    if meta.get("num_classes") != current["num_classes"]:
        raise CheckpointError(
            f"{path}: has {meta.get('num_classes')} classes, the training data has {current['num_classes']}"
        )


class Trainer:
    """Fits ``backbone`` + ``head`` on ``dataset`` as the config says; see ``configs/trainer/default.yaml``."""

    def __init__(self, cfg: DictConfig, backbone: torch.nn.Module, head, dataset, verifier, out_dir: str):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.out_dir = out_dir
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.device = resolve_device(self.tcfg.device)
        self.amp_dtype = resolve_precision(self.tcfg.precision, self.device)
        self.backbone = backbone.to(self.device)
        self.head = head.to(self.device)
        self.dataset, self.verifier = dataset, verifier
        self.is_main = D.is_main()
        self.meta = model_meta(cfg, backbone, dataset.num_classes)
        self.accumulate = int(self.tcfg.accumulate)
        if self.accumulate < 1:
            raise ConfigError(f"trainer.accumulate={self.accumulate}: expected a positive integer")

        self.channels_last = self.tcfg.get("channels_last", False)
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"trainer.channels_last={self.channels_last!r}: expected true or false")
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.model = D.wrap_ddp(self.backbone, self.device)
        if self.tcfg.get("compile"):
            # the training forward only: evaluation and checkpoints use the plain backbone (same weights)
            mode = self.tcfg.compile if isinstance(self.tcfg.compile, str) else None
            if mode not in (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
                raise ConfigError(f"trainer.compile={mode!r}: expected true, false or a torch.compile mode "
                                  "(default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs)")
            self.model = torch.compile(self.model, mode=mode)

        batch_size = int(cfg.data.batch_size)
        self.sampler = ResumableBatchSampler(len(dataset), batch_size, seed=int(cfg.seed), rank=D.rank(),
                                             world_size=D.world_size())
        pin = cfg.data.get("pin_memory", "auto")
        pin = self.device.type == "cuda" if pin == "auto" else bool(pin)
        # the loader draws its worker seeds from its own generator, so the global RNG (dropout, Partial FC
        # sampling) advances the same way whether or not a run was interrupted and resumed
        self.loader = make_loader(dataset, self.sampler, cfg.data.num_workers, pin,
                                  int(cfg.data.get("prefetch_factor", 2)),
                                  generator=torch.Generator().manual_seed(int(cfg.seed)))
        self.steps_per_epoch = self.sampler.batches_per_epoch // self.accumulate
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"trainer.accumulate={self.accumulate} exceeds the {self.sampler.batches_per_epoch} batches of an epoch"
            )
        if self.tcfg.max_steps:
            self.total_steps = int(self.tcfg.max_steps)
        else:
            self.total_steps = max(1, int(math.ceil(float(self.tcfg.epochs) * self.steps_per_epoch)))

        # the head's class rows are sharded over ranks; its other parameters (if any) are copies on every rank
        self.class_row_ids = {id(getattr(self.head, n)) for n in sharded_state.class_row_names(self.head)}
        self.head_replicated = [p for p in self.head.parameters() if id(p) not in self.class_row_ids]
        groups = [{"params": [p for p in self.backbone.parameters() if p.requires_grad]}] + self.head.param_groups()
        self.optimizer = build("optim", cfg.optim)(groups)
        self.lr_lambda = build("sched", cfg.sched)(total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        self.scaler = D.grad_scaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.state = TrainState(images_per_batch=batch_size * D.world_size())
        self.writer = SummaryWriter(os.path.join(out_dir, "tb")) if self.is_main else None
        self.corrupt_skipped = 0
        self.last_results: dict = {}
        # what results.json reports: verification scores and training losses over steps
        self.history: dict[str, list] = {"eval": [], "loss": []}
        self.train_seconds = 0.0

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        """The checkpoint (see :mod:`frtrain.engine.checkpoint`) on rank 0, None on the other ranks.

        A collective: every rank calls it. The head's class rows and their optimiser state are gathered
        whole (:mod:`frtrain.engine.sharded_state`), and ``rng`` lists every rank's generator states.
        """
        head = sharded_state.save_head(self.head)
        optimizer = sharded_state.save_optimizer(self.optimizer, self.head)
        rng = D.gather_objects(ckpt_io.rng_state())
        if not self.is_main:
            return None
        return {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "meta": self.meta,
            # contiguous: the standard layout, whatever the training layout (trainer.channels_last)
            "model": {k: v.contiguous() for k, v in self.backbone.state_dict().items()}, "head": head,
            "optimizer": optimizer, "lr_scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(), "train_state": asdict(self.state), "rng": rng,
        }

    def load_state_dict(self, ckpt: dict, path: str) -> None:
        """Resume from ``ckpt`` on any number of ranks: this rank takes its slice of the class rows."""
        check_compatible(ckpt["meta"], self.meta, path)
        ckpt_io.load_state_checked(self.backbone, ckpt["model"], path, "backbone")
        ckpt_io.load_state_checked(self.head, sharded_state.load_head(self.head, ckpt["head"], path), path, "head")
        try:
            self.optimizer.load_state_dict(sharded_state.load_optimizer(self.optimizer, self.head, ckpt["optimizer"],
                                                                        path))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this run ({e})") from None
        self.scheduler.load_state_dict(ckpt["lr_scheduler"])
        self.scaler.load_state_dict(ckpt["grad_scaler"])
        images_per_batch = self.state.images_per_batch
        self.state = TrainState(**ckpt["train_state"])
        self.state.images_per_batch = images_per_batch
        saved_batch = int(ckpt["train_state"].get("images_per_batch") or images_per_batch)
        if saved_batch != images_per_batch:
            # another global batch (world size x data.batch_size): continue at the same place of the epoch's
            # sample order, rounded down to an optimiser-step boundary
            seen = self.state.batch_in_epoch * saved_batch
            self.state.batch_in_epoch = seen // images_per_batch // self.accumulate * self.accumulate
            log.warning("%s: saved with %d images per batch over all ranks, this run has %d: the epoch resumes at "
                        "batch %d (image %d of its order); the run is not identical to an uninterrupted one",
                        path, saved_batch, images_per_batch, self.state.batch_in_epoch, seen)
        states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if len(states) == D.world_size():
            ckpt_io.set_rng_state(states[D.rank()])
        else:
            ckpt_io.set_rng_state(states[0])
            torch.manual_seed(int(self.cfg.seed) * 1_000_003 + self.state.step * 1009 + D.rank())
            log.warning("%s: saved by %d ranks, this run has %d: random generators re-seeded from the step and rank",
                        path, len(states), D.world_size())

    def init_weights(self, path: str) -> None:
        """Start from another model's weights (fine-tuning): ``trainer.init_from``.

        ``path``: a frtrain checkpoint (also one imported from insightface), or a plain backbone state dict
        (insightface's ``backbone.pth``, float16 allowed). The backbone must match exactly (strict load). The
        head's class vectors are taken when the checkpoint has a ``weight`` of this head's shape and
        ``trainer.init_head`` is true; a different class count is an error naming both numbers. Heads that
        keep nothing of that shape start fresh, and the log says so. Optimiser, schedule and step start anew.
        """
        from frtrain.interop import plain_state_dict

        path = os.path.abspath(os.path.expanduser(path))
        obj = ckpt_io.load_file(path)
        if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
            ckpt_io.load_state_checked(self.backbone, obj["model"], path, "backbone")
            head_state = obj.get("head") or {}
        else:
            ckpt_io.load_state_checked(self.backbone, plain_state_dict(obj, path), path, "backbone")
            head_state = {}
        weight = head_state.get("weight")
        own = getattr(self.head, "weight", None)
        if not self.tcfg.get("init_head", True) or weight is None or own is None:
            why = ("trainer.init_head=false" if not self.tcfg.get("init_head", True) else
                   "the checkpoint has no class vectors" if weight is None else "this head keeps no class vectors")
            log.info("init_from %s: backbone loaded; the head starts fresh (%s)", path, why)
            return
        if weight.ndim != 2 or weight.shape[1] != own.shape[1]:
            log.info("init_from %s: backbone loaded; the head starts fresh (its class vectors are %s, this head's "
                     "rows have width %d)", path, tuple(weight.shape), own.shape[1])
            return
        if weight.shape[0] != self.head.num_classes:
            raise CheckpointError(f"{path}: has class vectors for {weight.shape[0]} classes, the training data has "
                                  f"{self.head.num_classes}; set trainer.init_head=false to start the head fresh")
        start = self.head.class_start
        with torch.no_grad():
            own.copy_(weight[start:start + own.shape[0]].to(own.dtype))
        log.info("init_from %s: backbone and the %d class vectors loaded", path, weight.shape[0])

    def resume_path(self) -> str | None:
        resume = self.tcfg.resume
        if resume in (None, False, "", "null", "none"):
            return None
        if resume in (True, "auto", "latest"):
            return ckpt_io.latest_checkpoint(self.out_dir)
        path = os.path.abspath(os.path.expanduser(str(resume)))
        if os.path.isdir(path):
            found = ckpt_io.latest_checkpoint(path)
            if found is None:
                raise CheckpointError(f"trainer.resume={resume}: no step-N.pt checkpoint in that directory")
            return found
        if not os.path.isfile(path):
            raise CheckpointError(f"trainer.resume={resume}: no such file or directory")
        return path

    def save(self, name: str | None = None) -> str | None:
        """Write a checkpoint on rank 0 (``step-N.pt``, or ``name``) and prune old step files; all ranks sync."""
        path = None
        state = self.state_dict()  # a collective: every rank takes part
        if self.is_main:
            path = os.path.join(self.ckpt_dir, name or f"step-{self.state.step:08d}.pt")
            ckpt_io.save_atomic(state, path)
            if name is None:
                ckpt_io.prune(self.ckpt_dir, int(self.tcfg.keep_last))
        D.barrier()
        return path

    # -- phases ---------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(images.to(self.device, non_blocking=True), self.backbone.mean, self.backbone.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            embeddings = self.model(x)
        return self.head(embeddings, labels.to(self.device, non_blocking=True))

    def optimizer_step(self) -> float | None:
        grad_norm = None
        D.sum_gradients(self.head_replicated)  # each rank holds its share of their gradient
        if self.tcfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            rows = self.class_row_ids
            grad_norm = D.clip_grad_norm([p for p in params if id(p) not in rows],
                                         [p for p in params if id(p) in rows], float(self.tcfg.clip_grad_norm))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(f"gradient norm is {grad_norm} at step {self.state.step + 1}; lower optim.lr")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        return grad_norm

    def evaluate(self) -> dict:
        """Score the benchmarks on rank 0, log them, and keep ``best.pt`` for the selected benchmark."""
        if self.verifier is None:
            return {}
        results = {}
        if self.is_main:
            results = self.verifier.run(self.backbone, self.device, self.amp_dtype)
            for name, r in results.items():
                for key, value in (("accuracy", r.accuracy), ("accuracy_std", r.accuracy_std), ("auc", r.auc),
                                   ("eer", r.eer), ("threshold", r.threshold), ("xnorm", r.xnorm)):
                    if value is not None:
                        self.writer.add_scalar(f"val/{name}/{key}", value, self.state.step)
                for far, tar in r.tar_at_far.items():
                    if tar is not None:
                        self.writer.add_scalar(f"val/{name}/tar@far={far}", tar, self.state.step)
                log.info("step %d  %s: accuracy %.2f%% ± %.2f  auc %.4f  eer %.2f%%", self.state.step, name,
                         100 * r.accuracy, 100 * r.accuracy_std, r.auc, 100 * r.eer)
                self.history["eval"].append({"step": self.state.step, "benchmark": name, "accuracy": r.accuracy,
                                             "accuracy_std": r.accuracy_std, "auc": r.auc, "eer": r.eer})
        select = self.cfg.eval.get("select") or (self.verifier.benchmarks[0].name if self.verifier.benchmarks else None)
        improved = False
        if self.is_main and select is not None:
            if select not in results:
                raise ConfigError(f"eval.select={select!r} is not one of the benchmarks {sorted(results)}")
            if results[select].accuracy > self.state.best_score:
                self.state.best_score, self.state.best_step = results[select].accuracy, self.state.step
                improved = True
        if D.broadcast_object(improved):
            self.save("best.pt")
        self.last_results = results
        return results

    def log_step(self, loss: float, lr: float, images_per_sec: float, grad_norm: float | None) -> None:
        if not self.is_main:
            return
        step = self.state.step
        self.history["loss"].append({"step": step, "loss": loss, "lr": lr, "images_per_sec": images_per_sec})
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/images_per_sec", images_per_sec, step)
        self.writer.add_scalar("train/corrupt_images_skipped", self.corrupt_skipped, step)
        if grad_norm is not None:
            self.writer.add_scalar("train/grad_norm", grad_norm, step)
        for key, value in getattr(self.head, "stats", {}).items():
            self.writer.add_scalar(f"head/{key}", float(value), step)

    def fit(self) -> dict:
        """Train to ``total_steps`` (resuming first if asked), evaluate, save; returns the last results."""
        path = self.resume_path()
        if not path and self.tcfg.get("init_from"):
            self.init_weights(str(self.tcfg.init_from))
        if path:
            self.load_state_dict(ckpt_io.load_checkpoint(path, mmap=True), path)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step, self.state.epoch,
                     self.state.batch_in_epoch)
        tcfg = self.tcfg
        global_batch = int(self.cfg.data.batch_size) * D.world_size() * self.accumulate
        batches_per_epoch = self.steps_per_epoch * self.accumulate  # leftovers that cannot fill a step are skipped
        log.info("training %d steps (%d per epoch), global batch %d, %d classes, %d images, device %s, precision %s",
                 self.total_steps, self.steps_per_epoch, global_batch, self.dataset.num_classes, len(self.dataset),
                 self.device, self.amp_dtype or "fp32")
        eval_every = int(self.cfg.eval.get("every_steps") or 0) if self.verifier else 0
        if self.cfg.eval.get("at_start") and self.state.step == 0:
            self.evaluate()
        self.backbone.train()
        self.head.train()
        started = time.perf_counter()
        progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                        disable=not (self.is_main and tcfg.progress), dynamic_ncols=True)
        window_start, window_images, loss_sum, micro = time.perf_counter(), 0, 0.0, 0
        try:
            while self.state.step < self.total_steps:
                self.sampler.set_epoch(self.state.epoch, self.state.batch_in_epoch)
                for images, labels, skipped in self.loader:
                    if self.state.batch_in_epoch >= batches_per_epoch:
                        break
                    loss = self.forward_loss(images, labels)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"loss is {float(loss.detach())} at step {self.state.step + 1}; lower optim.lr")
                    self.scaler.scale(loss / self.accumulate).backward()
                    self.state.batch_in_epoch += 1
                    self.corrupt_skipped += int(skipped.sum())
                    window_images += images.shape[0] * D.world_size()
                    loss_sum += float(loss.detach())
                    micro += 1
                    if self.state.batch_in_epoch % self.accumulate:
                        continue
                    grad_norm = self.optimizer_step()
                    self.state.images_seen += global_batch
                    progress.update(1)
                    step = self.state.step
                    if step % int(tcfg.log_every) == 0 or step == self.total_steps:
                        elapsed = time.perf_counter() - window_start
                        lr = self.optimizer.param_groups[0]["lr"]
                        speed = window_images / max(elapsed, 1e-9)
                        self.log_step(loss_sum / micro, lr, speed, grad_norm)
                        progress.set_postfix(loss=f"{loss_sum / micro:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
                        window_start, window_images, loss_sum, micro = time.perf_counter(), 0, 0.0, 0
                    paused = False
                    if eval_every and step % eval_every == 0 and step < self.total_steps:
                        self.evaluate()
                        self.backbone.train()
                        paused = True
                    if tcfg.checkpoint_every and step % int(tcfg.checkpoint_every) == 0 and step < self.total_steps:
                        self.save()
                        paused = True
                    if paused:  # keep evaluation and saving out of the images/s figure
                        window_start, window_images = time.perf_counter(), 0
                    if step >= self.total_steps:
                        break
                if self.state.batch_in_epoch >= batches_per_epoch:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
            progress.close()
            self.train_seconds += time.perf_counter() - started
            results = self.evaluate()
            self.save()
            self.write_results(results)
            if self.corrupt_skipped:
                log.warning("%d corrupt images were skipped during training (see the warnings above)", self.corrupt_skipped)
            return results
        finally:
            progress.close()
            self.close()

    def write_results(self, results: dict) -> None:
        """``results.json`` in the run directory: final and best scores, history, time taken."""
        if not self.is_main:
            return
        summary = {
            "final": {name: r.to_dict() for name, r in results.items()},
            "best": {"score": self.state.best_score, "step": self.state.best_step,
                     "checkpoint": os.path.join(self.ckpt_dir, "best.pt") if self.state.best_step >= 0 else None},
            "steps": self.state.step,
            "train_seconds": self.train_seconds,
            "corrupt_images_skipped": self.corrupt_skipped,
            "history": self.history,
        }
        path = os.path.join(self.out_dir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
