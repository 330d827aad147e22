"""The trainer's watchdog: checks that a run is learning, each with a one-line diagnosis (``trainer.watchdog``).

Checks (thresholds in ``trainer.watch``, :class:`frtrain.config.WatchConfig`); each fires at most once per process:

- ``chance_loss``: at the end of ``watch.chance_after`` of the warm-up (without warm-up: at a tenth of the run), the
  loss of the last 16 steps' micro-batches is not below the *chance loss*: the same head on the same embeddings
  with the labels shuffled (mean of 4 permutations; head buffers, statistics and random generators restored).
  This is ln(C) for plain softmax at initialisation and, unlike ln(C), is right for margin heads too (ArcFace at
  s = 64 starts far above ln(C)). Fires unless the mean of (chance loss - loss) over the micro-batches exceeds twice
  its standard error and ``chance_tolerance`` x the chance loss.
- ``loss_flat``: the loss has not fallen since the warm-up: the mean loss of the latest ``flat_window / 2`` steps is
  not ``flat_tolerance`` (5%) below that of the first ``flat_window / 2`` steps after the warm-up, with the learning
  rate at least a tenth of its peak throughout the latest ones. (A loss that has fallen and then plateaus, as it
  does between the drops of a step schedule, is not this failure.)
- ``lr_constant``: the learning rate has not changed since this process's first step although the schedule's rate
  (base rate x its factor) has, by more than 1%: the schedule is not stepping.
- ``grad_spike``: the gradient norm (unscaled; after the optimiser's combination, before clipping) exceeds
  ``spike_factor`` x the median of the last 100 steps' (at least 20 of them).
- ``collapse``: the mean over dimensions of the per-dimension standard deviation of a micro-batch's L2-normalised
  embeddings is below ``collapse_std`` (random unit vectors in d dimensions give about 1/sqrt(d)).
- ``chance_accuracy``: a verification benchmark scored after ``chance_accuracy_after`` of the run is below
  ``chance_accuracy``.
- non-finite loss or gradient norm: always stops (:class:`~frtrain.engine.trainer.TrainingDiverged`), watchdog or not.

Each firing is a warning line in the log, a text and a scalar in TensorBoard (``watchdog/<check>``), an entry of
results.json's ``watchdog`` list and of ``watchdog.json`` in the run directory. With ``trainer.watchdog=stop`` the
run stops (:class:`WatchdogStopped`) without saving the current state; its newest checkpoint is kept and named.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque

import numpy as np
import torch

from frtrain.errors import FrtrainError

log = logging.getLogger("frtrain")

#: gradient norms kept for the running median of ``grad_spike``
SPIKE_HISTORY = 100
SPIKE_MIN_HISTORY = 20
#: label permutations averaged for the chance loss
PERMUTATIONS = 4
#: steps (ending at the chance step) whose micro-batches the chance check averages
CHANCE_STEPS = 16


class WatchdogStopped(FrtrainError):
    """trainer.watchdog=stop and a check fired."""


def chance_loss(head, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """The head's loss on ``embeddings`` (B, d) with ``labels`` (B,) shuffled: what a model whose embeddings carry no
    information about the labels scores. The head's buffers, ``stats`` and the random generators are left as they
    were. A collective where the head is sharded over ranks (every rank calls it at the same step)."""
    buffers = {name: b.detach().clone() for name, b in head.named_buffers()}
    stats = dict(getattr(head, "stats", {}) or {})
    devices = [embeddings.device] if embeddings.device.type == "cuda" else []
    values = []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        generator = torch.Generator().manual_seed(0)
        for _ in range(PERMUTATIONS):
            perm = torch.randperm(len(labels), generator=generator).to(labels.device)
            values.append(float(head(embeddings.detach(), labels[perm])))
    for name, b in head.named_buffers():
        b.copy_(buffers[name])
    if hasattr(head, "stats"):
        head.stats = stats
    return float(np.mean(values))


def embedding_spread(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised ``embeddings`` (B, d); 0 for identical rows."""
    x = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    return float(x.std(dim=0).mean()) if len(x) > 1 else float("nan")


