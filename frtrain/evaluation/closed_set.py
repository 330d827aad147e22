"""Closed-set classification: top-1 and top-5 accuracy of the head's classifier on a held-out split of an
identity-folder data set (the object experiments of IE loss and Margin Loss: MNIST or CIFAR exported as folders).

The split is the one the training data leaves out (``data.holdout_fraction`` / ``holdout_seed`` of ``data=folder``,
:func:`frtrain.data.folder.holdout_mask`): per class, ``round(fraction x n)`` images (at least one, never all) drawn
by a seeded permutation; or a list file of held-out image paths. Classes are the sorted folder names, as training
numbers them. The scores of the classes come from the head's state (:func:`class_scorer`): linear logits ``W x + b``
when the head has a bias (the softmax-joint heads: softmax, center loss, IE loss, Margin Loss), the cosine to the class
vectors when it has only ``weight`` (the margin heads, NPT's proxies), the negative squared distance to the nearest
centre when it has only ``centers``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import FileImages
from frtrain.evaluation.intervals import ClusteredInterval, rate_interval
from frtrain.evaluation.results import WithoutPairs, pct


def class_scorer(head_state: dict | None):
    """(N, d) embeddings -> (N, C) class scores from a head's (whole, unsharded) state dict, or None without one."""
    if not head_state:
        return None
    w = head_state.get("weight")
    b = head_state.get("bias")
    centers = head_state.get("centers")
    def tensor(x):
        return torch.as_tensor(x, dtype=torch.float32)

    if isinstance(w, torch.Tensor) and w.ndim == 2:  # computed when called: a 1M-class head costs nothing unused
        if isinstance(b, torch.Tensor) and b.ndim == 1 and len(b) == len(w):
            return lambda x: tensor(x) @ w.detach().float().cpu().T + b.detach().float().cpu()
        return lambda x: (torch.nn.functional.normalize(tensor(x), dim=1)
                          @ torch.nn.functional.normalize(w.detach().float().cpu(), dim=1).T)
    if isinstance(centers, torch.Tensor) and centers.ndim == 2:
        return lambda x: -torch.cdist(tensor(x), centers.detach().float().cpu()) ** 2
    return None


@dataclass
class ClosedSetResult(WithoutPairs):
    name: str
    top1: float
    top5: float
    images: int
    classes: int
    options: dict
    interval: ClusteredInterval | None = None  # top-1's, from the cluster bootstrap over classes

    caption = ("Closed-set classification: top-1 and top-5 accuracy of the head's class scores on the held-out split "
               "(linear logits with a bias, else the cosine to the class vectors, else the nearest centre); top-1's 95% "
               "interval from a cluster bootstrap over the classes.")

    @property
    def accuracy(self) -> float:
        return self.top1

    def headline(self) -> str:
        return f"top-1 {pct(self.top1)}%, top-5 {pct(self.top5)}% ({self.images} held-out images)"

    def scalars(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5}

    def table(self) -> dict[str, str]:
        return {"benchmark": self.name, "images": str(self.images), "classes": str(self.classes),
                "top-1 (%)": pct(self.top1), "top-1 95% interval": self.interval.text() if self.interval else "—",
                "top-5 (%)": pct(self.top5), "time (s)": f"{self.seconds:.1f}"}

    def details(self) -> list[str]:
        return ["", f"{self.name}: " + "; ".join(f"{k} {v}" for k, v in self.options.items())]


@dataclass
class ClosedSetBenchmark:
    name: str
    paths: list[str]
    labels: np.ndarray  # (N,) class index, as training numbers the classes
    classes: list[str]
    options: dict = field(default_factory=dict)

    def score(self, embedder) -> ClosedSetResult:
        start = time.perf_counter()
        scorer = getattr(embedder, "classifier", None)
        if scorer is None:
            raise DataError(f"{self.name}: closed-set accuracy needs the head's class vectors: score a frtrain "
                            "checkpoint that holds them (or evaluate during single-process training)")
        emb, _ = embedder.embed(FileImages(self.paths), len(self.paths), self.name)
        scores = scorer(emb)
        if scores.shape[1] != len(self.classes):
            raise DataError(f"{self.name}: the head scores {scores.shape[1]} classes, the data set has "
                            f"{len(self.classes)}: not the data set this model was trained on")
        k = min(5, scores.shape[1])
        top = torch.topk(scores, k, dim=1).indices.numpy()
        labels = self.labels[:, None]
        options = dict(self.options, flip=embedder.flip)
        resamples = getattr(embedder, "interval_resamples", 0)
        interval = rate_interval(top[:, 0] == self.labels, self.labels, len(self.classes), "classes",
                                 resamples) if resamples else None
        return ClosedSetResult(self.name, float(np.mean(top[:, :1] == labels)), float(np.mean((top == labels).any(1))),
                               len(self.paths), len(self.classes), options, interval=interval,
                               seconds=time.perf_counter() - start)


def closed_set_benchmark(root: str, name: str = "closed_set", holdout_fraction: float = 0.1, holdout_seed: int = 0,
                         holdout_list: str | None = None) -> ClosedSetBenchmark:
    """The held-out split of the identity folders at ``root`` (see the module docstring)."""
    from frtrain.data.folder import holdout_mask, load_index

    root = os.path.abspath(os.path.expanduser(str(root)))
    classes, paths, labels = load_index(root, None)
    mask = holdout_mask(root, paths, labels, holdout_fraction, holdout_seed, holdout_list)
    if not mask.any():
        raise ConfigError(f"benchmarks.{name}: the held-out split of {root} is empty (holdout_fraction="
                          f"{holdout_fraction}, holdout_list={holdout_list})")
    held = [os.path.join(root, p.decode()) for p in paths[mask]]
    how = f"holdout_list {holdout_list}" if holdout_list else f"fraction {holdout_fraction} per class, seed {holdout_seed}"
    return ClosedSetBenchmark(name, held, labels[mask], classes, {"root": root, "split": how})
