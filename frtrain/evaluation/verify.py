"""Scoring benchmarks with a model: decode once, embed in batches, compute the 10-fold protocol."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch

from frtrain.data.images import resize_to
from frtrain.evaluation.benchmarks import PairBenchmark
from frtrain.evaluation.embed import EmbedFn, decode_all, embed_batches
from frtrain.evaluation.metrics import VerificationResult, verification_scores

log = logging.getLogger(__name__)


class _Resized:
    def __init__(self, load, size):
        self.load, self.size = load, size

    def __call__(self, i):
        return resize_to(self.load(i), self.size)


class Verifier:
    """Scores a model on a list of benchmarks; keeps their decoded images for repeated evaluation.

    Args:
        benchmarks: the :class:`PairBenchmark` objects.
        input_size: (H, W) the model expects; images are resized to it once, at decoding.
        mean, std: the model's normalisation.
        batch_size: images per forward pass.
        num_workers: decoding processes.
        flip: ``sum`` (insightface), ``concat`` or ``none``.
        thresholds: ``grid`` (insightface) or ``exact``.
        cache_images: keep decoded uint8 images between calls (for evaluation during training).
    """

    def __init__(self, benchmarks: Sequence[PairBenchmark], input_size, mean, std, batch_size: int = 256,
                 num_workers: int = 0, flip: str = "sum", thresholds: str = "grid", cache_images: bool = True):
        self.benchmarks = list(benchmarks)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.flip, self.thresholds, self.cache_images = flip, thresholds, cache_images
        self._decoded: dict[str, torch.Tensor] = {}

    def images(self, bench: PairBenchmark) -> torch.Tensor:
        if bench.name in self._decoded:
            return self._decoded[bench.name]
        images = decode_all(_Resized(bench.load, self.input_size), bench.num_images, self.batch_size, self.num_workers)
        if self.cache_images:
            self._decoded[bench.name] = images
        return images

    def score(self, model: EmbedFn, bench: PairBenchmark, device: torch.device,
              autocast_dtype: torch.dtype | None = None) -> VerificationResult:
        start = time.perf_counter()
        images = self.images(bench)
        batches = images.split(self.batch_size)
        emb, xnorm = embed_batches(model, batches, self.mean, self.std, device, self.flip, autocast_dtype=autocast_dtype)
        result = verification_scores(bench.name, emb[bench.pairs[:, 0]], emb[bench.pairs[:, 1]], bench.issame,
                                     bench.folds, self.thresholds, xnorm)
        result.skipped_pairs = bench.skipped_pairs
        result.notes = list(bench.notes) + result.notes
        result.seconds = time.perf_counter() - start
        return result

    def run(self, model: EmbedFn, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, VerificationResult]:
        """Score every benchmark; the model is put in eval mode for the duration."""
        module = model if isinstance(model, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            return {b.name: self.score(model, b, device, autocast_dtype) for b in self.benchmarks}
        finally:
            if module is not None and was_training:
                module.train()
