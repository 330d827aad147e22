"""The training loop: :class:`Trainer` is handed built objects and runs, logs, evaluates and checkpoints.

Its phases have names: :meth:`~Trainer.restore` (resume or fine-tune), :meth:`~Trainer.fit` (the loop),
:meth:`~Trainer.train_micro_batch`, :meth:`~Trainer.optimizer_step`, :meth:`~Trainer.end_of_step` (the one
place where logging, evaluation and saving are decided), :meth:`~Trainer.evaluate`,
:meth:`~Trainer.state_dict` / :meth:`~Trainer.load_state_dict`, :meth:`~Trainer.save`, :meth:`~Trainer.close`.
It knows nothing about a particular head or data set: it moves uint8 image batches to the device,
normalises them with the backbone's mean/std, runs backbone and head, and steps optimiser and schedule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from frtrain import __version__
from frtrain import distributed as D
from frtrain.config import TrainerConfig
from frtrain.data.base import CorruptImages
from frtrain.data.transforms import normalize_batch
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import checkpoint_fields as fields
from frtrain.engine import sharded_state
from frtrain.errors import CheckpointError, ConfigError, FrtrainError, Interrupted, first_line
from frtrain.log_files import to_log_files
from frtrain.runtime import resolve_device, resolve_precision

log = logging.getLogger("frtrain")


#: on Ctrl-C, a checkpoint is written first when the newest one is older than this (seconds)
INTERRUPT_SAVE_AFTER_S = 120.0


class InterruptGuard:
    """Ctrl-C as KeyboardInterrupt, except inside :meth:`deferred` sections (a training step), where it waits until
    the section ends; a second Ctrl-C inside the section stops at once (``forced``).

    Python runs signal handlers in the main thread between bytecodes, so blocking the signal at the OS level would
    not protect a step; a handler that only sets a flag inside the section does. The training loader's workers
    ignore SIGINT (:func:`frtrain.data.loader.make_loader`), so the step in progress still gets its batches. Outside
    the main thread (tests that train in a thread) it does nothing.
    """

    def __init__(self):
        self.critical, self.pending, self.forced, self.previous = False, False, False, None

    def _handler(self, signum, frame):
        if self.critical and not self.pending:
            self.pending = True
            log.warning("Ctrl-C: stopping after this step (press it again to stop at once, without saving)")
        else:
            self.forced = self.critical
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        return False

    @contextlib.contextmanager
    def deferred(self):
        self.critical = True
        try:
            yield
        finally:
            self.critical = False

    def raise_pending(self) -> None:
        """Act on a Ctrl-C that came during the last deferred section."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


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


def schedule_length(batches_per_epoch: int, options: TrainerConfig) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps): ``max_steps``, or ``epochs`` x steps per epoch."""
    steps_per_epoch = batches_per_epoch // options.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"trainer.accumulate={options.accumulate} exceeds the {batches_per_epoch} batches of an epoch")
    if options.max_steps:
        return steps_per_epoch, int(options.max_steps)
    return steps_per_epoch, max(1, int(math.ceil(float(options.epochs) * steps_per_epoch)))


def model_meta(backbone_cfg: dict, head_cfg: dict, backbone, num_classes: int) -> dict:
    """What a checkpoint needs to rebuild and check the model without the run's config."""
    return {
        "frtrain_version": __version__, "backbone": backbone_cfg, "head": head_cfg, "num_classes": int(num_classes),
        "embedding_size": int(backbone.embedding_size), "input_size": list(backbone.input_size),
        "mean": list(backbone.mean), "std": list(backbone.std), "world_size": D.world_size(),
    }


def check_compatible(meta: dict, current: dict, path: str) -> None:
    """Refuse to resume a checkpoint of another backbone class, head or class count, naming both; the backbone's
    parameter shapes are compared when its weights are loaded (:func:`checkpoint.load_state_checked`)."""
    for what in ("backbone", "head"):
        old, new = (meta.get(what) or {}).get("_target_"), current[what].get("_target_")
        if old != new:
            raise CheckpointError(f"{path}: was trained with {what} {old}, this run builds {new}")
    if meta.get("num_classes") != current["num_classes"]:
        raise CheckpointError(
            f"{path}: has {meta.get('num_classes')} classes, the training data has {current['num_classes']}")


