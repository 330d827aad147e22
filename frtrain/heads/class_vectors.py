"""What every loss head shares: class vectors (optionally sharded over ranks) and the reductions.

Shapes used throughout the heads:
    x: (B, d) embeddings of this rank's batch; after :meth:`Head.gather`, (W*B, d) for W ranks.
    y: (B,) integer labels in [0, C).
    weight: (C_local, d) this rank's contiguous slice of the C class vectors (all C in one process).
    cos / logits: (W*B, C_local), float32 (float64 when the inputs are float64).
    local_target: (W*B,) index of the label's column in this shard, -1 where another rank owns it.

Per-shard partial results are combined with the collectives of :mod:`frtrain.distributed`,
so the loss and its gradients equal those of the same head on one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frtrain import distributed as D
from frtrain.errors import ConfigError


_CLASS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_option(name: str, value, ok: bool, expected: str) -> None:
    """Raise ``ConfigError`` naming the head option when ``ok`` is False."""
    if not ok:
        raise ConfigError(f"head.{name}={value!r} is out of range: expected {expected}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests); everything else (fp16/bf16 under autocast, fp32) runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Head(nn.Module):
    """Base class of every loss head: ``Head(embedding_size, num_classes, **hyper)``.

    The options below are every head's: a subclass states only its own and passes ``**common`` on (a new shared
    option is a parameter here and a line in configs/head/_shared.yaml, nothing else); the config check reads the
    options along the ``__init__`` chain, so a misspelt shared option is still named
    (:func:`frtrain.engine.build._signature`).

    ``forward(embeddings, labels)`` returns the scalar loss (mean over the global batch) and leaves
    detached per-step quantities worth logging in ``self.stats``. Subclasses keep their class vectors in
    the parameter ``weight`` (C_local x d); heads with separate centres add ``centers``.

    Args:
        embedding_size: d.
        num_classes: C, the number of identities in the training set.
        sample_rate: Partial FC. With a value < 1, each training step uses only the batch's positive
            classes plus randomly sampled negatives, ``ceil(sample_rate * C_local)`` class vectors in all
            per rank. 1.0 (default) uses every class.
        chunk_size: classes per chunk of the chunked path (:mod:`frtrain.heads.chunked`: the exact loss and
            gradients without an N x C matrix), 0 for the plain path, or ``auto`` (default): plain while its
            N x C matrices fit in ``memory_budget_mb``, chunks above.
        memory_budget_mb: the memory the plain path may use for its N x C matrices (MiB).
        class_dtype: storage of the class vectors: ``float32`` (default), ``bfloat16`` or ``float16`` (half the
            memory; the logits, their log-sum-exp and the class-vector gradient are computed in float32).
    """

    #: names of the parameters holding one row per class (sharded and sampled together)
    class_parameters: tuple[str, ...] = ("weight",)

    def __init__(self, embedding_size: int, num_classes: int, sample_rate: float = 1.0,
                 chunk_size: int | str = "auto", memory_budget_mb: float = 256.0, class_dtype: str = "float32"):
        super().__init__()
        check_option("embedding_size", embedding_size, int(embedding_size) >= 1, "a positive integer")
        check_option("num_classes", num_classes, int(num_classes) >= 2, "at least 2 classes")
        check_option("sample_rate", sample_rate, 0.0 < sample_rate <= 1.0, "a value in (0, 1]")
        check_option("chunk_size", chunk_size, chunk_size == "auto" or (isinstance(chunk_size, int) and chunk_size >= 0),
                     "auto, 0 (plain) or a positive number of classes")
        check_option("memory_budget_mb", memory_budget_mb, memory_budget_mb > 0, "a positive number of MiB")
        check_option("class_dtype", class_dtype, class_dtype in _CLASS_DTYPES, "float32, bfloat16 or float16")
        self.chunk_size, self.memory_budget_mb = chunk_size, float(memory_budget_mb)
        self.class_dtype = _CLASS_DTYPES[class_dtype]
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.world_size = D.world_size()
        if self.num_classes < self.world_size:
            raise ConfigError(
                f"{self.num_classes} classes cannot be sharded over {self.world_size} ranks"
            )
        self.class_start, self.num_local = D.shard_range(self.num_classes)
        self.stats: dict[str, torch.Tensor] = {}

    def __call__(self, *args, **kwargs):
        # Heads compute in float32 (float64 in tests) whatever autocast the backbone ran under: logits,
        # arccos and softmax sums are where bf16/fp16 lose the margin or overflow.
        device = args[0].device.type if args and torch.is_tensor(args[0]) else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return super().__call__(*args, **kwargs)

    # -- construction helpers -------------------------------------------------------------------
    def new_class_parameter(self, init: str = "normal") -> nn.Parameter:
        """A (C_local, d) parameter, initialised with ``normal`` (std 0.01), ``unit`` (random rows of norm 1)
        or ``xavier`` (uniform).

        Heads that normalise their class vectors use ``unit``: the gradient w.r.t. a normalised vector
        scales as 1/||w||, so rows of norm ~0.01*sqrt(d) would be rotated by huge steps at the start.
        """
        w = torch.empty(self.num_local, self.embedding_size)
        if init == "normal":
            nn.init.normal_(w, 0.0, 0.01)
        elif init == "unit":
            nn.init.normal_(w, 0.0, 1.0)
            w = torch.nn.functional.normalize(w, dim=1)
        elif init == "xavier":
            # Xavier-uniform bound of the full C x d matrix, so every world size draws from the same law.
            bound = math.sqrt(6.0 / (self.num_classes + self.embedding_size))
            nn.init.uniform_(w, -bound, bound)
        else:
            raise ValueError(f"unknown init {init!r}")
        return nn.Parameter(w.to(self.class_dtype))

    def chunks(self, num_samples: int, num_rows: int, device_type: str | None = None) -> int | None:
        """Classes per chunk for N samples against K class rows, or None for the plain path (see chunk_size);
        ``device_type`` (default: the class vectors' device) sizes ``auto``'s chunks."""
        from frtrain.heads.chunked import plan

        device_type = device_type or next(self.parameters()).device.type
        return plan(num_samples, num_rows, self.chunk_size, self.memory_budget_mb, device_type)

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups; heads with their own learning rates (centres) override this."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def after_optimizer_step(self) -> None:
        """Called by the trainer after every optimiser step (not every micro-batch): schedules that count
        steps (SphereFace's lambda) advance here."""

    def extra_repr(self) -> str:
        shard = "" if self.world_size == 1 else f", shard=[{self.class_start}, {self.class_start + self.num_local})"
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}{shard}"

    # -- forward helpers ------------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have shape (B, {self.embedding_size}), got {tuple(x.shape)}")
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"label {bad} is outside [0, {self.num_classes}) (num_classes={self.num_classes})")

    def gather(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check inputs, cast to the compute dtype and concatenate every rank's batch."""
        self.check_inputs(x, labels)
        x = x.to(compute_dtype(x))
        return D.gather_features(x, labels.long())

    def select_classes(self, labels_all: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Which local class rows this step uses, and each sample's target column among them.

        Returns ``(index, local_target)``: ``index`` (K,) rows of the local class parameters to use, or
        None for all of them; ``local_target`` (N,) the target's column in the selection or -1 where the
        label belongs to another rank.
        """
        local = labels_all - self.class_start
        owned = (local >= 0) & (local < self.num_local)
        local_target = torch.where(owned, local, torch.full_like(local, -1))
        if self.sample_rate >= 1.0 or not self.training:
            return None, local_target
        num_sample = max(1, math.ceil(self.sample_rate * self.num_local))
        positive = torch.zeros(self.num_local, dtype=torch.bool, device=labels_all.device)
        positive[local[owned]] = True
        num_sample = max(num_sample, int(positive.sum()))
        if num_sample >= self.num_local:
            return None, local_target
        score = torch.rand(self.num_local, device=labels_all.device) + 2.0 * positive
        index = torch.topk(score, num_sample, sorted=False).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=labels_all.device)
        remap[index] = torch.arange(num_sample, device=labels_all.device)
        local_target = torch.where(owned, remap[local.clamp(0, self.num_local - 1)], local_target)
        return index, local_target

    def class_rows(self, name: str, index: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Parameter ``name`` restricted to the selected rows, in ``dtype`` (the storage dtype when None: the
        chunked path casts one chunk at a time)."""
        p = getattr(self, name)
        p = p if index is None else p[index]
        return p if dtype is None else p.to(dtype)


def owned_values(matrix: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
    """matrix[i, target_i] where this rank owns the target, 0 elsewhere: (N,), not yet combined."""
    picked = matrix.gather(1, local_target.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(local_target >= 0, picked, torch.zeros_like(picked))


def target_values(matrix: torch.Tensor, local_target: torch.Tensor) -> torch.Tensor:
    """matrix[i, target_i] from whichever rank owns the target: (N,), for use replicated on every rank."""
    return D.all_reduce_replicated(owned_values(matrix, local_target), "sum")


def sharded_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log sum_j exp(logits_ij) over the classes of every shard: (N, C_local) -> (N,), replicated."""
    row_max = D.all_reduce_replicated(logits.detach().max(dim=1).values, "max")
    sumexp = torch.exp(logits - row_max.unsqueeze(1)).sum(dim=1)
    return torch.log(D.all_reduce_replicated(sumexp, "sum")) + row_max


def sharded_cross_entropy(
    logits: torch.Tensor, local_target: torch.Tensor, extra_logsumexp: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample softmax cross-entropy over class logits split across ranks: (N,), replicated.

    ``extra_logsumexp`` (scalar or (N,)), when given, adds ``exp(extra)`` to every row's denominator
    (UNPG's batch negatives) without materialising the extra columns.
    """
    lse = sharded_logsumexp(logits)
    if extra_logsumexp is not None:
        lse = torch.logaddexp(lse, extra_logsumexp)
    return lse - target_values(logits, local_target)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1, eps=1e-12)


def class_cosines(x: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * cos(x_i, w_j)``: (N, d) features and (K, d) class vectors -> (N, K).

    The products with the raw class vectors are divided by their norms, instead of normalising the class
    vectors first: a normalised (K, d) copy, and its gradient, would stay alive through the backward pass (two
    more class matrices, 4 GB at a million classes of d = 512), where this keeps one (N, K) tensor.
    """
    inv_norm = 1.0 / w.norm(dim=1).clamp_min(1e-12)
    return F.linear(normalized(x) * scale, w) * inv_norm