def gradient_norm(params, scale: float = 1.0) -> float:
    """L2 norm of the gradients of ``params`` (this process's; divided by the grad scaler's ``scale``)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))) / scale


class Watchdog:
    """Runs the checks (see the module docstring). ``mode``: warn | stop | off. ``writer``: TensorBoard or None.

    The trainer calls :meth:`micro_batch` (loss, embeddings), :meth:`step` (after the optimiser step: lr, the
    schedule's lr, gradient norm), :meth:`evaluation` (a benchmark's accuracy) and :meth:`need_chance_loss`.
    """

    def __init__(self, mode: str, options, out_dir: str, writer, total_steps: int, warmup_steps: int,
                 quiet: bool = False):
        self.mode, self.opts, self.out_dir, self.writer = mode, options, out_dir, writer
        self.quiet = quiet  # the ranks other than 0 check (in step: the chance loss can be a collective) but say nothing
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        share = float(options.chance_after)
        self.chance_step = (max(1, round(share * warmup_steps)) if warmup_steps > 0
                            else max(1, total_steps // 10))
        self.fired: list[dict] = []
        self.step_losses: list[float] = []  # micro-batch losses of the current step
        half = max(2, int(options.flat_window) // 2)
        self.reference: list = []  # (step, loss, lr) of the first flat_window / 2 steps after the warm-up
        self.recent: deque = deque(maxlen=half)  # ... and of the latest flat_window / 2 steps after those
        self.grad_norms: deque = deque(maxlen=SPIKE_HISTORY)
        self.first_lr: float | None = None
        self.first_scheduled: float | None = None
        self.peak_lr = 0.0
        self.pending_stop: str | None = None
        self.chance_pairs: list[tuple[float, float]] = []  # (loss, chance loss) of the chance check's micro-batches

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def names(self) -> set[str]:
        return {f["check"] for f in self.fired}

    # -- what the trainer reports -----------------------------------------------------------------
    def need_chance_loss(self, step: int) -> bool:
        """Whether optimiser step ``step`` (1-based) is one of the chance check's (the ``CHANCE_STEPS`` steps ending at
        its step); the same on every rank, as the chance loss can be a collective."""
        return self.active and self.chance_step - CHANCE_STEPS < step <= self.chance_step

    def chance(self, step: int, loss: float, chance: float) -> None:
        """A micro-batch's loss and its chance loss; at the chance step's end, the check on their means."""
        self.chance_pairs.append((loss, chance))

    def chance_check(self, step: int) -> None:
        """Fires unless the loss is below the chance loss by more than twice the standard error of their paired
        per-micro-batch differences (and by more than ``chance_tolerance`` of it)."""
        loss, chance = (np.asarray(v, dtype=np.float64) for v in zip(*self.chance_pairs))
        d = chance - loss
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
        first = max(1, step - CHANCE_STEPS + 1)
        (log.debug if self.quiet else log.info)("watchdog: steps %d-%d: loss %.4g, chance loss %.4g, difference %.3g (standard error %.2g)", first,
                 step, loss.mean(), chance.mean(), d.mean(), se)
        if d.mean() <= 2 * se or d.mean() <= float(self.opts.chance_tolerance) * chance.mean():
            when = (f"{self.opts.chance_after:g} of the warm-up" if self.warmup_steps else "a tenth of the run, no warm-up")
            self.fire("chance_loss", step, f"the loss is not below chance at step {step} ({when}): "
                      f"{loss.mean():.4g} on the true labels, "
                      f"{chance.mean():.4g} with the labels shuffled (steps {first}-{step}; difference {d.mean():.3g}, "
                      f"standard error {se:.2g}); is the learning rate 0, or are the labels not the images'?",
                      loss=float(loss.mean()), chance_loss=float(chance.mean()))

    def micro_batch(self, step: int, loss: float, embeddings: torch.Tensor) -> None:
        if not self.active:
            return
        self.step_losses.append(loss)
        if "collapse" not in self.names():
            spread = embedding_spread(embeddings)
            if spread < float(self.opts.collapse_std):
                self.fire("collapse", step, f"embeddings collapsed at step {step}: the per-dimension std of a batch's "
                          f"normalised embeddings is {spread:.3g} (below {self.opts.collapse_std:g}; random directions "
                          f"give {1 / math.sqrt(embeddings.shape[1]):.3g}); are the inputs constant?", spread=spread)

    def step(self, step: int, lr: float, scheduled: float, grad_norm: float | None) -> None:
        """After optimiser step ``step``: ``lr`` (group 0, what the next step uses), ``scheduled`` the schedule's lr for
        it (base lr x factor)."""
        if not self.active:
            return
        loss = float(np.mean(self.step_losses)) if self.step_losses else float("nan")
        self.step_losses = []
        self.peak_lr = max(self.peak_lr, lr)
        if step == self.chance_step and self.chance_pairs:
            self.chance_check(step)
        if self.first_lr is None:
            self.first_lr, self.first_scheduled = lr, scheduled
        elif ("lr_constant" not in self.names() and abs(scheduled - self.first_scheduled) > 0.01 * abs(self.first_scheduled)
              and lr == self.first_lr):
            self.fire("lr_constant", step, f"the learning rate has stayed at {lr:.4g} since this run's first step "
                      f"while the schedule's went from {self.first_scheduled:.4g} to {scheduled:.4g} (step {step}): "
                      "the schedule is not stepping", lr=lr, scheduled=scheduled)
        if grad_norm is not None and math.isfinite(grad_norm):
            if len(self.grad_norms) >= SPIKE_MIN_HISTORY and "grad_spike" not in self.names():
                median = float(np.median(self.grad_norms))
                if median > 0 and grad_norm > float(self.opts.spike_factor) * median:
                    self.fire("grad_spike", step, f"gradient norm spiked at step {step}: {grad_norm:.4g}, "
                              f"{grad_norm / median:.0f}x the median {median:.4g} of the last {len(self.grad_norms)} "
                              "steps; lower optim.lr or set trainer.clip_grad_norm", grad_norm=grad_norm, median=median)
            self.grad_norms.append(grad_norm)
        if step > self.warmup_steps and math.isfinite(loss):
            if len(self.reference) < self.recent.maxlen:
                self.reference.append((step, loss, lr))
            else:
                self.recent.append((step, loss, lr))
                self.flat_check(step)

    def flat_check(self, step: int) -> None:
        """``loss_flat``: the mean loss of the latest ``flat_window / 2`` steps is not ``flat_tolerance`` below that of
        the first ``flat_window / 2`` steps after the warm-up, with the learning rate at least a tenth of its peak in
        the latest ones."""
        if len(self.recent) < self.recent.maxlen or len(self.reference) < self.recent.maxlen or "loss_flat" in self.names():
            return
        lrs = [lr for _, _, lr in self.recent]
        if self.peak_lr <= 0 or min(lrs) < 0.1 * self.peak_lr:
            return
        first = float(np.mean([v for _, v, _ in self.reference]))
        latest = float(np.mean([v for _, v, _ in self.recent]))
        if latest >= (1.0 - float(self.opts.flat_tolerance)) * first:
            self.fire("loss_flat", step, f"the loss has not fallen since the warm-up: {latest:.4g} over steps "
                      f"{self.recent[0][0]}-{step} against {first:.4g} over steps {self.reference[0][0]}-"
                      f"{self.reference[-1][0]} (less than {100 * self.opts.flat_tolerance:g}% lower), with the learning "
                      f"rate at {min(lrs):.4g}-{max(lrs):.4g}; are the weights updating?", first=first, latest=latest)

    def evaluation(self, step: int, name: str, accuracy: float | None) -> None:
        """A verification benchmark's accuracy at ``step``."""
        if not self.active or accuracy is None or "chance_accuracy" in self.names():
            return
        if step >= float(self.opts.chance_accuracy_after) * self.total_steps and accuracy < float(self.opts.chance_accuracy):
            self.fire("chance_accuracy", step, f"{name} accuracy is {100 * accuracy:.2f}% at step {step} of "
                      f"{self.total_steps}, below {100 * self.opts.chance_accuracy:g}% (chance is 50%)",
                      accuracy=accuracy)

    # -- firing ----------------------------------------------------------------------------------
    def fire(self, check: str, step: int, message: str, **numbers) -> None:
        entry = {"check": check, "step": int(step), "message": message,
                 **{k: float(v) for k, v in numbers.items()}}
        self.fired.append(entry)
        if not self.quiet:
            log.warning("watchdog: %s", message)
        if self.writer is not None:
            self.writer.add_text(f"watchdog/{check}", message, step)
            self.writer.add_scalar(f"watchdog/{check}", 1.0, step)
            self.writer.flush()
        self.write()
        if self.mode == "stop" and self.pending_stop is None:
            self.pending_stop = f"{check} at step {step}: {message}"

    def write(self) -> None:
        """``watchdog.json`` in the run directory: every firing so far."""
        if self.out_dir and self.writer is not None:
            path = os.path.join(self.out_dir, "watchdog.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"mode": self.mode, "fired": self.fired}, f, indent=1)
            os.replace(path + ".tmp", path)
