"""Learning-rate schedules: linear warm-up, then poly, cosine or step decay.

Each is a picklable callable ``step -> factor`` of the base learning rate, used with
``torch.optim.lr_scheduler.LambdaLR`` and stepped once per optimiser step. Configs give durations in
epochs (as papers do); the trainer passes ``total_steps`` and ``steps_per_epoch``.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from frtrain.errors import ConfigError


class _Warmup:
    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
        if warmup_epochs < 0:
            raise ConfigError(f"sched.warmup_epochs={warmup_epochs}: expected a value >= 0")
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        warmup_steps = int(round(warmup_epochs * self.steps_per_epoch))
        if warmup_steps >= self.total_steps > 1:  # trainer.max_steps cut the run short (longer epochs are refused)
            logging.getLogger("frtrain").warning(
                "sched.warmup_epochs=%s is %d steps, the run has %d (trainer.max_steps): the warm-up is cut to %d",
                warmup_epochs, warmup_steps, self.total_steps, self.total_steps - 1)
        self.warmup_steps = min(warmup_steps, self.total_steps - 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return self.decay(step)

    def progress(self, step: int) -> float:
        """Fraction of the post-warm-up steps done, in [0, 1]."""
        span = max(1, self.total_steps - self.warmup_steps)
        return min(1.0, max(0.0, (step - self.warmup_steps) / span))

    def decay(self, step: int) -> float:
        raise NotImplementedError


class WarmupPoly(_Warmup):
    """Warm-up, then ``(1 - progress)^power`` (insightface's PolyScheduler with power 2)."""

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0, power: float = 2.0):
        super().__init__(total_steps, steps_per_epoch, warmup_epochs)
        self.power = float(power)

    def decay(self, step):
        return (1.0 - self.progress(step)) ** self.power


class WarmupCosine(_Warmup):
    """Warm-up, then a half cosine from 1 to ``min_ratio``."""

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0, min_ratio: float = 0.0):
        super().__init__(total_steps, steps_per_epoch, warmup_epochs)
        self.min_ratio = float(min_ratio)

    def decay(self, step):
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


class WarmupStep(_Warmup):
    """Warm-up, then multiply by ``gamma`` at each of the ``milestones`` (in epochs)."""

    def __init__(self, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                 milestones: Sequence[float] = (), gamma: float = 0.1):
        super().__init__(total_steps, steps_per_epoch, warmup_epochs)
        if sorted(milestones) != list(milestones):
            raise ConfigError(f"sched.milestones={list(milestones)}: expected increasing epochs")
        self.milestone_steps = [int(round(m * self.steps_per_epoch)) for m in milestones]
        self.gamma = float(gamma)

    def decay(self, step):
        return self.gamma ** sum(step >= m for m in self.milestone_steps)


def schedule_length(batches_per_epoch: int, options) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps): ``max_steps``, or ``epochs`` x steps per epoch."""
    steps_per_epoch = batches_per_epoch // options.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"trainer.accumulate={options.accumulate} exceeds the {batches_per_epoch} batches of an epoch")
    if options.max_steps:
        return steps_per_epoch, int(options.max_steps)
    return steps_per_epoch, max(1, int(math.ceil(float(options.epochs) * steps_per_epoch)))