class Throughput:
    """Images/s and mean loss over a logging window, with evaluation and saving kept out of the time."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.started, self.paused_s, self.images, self.losses = time.perf_counter(), 0.0, 0, []

    def add(self, images: int, loss: float) -> None:
        self.images += images
        self.losses.append(loss)

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.started - self.paused_s, 1e-9)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(len(self.losses), 1)


class Trainer:
    """Fits ``backbone`` + ``head`` with the given loader, optimiser and schedule.

    Args:
        backbone, head: built modules (moved to ``device`` here).
        dataset, sampler, loader: the training data, its :class:`~frtrain.data.loader.ResumableBatchSampler`
            and the DataLoader over it.
        optimizer, scheduler: over ``backbone`` and ``head`` parameters; the scheduler steps once per
            optimiser step.
        benchmarks: what to score (each a benchmark with ``name`` and ``score(embedder)``), possibly empty.
        embed_options: keyword arguments of :class:`~frtrain.evaluation.embed.Embedder` (flip, batch_size,
            num_workers, memory_budget_mb, thresholds).
        options: ``trainer`` options (:class:`frtrain.config.TrainerConfig`).
        out_dir: the run directory (checkpoints/, tb/, results.json).
        meta: the model record saved in checkpoints (:func:`model_meta`).
        total_steps, steps_per_epoch: from :func:`schedule_length`.
        seed: of the run (re-seeding when resumed on another world size).
        eval_every, eval_at_start, select: when to score the benchmarks, and which one picks ``best.pt``.
        final_only: names of benchmarks scored only after the last step (not during training).
    """

    def __init__(self, backbone, head, dataset, sampler, loader, optimizer, scheduler, benchmarks, embed_options,
                 options: TrainerConfig, out_dir: str, meta: dict, total_steps: int, steps_per_epoch: int,
                 seed: int = 0, eval_every: int = 0, eval_at_start: bool = False, select: str | None = None,
                 final_only: tuple[str, ...] = (),
                 device: torch.device | None = None):
        self.opts, self.out_dir, self.meta, self.seed = options, out_dir, meta, int(seed)
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.device = device or resolve_device(options.device)
        self.amp_dtype = resolve_precision(options.precision, self.device)
        self.backbone, self.head = backbone.to(self.device), head.to(self.device)
        self.dataset, self.sampler, self.loader = dataset, sampler, loader
        self.optimizer, self.scheduler = optimizer, scheduler
        self.benchmarks, self.embed_options = list(benchmarks), dict(embed_options)
        self.image_cache: dict = {}  # decoded benchmark images, kept between evaluations
        self.total_steps, self.steps_per_epoch = int(total_steps), int(steps_per_epoch)
        self.accumulate = int(options.accumulate)
        self.batches_per_epoch = self.steps_per_epoch * self.accumulate  # leftovers that cannot fill a step are skipped
        self.eval_every = int(eval_every) if self.benchmarks else 0
        self.eval_at_start = bool(eval_at_start) and bool(self.benchmarks)
        self.final_only = tuple(final_only)
        periodic = [b.name for b in self.benchmarks if b.name not in self.final_only]
        # best.pt follows a benchmark scored during training (all final-only: the last step's model)
        self.select = select or (periodic[0] if periodic else None)
        self.is_main = D.is_main()

        if options.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.model = D.wrap_ddp(self.backbone, self.device)
        if options.compile:  # the training forward only: evaluation and checkpoints use the plain backbone
            self.model = torch.compile(self.model, mode=options.compile if isinstance(options.compile, str) else None)
        # the head's class rows are sharded over ranks; its other parameters (if any) are copies on every rank
        self.class_row_ids = {id(getattr(head, n)) for n in sharded_state.class_row_names(head)}
        self.head_replicated = [p for p in head.parameters() if id(p) not in self.class_row_ids]
        self.scaler = D.grad_scaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.state = TrainState(images_per_batch=sampler.batch_size * D.world_size())
        self.global_batch = self.state.images_per_batch * self.accumulate
        self.writer = SummaryWriter(os.path.join(out_dir, "tb")) if self.is_main else None
        self.corrupt = CorruptImages(dataset)
        self.meter = Throughput()
        self.history: dict[str, list] = {"eval": [], "loss": []}  # what results.json reports
        self.train_seconds = 0.0
        self.steps_run = 0  # optimiser steps taken by this process (a resumed run counts from 0)
        self.last_save, self.saving = time.monotonic(), False

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
            # the schedule is a function of the step: only that number is stored (LambdaLR.load_state_dict would copy
            # a file's entries into the scheduler object's attributes)
            "optimizer": optimizer, "lr_scheduler": {"last_epoch": int(self.scheduler.last_epoch)},
            "grad_scaler": self.scaler.state_dict(), "train_state": asdict(self.state), "rng": rng,
        }

    def load_state_dict(self, ckpt: dict, path: str) -> None:
        """Resume from ``ckpt`` on any number of ranks: this rank takes its slice of the class rows."""
        for key in ("head", "optimizer", "lr_scheduler", "grad_scaler", "train_state", "rng"):
            if key not in ckpt:
                raise CheckpointError(f"{path}: has no {key!r} field; it cannot resume a run (trainer.init_from takes "
                                      "weights only)")
        check_compatible(ckpt["meta"], self.meta, path)
        fields.tensor_mapping(ckpt["head"], path, "head")
        train_state = fields.check_train_state(ckpt["train_state"], path)
        states = fields.check_rng(ckpt["rng"], path)
        schedule_step = fields.scheduler_step(ckpt["lr_scheduler"], path)
        fields.check_grad_scaler(ckpt["grad_scaler"], path)
        ckpt_io.load_state_checked(self.backbone, ckpt["model"], path, "backbone")
        ckpt_io.load_state_checked(self.head, sharded_state.load_head(self.head, ckpt["head"], path), path, "head")
        optimizer_state = sharded_state.load_optimizer(self.optimizer, self.head, ckpt["optimizer"], path)
        fields.check_optimizer(optimizer_state, self.optimizer, path)
        try:
            self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this run ({first_line(e)})") from None
        self.restore_schedule(schedule_step)
        try:
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: its grad_scaler state does not fit trainer.precision="
                                  f"{self.opts.precision} ({first_line(e)})") from None
        images_per_batch = self.state.images_per_batch
        self.state = TrainState(**train_state)
        self.state.images_per_batch = images_per_batch
        saved_batch = int(ckpt["train_state"].get("images_per_batch") or images_per_batch)
        if saved_batch != images_per_batch:
            # another global batch (world size x batch size): continue at the same place of the epoch's
            # sample order, rounded down to an optimiser-step boundary
            seen = self.state.batch_in_epoch * saved_batch
            self.state.batch_in_epoch = seen // images_per_batch // self.accumulate * self.accumulate
            log.warning("%s: saved with %d images per batch over all ranks, this run has %d: the epoch resumes at "
                        "batch %d (image %d of its order); the run is not identical to an uninterrupted one",
                        path, saved_batch, images_per_batch, self.state.batch_in_epoch, seen)
        if len(states) == D.world_size():
            ckpt_io.set_rng_state(states[D.rank()])
        else:
            ckpt_io.set_rng_state(states[0])
            torch.manual_seed(self.seed * 1_000_003 + self.state.step * 1009 + D.rank())
            log.warning("%s: saved by %d ranks, this run has %d: random generators re-seeded from the step and rank",
                        path, len(states), D.world_size())

    def restore_schedule(self, step: int) -> None:
        """Put the learning-rate schedule at ``step``: the factor of each group's base rate at that step."""
        self.scheduler.last_epoch = step
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def init_weights(self, path: str) -> None:
        """Start from another model's weights (fine-tuning): ``trainer.init_from``.

        ``path``: a frtrain checkpoint (also one imported from insightface), or a plain backbone state dict
        (insightface's ``backbone.pth``, float16 allowed). The backbone must match exactly (strict load). The
        head's class vectors are taken when the checkpoint has a ``weight`` of this head's shape and
        ``trainer.init_head`` is true; a different class count is an error naming both numbers. Heads that
        keep nothing of that shape start fresh, and the log says so. Optimiser, schedule and step start anew.
        """
        from frtrain.engine.insightface import plain_state_dict

        path = os.path.abspath(os.path.expanduser(path))
        obj = ckpt_io.load_file(path)
        if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
            obj = ckpt_io.checked_checkpoint(obj, path)
            ckpt_io.load_state_checked(self.backbone, obj["model"], path, "backbone")
            head_state = obj.get("head") or {}
        else:
            ckpt_io.load_state_checked(self.backbone, plain_state_dict(obj, path), path, "backbone")
            head_state = {}
        weight = head_state.get("weight")
        own = getattr(self.head, "weight", None)
        if not self.opts.init_head or weight is None or own is None:
            why = ("trainer.init_head=false" if not self.opts.init_head else
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
        resume = self.opts.resume
        if resume in (None, "", "null", "none", "false"):
            return None
        if resume in ("auto", "latest", "true"):
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

    def restore(self) -> None:
        """Resume (``trainer.resume``) or, for a fresh run, start from other weights (``trainer.init_from``)."""
        path = self.resume_path()
        if path:
            self.load_state_dict(ckpt_io.load_checkpoint(path, mmap=True), path)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step, self.state.epoch,
                     self.state.batch_in_epoch)
        elif self.opts.init_from:
            self.init_weights(str(self.opts.init_from))

    def save(self, name: str | None = None) -> str | None:
        """Write a checkpoint on rank 0 (``step-N.pt``, or ``name``) and prune old step files; all ranks sync."""
        path = None
        self.saving = True
        try:
            state = self.state_dict()  # a collective: every rank takes part
            if self.is_main:
                path = os.path.join(self.ckpt_dir, name or f"step-{self.state.step:08d}.pt")
                ckpt_io.save_atomic(state, path)
                if name is None:
                    ckpt_io.prune(self.ckpt_dir, int(self.opts.keep_last))
            D.barrier()
        finally:
            self.saving = False
        if name is None:
            self.last_save = time.monotonic()
        return path

    # -- phases ---------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def micro_batches(self):
        """(images, labels, skipped) batches from the current place of the epoch's order (``state.epoch``,
        ``state.batch_in_epoch``); a new order once :meth:`end_of_step` rolls the epoch over."""
        while True:
            epoch = self.state.epoch
            self.sampler.set_epoch(epoch, self.state.batch_in_epoch)
            for batch in self.loader:
                yield batch
                if self.state.epoch != epoch:
                    break

    def train_micro_batch(self, images: torch.Tensor, labels: torch.Tensor, skipped: list[int]) -> None:
        """Forward and backward of one micro-batch (the loss scaled by 1/accumulate)."""
        x = normalize_batch(images.to(self.device, non_blocking=True), self.backbone.mean, self.backbone.std)
        if self.opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            embeddings = self.model(x)
        loss = self.head(embeddings, labels.to(self.device, non_blocking=True))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {float(loss.detach())} at step {self.state.step + 1}; lower optim.lr")
        self.scaler.scale(loss / self.accumulate).backward()
        self.state.batch_in_epoch += 1
        if skipped:
            first = not self.corrupt.seen
            self.corrupt.add(skipped)
            if first:  # say it at once; later ones are summarised per epoch
                self.corrupt.warn_new(f"step {self.state.step + 1}")
        try:
            self.corrupt.observe(images.shape[0], len(skipped))
        except FrtrainError:
            self.write_corrupt_list(sorted(set(self.corrupt.paths())))
            raise
        self.meter.add(images.shape[0] * D.world_size(), float(loss.detach()))

    def optimizer_step(self) -> float | None:
        """Combine, clip, step optimiser, scaler and schedule; returns the gradient norm when clipping."""
        grad_norm = None
        D.sum_gradients(self.head_replicated)  # each rank holds its share of their gradient
        if self.opts.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            rows = self.class_row_ids
            grad_norm = D.clip_grad_norm([p for p in params if id(p) not in rows],
                                         [p for p in params if id(p) in rows], float(self.opts.clip_grad_norm))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(f"gradient norm is {grad_norm} at step {self.state.step + 1}; lower optim.lr")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.head.after_optimizer_step()
        self.state.step += 1
        self.steps_run += 1
        self.state.images_seen += self.global_batch
        return grad_norm

    def end_of_step(self, progress, grad_norm: float | None) -> None:
        """Where a step ends: roll the epoch over at its end, log every ``log_every`` steps, evaluate every
        ``eval_every``, save every ``checkpoint_every`` (the last step's evaluation and checkpoint are :meth:`fit`'s)."""
        step, last = self.state.step, self.state.step >= self.total_steps
        if self.state.batch_in_epoch >= self.batches_per_epoch:  # leftovers that cannot fill a step are skipped
            self.corrupt.warn_new(f"epoch {self.state.epoch}")
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        progress.update(1)
        if step % int(self.opts.log_every) == 0 or last:
            self.log_step(progress, grad_norm)
        if last:
            return
        with self.meter.paused():  # keep evaluation and saving out of the images/s figure
            if self.eval_every and step % self.eval_every == 0:
                self.evaluate()
                self.backbone.train()
            if self.checkpoint_due(step):
                self.save()

    def checkpoint_due(self, step: int) -> bool:
        """Save at this step? Every ``checkpoint_every`` steps, and when ``checkpoint_minutes`` have passed since the
        last save (decided on rank 0 at logging steps and shared, so that every rank joins the same saves)."""
        if self.opts.checkpoint_every and step % int(self.opts.checkpoint_every) == 0:
            return True
        minutes = self.opts.checkpoint_minutes
        if not minutes or (D.is_distributed() and step % int(self.opts.log_every) != 0):
            return False
        return bool(D.broadcast_object(time.monotonic() - self.last_save >= 60.0 * float(minutes)))

    def fit(self) -> dict:
        """Train to ``total_steps`` (from where :meth:`restore` left the state), evaluate, save; returns the
        last verification results by benchmark name.

        Ctrl-C stops at a consistent state (an optimiser step is never cut in half; the micro-batches of an unfinished
        step are given back), saves a checkpoint when the last one is older than :data:`INTERRUPT_SAVE_AFTER_S` (one
        process), and raises :class:`~frtrain.errors.Interrupted` with the command line that resumes.
        """
        log.info("training %d steps (%d per epoch), global batch %d, %d classes, %d images, device %s, precision %s",
                 self.total_steps, self.steps_per_epoch, self.global_batch, self.head.num_classes, len(self.dataset),
                 self.device, self.amp_dtype or "fp32")
        if self.eval_at_start and self.state.step == 0:
            self.evaluate(final=False)
        self.backbone.train()
        self.head.train()
        started, batches = time.perf_counter(), self.micro_batches()
        progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                        disable=not (self.is_main and self.opts.progress), dynamic_ncols=True)
        interrupts = InterruptGuard()
        try:
            with interrupts:
                self.meter.reset()
                while self.state.step < self.total_steps:
                    with interrupts.deferred():  # a step (forward, backward, optimiser) is never cut in half
                        for _ in range(self.accumulate):
                            self.train_micro_batch(*next(batches))
                        grad_norm = self.optimizer_step()
                    self.end_of_step(progress, grad_norm)  # the step's log line, evaluation, checkpoint
                    interrupts.raise_pending()
                progress.close()
                self.train_seconds += time.perf_counter() - started
                results = self.evaluate(final=True)
                self.save()
                self.write_results(results)
                return results
        except KeyboardInterrupt:
            progress.close()
            self.interrupted(consistent=not interrupts.forced)
        finally:
            progress.close()
            self.close()

    def interrupted(self, consistent: bool) -> None:
        """After Ctrl-C: save when the last checkpoint is old (one process: a save is a collective the other ranks
        are not in) and the state is at a step boundary (not after a second Ctrl-C inside a step), and say how to
        resume."""
        saved = ""
        age = time.monotonic() - self.last_save
        newest = ckpt_io.latest_checkpoint(self.out_dir)
        if consistent and D.world_size() == 1 and self.steps_run > 0 and not self.saving and (
                newest is None or age >= INTERRUPT_SAVE_AFTER_S):
            try:
                saved = f"; saved {os.path.relpath(self.save(), os.getcwd())}"
            except (FrtrainError, KeyboardInterrupt):
                saved = "; the checkpoint could not be saved"
        elif newest is not None:
            saved = f"; newest checkpoint {os.path.basename(newest)}"
        where = (f"stopped at step {self.state.step} of {self.total_steps}" if consistent else
                 f"stopped inside step {self.state.step + 1} of {self.total_steps} (a second Ctrl-C)")
        raise Interrupted(f"{where}{saved}; resume with trainer.resume=auto hydra.run.dir={self.out_dir} (and the "
                          "same other options)") from None

    def evaluate(self, final: bool = False) -> dict:
        """Score the benchmarks on rank 0 (those in ``final_only`` only when ``final``), log them (scalars and
        ROC figures), keep ``best.pt`` for ``select``."""
        if not self.benchmarks:
            return {}
        results, improved = {}, False
        if self.is_main:
            from frtrain.evaluation.embed import Embedder, score_benchmarks

            embedder = Embedder(self.backbone, self.device, autocast_dtype=self.amp_dtype, image_cache=self.image_cache,
                                **self.embed_options)
            results = score_benchmarks(self.benchmarks, embedder, skip=() if final else self.final_only)
            for name, r in results.items():
                self.log_result(name, r)
            best = results[self.select].accuracy if self.select in results else None
            if best is not None and best > self.state.best_score:
                self.state.best_score, self.state.best_step, improved = best, self.state.step, True
        if D.broadcast_object(improved):
            self.save("best.pt")
        return results

    def log_result(self, name: str, r) -> None:
        from frtrain.evaluation.report import roc_figure

        step = self.state.step
        for key, value in r.scalars().items():
            if value is not None:
                self.writer.add_scalar(f"val/{name}/{key}", value, step)
        self.writer.add_figure(f"val/{name}/roc", roc_figure(r), step)
        log.info("step %d  %s: %s  auc %.4f", step, name, r.headline(), r.auc)
        self.history["eval"].append({**r.scalars(), "step": step, "benchmark": name, "accuracy": r.accuracy})

    def log_step(self, progress, grad_norm: float | None) -> None:
        loss, speed = self.meter.mean_loss(), self.meter.images_per_second()
        lr = self.optimizer.param_groups[0]["lr"]
        self.meter.reset()
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
        if not self.is_main:
            return
        step = self.state.step
        line = (f"step {step}/{self.total_steps}  epoch {self.state.epoch}  loss {loss:.4f}  lr {lr:.4g}  "
                f"{speed:.0f} images/s" + (f"  grad_norm {grad_norm:.3g}" if grad_norm is not None else ""))
        if progress.disable:
            log.info(line)
        else:  # the console has the progress bar; the log file gets the line
            to_log_files(line)
        self.history["loss"].append({"step": step, "loss": loss, "lr": lr, "images_per_sec": speed})
        for key, value in (("loss", loss), ("lr", lr), ("images_per_sec", speed),
                           ("corrupt_images_skipped", len(self.corrupt)), ("grad_norm", grad_norm)):
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        for key, value in getattr(self.head, "stats", {}).items():
            self.writer.add_scalar(f"head/{key}", float(value), step)

    def write_results(self, results: dict) -> None:
        """``results.json`` in the run directory (final and best scores, history, time, corrupt images),
        ``pairs/<benchmark>.npz`` (each pair's cosine, label, fold and outcome at the final evaluation: what
        frtrain-compare pairs up) and ``corrupt_images.txt`` (every skipped file, once) when there were any."""
        self.corrupt.warn_new("end of training")
        gathered = D.gather_objects(self.corrupt.paths())
        if not self.is_main:
            return
        corrupt = sorted({p for paths in gathered for p in paths})
        self.write_corrupt_list(corrupt)
        for name, r in results.items():
            if r.per_pair:
                os.makedirs(os.path.join(self.out_dir, "pairs"), exist_ok=True)
                np.savez(os.path.join(self.out_dir, "pairs", f"{name}.npz"), **r.per_pair)
        summary = {
            "final": {name: r.to_dict() for name, r in results.items()},
            "best": {"score": self.state.best_score, "step": self.state.best_step,
                     "checkpoint": os.path.join(self.ckpt_dir, "best.pt") if self.state.best_step >= 0 else None},
            "steps": self.state.step,
            "train_seconds": self.train_seconds,
            "corrupt_images_skipped": len(corrupt),
            "history": self.history,
        }
        path = os.path.join(self.out_dir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)

    def write_corrupt_list(self, corrupt: list[str]) -> None:
        """``corrupt_images.txt``: every skipped file, once (rank 0)."""
        if not corrupt or not self.is_main:
            return
        with open(os.path.join(self.out_dir, "corrupt_images.txt"), "w") as f:
            f.write("\n".join(corrupt) + "\n")
        log.warning("%d corrupt images were skipped (listed in %s)", len(corrupt),
                    os.path.join(self.out_dir, "corrupt_images.txt"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
