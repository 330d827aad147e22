"""Images -> embeddings: the :class:`Embedder` every benchmark scores itself with.

An :class:`Embedder` binds a model (a backbone or an ONNX file: anything mapping normalised float images
(B, 3, H, W) to embeddings (B, d) with ``input_size``, ``mean``, ``std``, ``embedding_size``) to a device and the
evaluation settings: decoding in DataLoader workers (each image once, resized to the model's input), images per
forward pass (``auto``: what fits a memory budget on CPU), the horizontal-flip combination of the protocol
(``sum`` as insightface, ``concat``, ``none``), autocast, progress bars, and a cache of decoded images kept between
evaluations during training. A benchmark kind needs nothing else: ``bench.score(embedder)`` embeds what it needs
through :meth:`Embedder.embed` (or :meth:`Embedder.batches` + :meth:`Embedder.forward`) and scores it;
:func:`score_benchmarks` scores a list with the model in eval mode.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from frtrain.data.images import resize_to
from frtrain.data.transforms import normalize_batch

log = logging.getLogger("frtrain")

#: a model for the evaluator: normalised float images (B, 3, H, W) -> embeddings (B, d)
EmbedFn = Callable[[torch.Tensor], torch.Tensor]
#: images decoded per DataLoader batch (independent of the images per forward pass)
DECODE_BATCH = 256
#: activations alive at once during an inference forward, in multiples of the largest layer output (measured on
#: IResNet-18 at 112x112: 15 MiB per image against a 3.1 MiB largest output; scripts/bench_eval.py)
LIVE_ACTIVATIONS = 5
FLIPS = ("sum", "concat", "none")


class ImageList(Dataset):
    """Decodes image ``i`` of a benchmark in a DataLoader worker: -> (3, H, W) uint8 tensor."""

    def __init__(self, load: Callable[[int], np.ndarray], count: int):
        self.load, self.count = load, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.load(i).transpose(2, 0, 1)))


class Resized:
    """Picklable: image ``i`` of ``load`` resized to ``size`` (H, W)."""

    def __init__(self, load, size):
        self.load, self.size = load, size

    def __call__(self, i):
        return resize_to(self.load(i), self.size)


def decode_all(load: Callable[[int], np.ndarray], count: int, batch_size: int = DECODE_BATCH,
               num_workers: int = 0, progress: Callable | None = None) -> torch.Tensor:
    """Decode every image once, in worker processes: (count, 3, H, W) uint8."""
    loader = DataLoader(ImageList(load, count), batch_size=batch_size, num_workers=num_workers)
    parts = [b for b in (progress(loader) if progress else loader)]
    return torch.cat(parts) if parts else torch.empty(0, 3, 1, 1, dtype=torch.uint8)


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


@torch.inference_mode()
def embed_batches(model: EmbedFn, batches, mean: Sequence[float], std: Sequence[float],
                  device: torch.device, flip: str = "sum", progress: Callable | None = None,
                  autocast_dtype: torch.dtype | None = None, forward_batch: int | None = None) -> tuple[np.ndarray, float]:
    """Embed uint8 image batches.

    ``forward_batch``: images per forward pass (batches are split); None: 32 on CPU, whole batches on
    CUDA. Returns ``(embeddings, xnorm)``: (N, d') float32, with d' = d for ``flip`` ``sum``/``none`` and 2d for
    ``concat``; xnorm is the mean L2 norm of the raw embeddings of the images (and of their flips).
    """
    if flip not in FLIPS:
        raise ValueError(f"flip must be 'sum', 'concat' or 'none', got {flip!r}")
    if forward_batch is None:
        forward_batch = 32 if device.type == "cpu" else 1 << 30

    def forward(x):
        return torch.cat([model(c).float() for c in x.split(forward_batch)])

    out, norm_sum, norm_count = [], 0.0, 0
    for images in (progress(batches) if progress else batches):
        x = normalize_batch(images.to(device, non_blocking=True), mean, std)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            parts = [forward(x)]
            if flip != "none":
                parts.append(forward(torch.flip(x, dims=[3])))
        for p in parts:
            norm_sum += float(p.norm(dim=1).sum())
            norm_count += p.shape[0]
        if flip == "sum":
            e = parts[0] + parts[1]
        elif flip == "concat":
            e = torch.cat(parts, dim=1)
        else:
            e = parts[0]
        out.append(e.cpu())
    emb = torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    return emb, norm_sum / max(norm_count, 1)


class Embedder:
    """A model bound to a device and the evaluation settings (see the module docstring).

    Args:
        model: the embedding model (``input_size``, ``mean``, ``std``, ``embedding_size``; called on normalised images).
        device: where it runs (an ONNX model runs where onnxruntime was created).
        flip: ``sum`` (insightface), ``concat`` or ``none``.
        batch_size: images per forward pass (each with its flip); ``auto``: 256 on CUDA, on CPU what keeps the
            activations within ``memory_budget_mb`` (:func:`forward_batch_for_budget`).
        num_workers: decoding processes.
        thresholds: the threshold search of the pair protocols, ``grid`` (insightface) or ``exact``.
        autocast_dtype: bf16/fp16 autocast on CUDA, or None.
        progress: show progress bars.
        image_cache: a dict kept by the caller between evaluations (training): decoded images of benchmarks that fit
            ``cache_max_bytes`` are kept there by benchmark name; None: decoded batch by batch while embedding.
        model_key: names the model file for resumable embedding files (IJB); None: throw-away files.
        input_size, mean, std: instead of the model's own (a plain function as the model, in tests).
    """

    def __init__(self, model: EmbedFn, device: torch.device, flip: str = "sum", batch_size: int | str = "auto",
                 num_workers: int = 0, memory_budget_mb: float = 300.0, thresholds: str = "grid",
                 autocast_dtype: torch.dtype | None = None, progress: bool = False, image_cache: dict | None = None,
                 cache_max_bytes: float = 4e9, model_key: str | None = None, input_size=None, mean=None, std=None,
                 interval_resamples: int = 0):
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {flip!r}")
        self.model, self.device = model, device
        size = input_size if input_size is not None else model.input_size
        self.input_size = (int(size[0]), int(size[1]))
        self.mean = tuple(mean if mean is not None else model.mean)
        self.std = tuple(std if std is not None else model.std)
        self.embedding_size = getattr(model, "embedding_size", None)
        self.flip, self.batch_size, self.num_workers = flip, batch_size, int(num_workers)
        self.memory_budget_mb, self.thresholds = float(memory_budget_mb), thresholds
        self.autocast_dtype, self.progress = autocast_dtype, progress
        self.image_cache, self.cache_max_bytes, self.model_key = image_cache, float(cache_max_bytes), model_key
        #: (N, d) embeddings -> (N, C) class scores, for closed-set protocols (the head's; None: not available)
        self.classifier = None
        #: cluster-bootstrap resamples behind each headline's interval (0: none; :mod:`frtrain.evaluation.intervals`)
        self.interval_resamples = int(interval_resamples)
        self._forward_batch: int | None = None

    @property
    def forward_batch(self) -> int:
        """Images per forward pass: ``batch_size``, or for ``auto`` 256 on CUDA and on CPU what fits the budget."""
        if self._forward_batch is None:
            if self.batch_size != "auto":
                self._forward_batch = int(self.batch_size)
            elif self.device.type != "cpu":
                self._forward_batch = 256
            elif not isinstance(self.model, torch.nn.Module):
                self._forward_batch = 32
            else:
                self._forward_batch = forward_batch_for_budget(self.model, self.input_size, self.memory_budget_mb)
                log.info("eval.batch_size=auto: %d images per forward pass (eval.memory_budget_mb=%.0f)",
                         self._forward_batch, self.memory_budget_mb)
        return self._forward_batch

    def batches(self, load: Callable[[int], np.ndarray], count: int, start: int = 0, name: str = ""):
        """(B, 3, H, W) uint8 batches of images ``start .. count - 1`` of ``load``, resized to the model's input,
        decoded in the workers (from the cache when ``name`` is there)."""
        if name and self.image_cache is not None and name in self.image_cache:
            return self.image_cache[name][start:].split(DECODE_BATCH)
        h, w = self.input_size
        if name and start == 0 and self.image_cache is not None and count * h * w * 3 <= self.cache_max_bytes:
            self.image_cache[name] = decode_all(Resized(load, self.input_size), count, DECODE_BATCH, self.num_workers)
            return self.image_cache[name].split(DECODE_BATCH)
        images = torch.utils.data.Subset(ImageList(Resized(load, self.input_size), count), range(start, count))
        return DataLoader(images, batch_size=DECODE_BATCH, num_workers=self.num_workers)

    def forward(self, batches, flip: str | None = None, desc: str = "") -> tuple[np.ndarray, float]:
        """Embed uint8 batches with ``flip`` (default: the embedder's): ((N, d') float32, XNorm)."""
        bar = (lambda it: tqdm(it, desc=desc, unit="batch", leave=False)) if self.progress and desc else None
        return embed_batches(self.model, batches, self.mean, self.std, self.device, flip or self.flip, progress=bar,
                             autocast_dtype=self.autocast_dtype, forward_batch=self.forward_batch)

    def embed(self, load: Callable[[int], np.ndarray], count: int, name: str = "") -> tuple[np.ndarray, float]:
        """Every image of ``load`` embedded with the embedder's flip: ((count, d') float32, XNorm)."""
        return self.forward(self.batches(load, count, name=name), desc=name)


def score_benchmarks(benchmarks, embedder: Embedder, skip: tuple[str, ...] = ()) -> dict:
    """``{name: bench.score(embedder)}`` for every benchmark but those named in ``skip``, with the model in eval mode
    for the duration (and put back as it was)."""
    module = embedder.model if isinstance(embedder.model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        return {b.name: b.score(embedder) for b in benchmarks if b.name not in skip}
    finally:
        if module is not None and was_training:
            module.train()
