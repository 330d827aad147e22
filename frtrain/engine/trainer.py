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
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from frtrain import distributed as D
from frtrain.config import TrainerConfig
from frtrain.data.base import CorruptImages
from frtrain.data.transforms import normalize_batch
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import checkpoint_fields as fields
from frtrain.engine import finetune
from frtrain.engine import sharded_state
from frtrain.engine.interrupts import InterruptGuard
from frtrain.engine.model_record import check_compatible
from frtrain.engine.run_log import RunLog, Throughput
from frtrain.engine.watchdog import Watchdog, WatchdogStopped, chance_loss, gradient_norm
from frtrain.errors import CheckpointError, FrtrainError, Interrupted, first_line
from frtrain.runtime import resolve_device, resolve_precision

log = logging.getLogger("frtrain")


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
        provenance: what decides the scores (:mod:`frtrain.evaluation.provenance`), written to results.json.
        analysis: geometry measures logged at each evaluation (:mod:`frtrain.evaluation.training_geometry`), with the
            head's ``target_margin_degrees``.
    """

    def __init__(self, backbone, head, dataset, sampler, loader, optimizer, scheduler, benchmarks, embed_options,
                 options: TrainerConfig, out_dir: str, meta: dict, total_steps: int, steps_per_epoch: int,
                 seed: int = 0, eval_every: int = 0, eval_at_start: bool = False, select: str | None = None,
                 final_only: tuple[str, ...] = (),
                 device: torch.device | None = None, provenance: dict | None = None, analysis: tuple = (),
                 target_margin_degrees: float | None = None):
        self.opts, self.out_dir, self.meta, self.seed = options, out_dir, meta, int(seed)
        self.checkpointer = ckpt_io.Checkpointer(out_dir, options)
        self.ckpt_dir = self.checkpointer.dir
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
        self.log = RunLog(out_dir, self.is_main, self.total_steps, provenance)
        self.geometry = None
        if analysis and self.is_main:
            from frtrain.evaluation.training_geometry import TrainingGeometry

            self.geometry = TrainingGeometry(dataset, analysis, target_margin_degrees)
        self.corrupt = CorruptImages(dataset)
        schedule = scheduler.lr_lambdas[0] if getattr(scheduler, "lr_lambdas", None) else None
        self.schedule_factor = schedule if callable(schedule) else (lambda step: 1.0)
        self.base_lr = float(getattr(scheduler, "base_lrs", [optimizer.param_groups[0]["lr"]])[0])
        self.watchdog = Watchdog(options.watchdog, options.watch, out_dir, self.log.writer, self.total_steps,
                                 int(getattr(schedule, "warmup_steps", 0) or 0), quiet=not self.is_main)
        self.meter = Throughput()
        self.train_seconds = 0.0
        self.steps_run = 0  # optimiser steps taken by this process (a resumed run counts from 0)

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
            # contiguous: the standard layout, whatever the training layout (trainer.channels_last); plain weights
            # (LoRA merged) for every reader, and a LoRA run's adapted state to resume from
            "model": {k: v.contiguous() for k, v in finetune.plain_state_dict(self.backbone).items()},
            **({"model_adapted": {k: v.contiguous() for k, v in self.backbone.state_dict().items()}}
               if finetune.has_lora(self.backbone) else {}),
            "head": head,
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
        if finetune.has_lora(self.backbone):
            if "model_adapted" not in ckpt:
                raise CheckpointError(f"{path}: has no LoRA adapters ('model_adapted'); this run adds them "
                                      "(backbone.lora.rank): start it with trainer.init_from instead")
            fields.tensor_mapping(ckpt["model_adapted"], path, "model_adapted")
            ckpt_io.load_state_checked(self.backbone, ckpt["model_adapted"], path, "backbone")
        else:
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

    def save(self, name: str | None = None) -> str | None:
        """A checkpoint of this state (``step-N.pt``, or ``name``) through the checkpointer; a collective."""
        return self.checkpointer.save(self.state_dict, self.state.step, name)

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
        warmup = self.state.step < self.opts.head_warmup_steps  # fine-tuning: the head learns on a frozen backbone
        if self.backbone.training == warmup:  # eval mode while the head warms up, training mode after
            self.backbone.train(not warmup)
        with self.autocast(), (torch.no_grad() if warmup else contextlib.nullcontext()):
            embeddings = self.model(x)
        labels = labels.to(self.device, non_blocking=True)
        loss = self.head(embeddings, labels)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {float(loss.detach())} at step {self.state.step + 1}; lower optim.lr")
        self.scaler.scale(loss / self.accumulate).backward()
        step = self.state.step + 1
        self.watchdog.micro_batch(step, float(loss.detach()), embeddings)
        if self.watchdog.need_chance_loss(step):
            with self.autocast():  # the loss against the same head with the labels shuffled
                self.watchdog.chance(step, float(loss.detach()), chance_loss(self.head, embeddings, labels))
        self.state.batch_in_epoch += 1
        if skipped:
            first = not self.corrupt.seen
            self.corrupt.add(skipped)
            if first:  # say it at once; later ones are summarised per epoch
                self.corrupt.warn_new(f"step {self.state.step + 1}")
        try:
            self.corrupt.observe(images.shape[0], len(skipped))
        except FrtrainError:
            self.log.write_corrupt_list(sorted(set(self.corrupt.paths())))
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
        elif self.watchdog.active:  # this process's gradients, unscaled (the spike check)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = gradient_norm(params, float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.head.after_optimizer_step()
        self.state.step += 1
        self.steps_run += 1
        self.state.images_seen += self.global_batch
        self.watchdog.step(self.state.step, self.optimizer.param_groups[0]["lr"],
                           self.base_lr * float(self.schedule_factor(self.state.step)), grad_norm)
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
            loss, speed = self.meter.mean_loss(), self.meter.images_per_second()
            self.meter.reset()
            self.log.step(self.state, progress, loss, self.optimizer.param_groups[0]["lr"], speed, grad_norm,
                          len(self.corrupt), getattr(self.head, "stats", {}))
        self.stop_if_the_watchdog_says()  # before this step's evaluation and checkpoint
        if last:
            return
        with self.meter.paused():  # keep evaluation and saving out of the images/s figure
            if self.eval_every and step % self.eval_every == 0:
                self.evaluate()
                self.backbone.train()
            if self.checkpointer.due(step):
                self.save()

    def fit(self) -> dict:
        """Train to ``total_steps`` (from where :meth:`restore` left the state), evaluate, save; returns the
        last verification results by benchmark name.

        Ctrl-C stops at a consistent state (an optimiser step is never cut in half; the micro-batches of an unfinished
        step are given back), saves a checkpoint when the last one is old (:meth:`Checkpointer.save_on_interrupt`), and raises :class:`~frtrain.errors.Interrupted` with the command line that resumes.
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
                self.corrupt.warn_new("end of training")
                gathered = D.gather_objects(self.corrupt.paths())
                best = os.path.join(self.ckpt_dir, "best.pt") if self.state.best_step >= 0 else None
                corrupt = sorted({p for paths in gathered for p in paths}) if gathered is not None else []  # rank 0
                self.log.write_results(results, self.state, best, self.train_seconds, corrupt, self.watchdog.fired)
                return results
        except KeyboardInterrupt:
            progress.close()
            self.interrupted(consistent=not interrupts.forced)
        finally:
            progress.close()
            self.close()

    def stop_if_the_watchdog_says(self) -> None:
        """With ``trainer.watchdog=stop``: raise :class:`WatchdogStopped` once a check has fired during the steps (rank
        0's checks decide; with several ranks they agree at logging steps), naming the newest checkpoint, which is
        kept (the step that fired is not saved). A check that fires at the final evaluation only goes into results.json: the run is complete."""
        if self.watchdog.mode != "stop":
            return
        reason = self.watchdog.pending_stop
        if D.world_size() > 1:
            if self.state.step % int(self.opts.log_every) and self.state.step < self.total_steps:
                return
            reason = D.broadcast_object(reason)
        if reason is None:
            return
        newest = self.checkpointer.newest()
        raise WatchdogStopped(f"watchdog (trainer.watchdog=stop): {reason}; the current state was not saved; newest "
                              f"checkpoint: {newest or 'none yet'} (trainer.watchdog=warn to go on)")

    def interrupted(self, consistent: bool) -> None:
        """After Ctrl-C: save if the checkpointer says so (:meth:`Checkpointer.save_on_interrupt`), and say how to
        resume."""
        saved = self.checkpointer.save_on_interrupt(self.state_dict, self.state.step, consistent and self.steps_run > 0)
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
            if D.world_size() == 1:  # closed-set protocols score with the whole head (sharded over ranks otherwise)
                from frtrain.evaluation.closed_set import class_scorer

                embedder.classifier = class_scorer(self.head.state_dict())
            results = score_benchmarks(self.benchmarks, embedder, skip=() if final else self.final_only)
            for name, r in results.items():
                self.log.result(self.state.step, name, r)
                if r.roc.get("fpr"):  # a verification protocol: chance is 50%
                    self.watchdog.evaluation(self.state.step, name, r.accuracy)
            if self.geometry is not None:
                self.log_geometry(embedder)
            best = results[self.select].accuracy if self.select in results else None
            if best is not None and best > self.state.best_score:
                self.state.best_score, self.state.best_step, improved = best, self.state.step, True
        if D.broadcast_object(improved):
            self.save("best.pt")
        return results

    def log_geometry(self, embedder) -> None:
        """The geometry measures of the model now (rank 0), against the head's class vectors (one process only:
        sharded otherwise), to TensorBoard and results.json."""
        rows = None
        if D.world_size() == 1:
            weight = next((v for k, v in self.head.state_dict().items() if k.endswith("weight") and v.ndim == 2), None)
            rows = None if weight is None else weight.detach().float().cpu().numpy()
        record, arrays = self.geometry.measure(embedder, rows)
        self.log.geometry(self.state.step, record, arrays)

    def restore(self) -> None:
        """Resume or fine-tune as ``trainer.resume`` / ``trainer.init_from`` say (:class:`Checkpointer`)."""
        self.checkpointer.restore(self)

    def close(self) -> None:
        self.log.close()
