"""Scoring benchmarks with a model: decode once, embed in batches, compute the 10-fold protocol."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
from sklearn.preprocessing import normalize
from torch.utils.data import DataLoader
from tqdm import tqdm

from frtrain.data.images import resize_to
from frtrain.evaluation.benchmarks import PairBenchmark
from frtrain.evaluation.embed import EmbedFn, ImageList, decode_all, embed_batches
from frtrain.evaluation.metrics import VerificationResult, verification_scores

log = logging.getLogger(__name__)


def mean_per_item(emb: np.ndarray, item_of_image: np.ndarray) -> np.ndarray:
    """Per-item (video) embedding: the normalised mean of its images' normalised embeddings.

    (N, d) image embeddings and (N,) item ids -> (num_items, d) float64.
    """
    e = normalize(np.asarray(emb, dtype=np.float64))
    out = np.zeros((int(item_of_image.max()) + 1, e.shape[1]))
    np.add.at(out, item_of_image, e)
    return normalize(out)


#: activations alive at once during an inference forward, in multiples of the largest layer output (measured on
#: IResNet-18 at 112x112: 15 MiB per image against a 3.1 MiB largest output; scripts/bench_eval.py)
LIVE_ACTIVATIONS = 5


@torch.inference_mode()
def forward_batch_for_budget(model: torch.nn.Module, input_size, memory_budget_mb: float) -> int:
    """Images per CPU forward pass that keep the activations within ``memory_budget_mb``: one probe image through
    the model measures its largest layer output; about :data:`LIVE_ACTIVATIONS` of them are alive at once. Between
    1 and 256."""
    largest = [0]

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        model(torch.zeros(1, 3, *input_size, device=param.device if param is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per_image = max(1, LIVE_ACTIVATIONS * largest[0])
    return int(max(1, min(256, memory_budget_mb * 2**20 // per_image)))


class _Resized:
    def __init__(self, load, size):
        self.load, self.size = load, size

    def __call__(self, i):
        return resize_to(self.load(i), self.size)


#: images decoded per DataLoader batch (independent of the images per forward pass)
DECODE_BATCH = 256


class Verifier:
    """Scores a model on a list of benchmarks; keeps their decoded images for repeated evaluation.

    Args:
        benchmarks: the :class:`PairBenchmark` objects.
        input_size: (H, W) the model expects; images are resized to it once, at decoding.
        mean, std: the model's normalisation.
        batch_size: images per forward pass (each with its flip); ``auto``: 256 on CUDA; on CPU as many as fit
            ``memory_budget_mb`` of activations (:func:`forward_batch_for_budget`; large CPU batches are also
            memory-bound: MobileFaceNet embeds 49 images/s at 32, 26 at 256).
        memory_budget_mb: the activation memory a CPU forward pass may use.
        num_workers: decoding processes.
        flip: ``sum`` (insightface), ``concat`` or ``none``.
        thresholds: ``grid`` (insightface) or ``exact``.
        cache_images: keep decoded uint8 images between calls (for evaluation during training), for
            benchmarks whose decoded images fit in ``cache_max_bytes``; the others (and all, when False)
            are decoded in DataLoader workers batch by batch while the model embeds, never all held at once.
    """

    def __init__(self, benchmarks: Sequence[PairBenchmark], input_size, mean, std, batch_size: int | str = "auto",
                 num_workers: int = 0, flip: str = "sum", thresholds: str = "grid", cache_images: bool = True,
                 cache_max_bytes: float = 4e9, memory_budget_mb: float = 300.0):
        self.benchmarks = list(benchmarks)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.num_workers = batch_size, int(num_workers)
        self.flip, self.thresholds, self.cache_images = flip, thresholds, cache_images
        self.cache_max_bytes = float(cache_max_bytes)
        self.memory_budget_mb = float(memory_budget_mb)
        #: names the model for template benchmarks' embedding files (frtrain-eval: the file and its mtime), so an
        #: interrupted IJB evaluation resumes; None: throw-away files (evaluation during training)
        self.model_key: str | None = None
        self._decoded: dict[str, torch.Tensor] = {}
        self._auto_batch: dict[int, int] = {}

    @classmethod
    def from_config(cls, cfg, model, cache_images: bool = True) -> "Verifier | None":
        """The benchmarks of ``cfg`` (``eval.benchmarks`` and ``benchmarks=[...]``) bound to the model's input
        size and normalisation, with ``cfg.eval``'s options; None when there are none."""
        from frtrain.config import benchmark_nodes
        from frtrain.engine.build import build

        nodes = benchmark_nodes(cfg)
        if not nodes:
            return None
        built = [build(where, node, name=name) for name, (where, node) in nodes.items()]
        e = cfg.eval
        return cls(built, model.input_size, model.mean, model.std, batch_size=e.batch_size,
                   num_workers=int(e.num_workers), flip=e.flip, thresholds=e.thresholds, cache_images=cache_images,
                   memory_budget_mb=e.get("memory_budget_mb", 300))

    def forward_batch(self, device: torch.device, model=None) -> int:
        """Images per forward pass: ``batch_size``, or for ``auto`` 256 on CUDA and on CPU what fits the budget."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        if device.type != "cpu":
            return 256
        if not isinstance(model, torch.nn.Module):
            return 32
        if id(model) not in self._auto_batch:
            self._auto_batch[id(model)] = forward_batch_for_budget(model, self.input_size, self.memory_budget_mb)
            log.info("eval.batch_size=auto: %d images per forward pass (eval.memory_budget_mb=%.0f)",
                     self._auto_batch[id(model)], self.memory_budget_mb)
        return self._auto_batch[id(model)]

    def _fits_cache(self, bench) -> bool:
        h, w = self.input_size
        return self.cache_images and bench.num_images * h * w * 3 <= self.cache_max_bytes

    def image_batches(self, bench: PairBenchmark):
        """(B, 3, H, W) uint8 batches of every image of the benchmark, in order, each decoded once."""
        if bench.name in self._decoded:
            return self._decoded[bench.name].split(DECODE_BATCH)
        if self._fits_cache(bench):
            self._decoded[bench.name] = decode_all(_Resized(bench.load, self.input_size), bench.num_images,
                                                   DECODE_BATCH, self.num_workers)
            return self._decoded[bench.name].split(DECODE_BATCH)
        return DataLoader(ImageList(_Resized(bench.load, self.input_size), bench.num_images),
                          batch_size=DECODE_BATCH, num_workers=self.num_workers)

    def score(self, model: EmbedFn, bench, device: torch.device, autocast_dtype: torch.dtype | None = None,
              progress: bool = False):
        """A :class:`VerificationResult` for pair benchmarks, a :class:`~frtrain.evaluation.ijb.TemplateResult` for
        template benchmarks (IJB-B/C)."""
        from frtrain.evaluation.ijb import TemplateBenchmark, score_templates

        if isinstance(bench, TemplateBenchmark):
            return score_templates(bench, model, self.input_size, self.mean, self.std, device,
                                   self.forward_batch(device, model), self.num_workers, self.model_key,
                                   autocast_dtype, progress)
        start = time.perf_counter()
        emb, xnorm = self.item_embeddings(model, bench, device, autocast_dtype, progress)
        result = verification_scores(bench.name, emb[bench.pairs[:, 0]], emb[bench.pairs[:, 1]], bench.issame,
                                     bench.folds, self.thresholds, xnorm)
        result.skipped_pairs = bench.skipped_pairs
        result.notes = list(bench.notes) + result.notes
        result.seconds = time.perf_counter() - start
        return result

    def item_embeddings(self, model: EmbedFn, bench: PairBenchmark, device: torch.device, autocast_dtype=None,
                        progress: bool = False) -> tuple[np.ndarray, float]:
        """(embedding of every image, or of every video for YTF, (n, d'); XNorm) as the protocol scores them."""
        bar = (lambda it: tqdm(it, desc=bench.name, unit="batch", leave=False)) if progress else None
        emb, xnorm = embed_batches(model, self.image_batches(bench), self.mean, self.std, device, self.flip,
                                   progress=bar, autocast_dtype=autocast_dtype,
                                   forward_batch=self.forward_batch(device, model))
        if len(emb) != bench.num_images:
            raise RuntimeError(f"{bench.name}: embedded {len(emb)} images, expected {bench.num_images}")
        if bench.item_of_image is not None:
            emb = mean_per_item(emb, bench.item_of_image)
        return emb, xnorm

    def pair_scores(self, model: EmbedFn, bench: PairBenchmark, device: torch.device) -> np.ndarray:
        """The cosine similarity (P,) of every pair of ``bench``, as scoring computes it (1 - d/2)."""
        from frtrain.evaluation.metrics import pair_distances

        emb, _ = self.item_embeddings(model, bench, device)
        return 1.0 - pair_distances(emb[bench.pairs[:, 0]], emb[bench.pairs[:, 1]]) / 2.0

    def run(self, model: EmbedFn, device: torch.device, autocast_dtype: torch.dtype | None = None,
            progress: bool = False, skip: tuple[str, ...] = ()) -> dict[str, VerificationResult]:
        """Score every benchmark but those named in ``skip``; the model is put in eval mode for the duration."""
        module = model if isinstance(model, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            return {b.name: self.score(model, b, device, autocast_dtype, progress) for b in self.benchmarks
                    if b.name not in skip}
        finally:
            if module is not None and was_training:
                module.train()
