"""Pair benchmarks: image pairs with same/different labels and fold ids, scored by insightface's 10-fold protocol.

A :class:`PairBenchmark` holds a way to load image i (-> (H, W, 3) uint8 RGB), the pairs as indices into those
images, the labels and the fold of each pair; ``score(embedder)`` embeds every image once and returns a
:class:`PairResult` (10-fold accuracy, ROC, TAR at FAR by the strict rule, AUC, EER, thresholds, each pair's
outcome). The readers of ``.bin`` files and of pairs of image files (LFW, CFP, CSV lists) are here too.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.preprocessing import normalize

from frtrain.data.images import center_crop, decode_image, read_image
from frtrain.errors import DataError
from frtrain.evaluation import metrics
from frtrain.evaluation.binfile import read_bin
from frtrain.evaluation.group_breakdown import breakdown, breakdown_lines, pair_groups_of, read_image_groups
from frtrain.evaluation.intervals import (ClusteredInterval, dense_clusters, kfold_accuracy_interval,
                                         linked_image_clusters)
from frtrain.evaluation.metrics import kfold_ids
from frtrain.evaluation.results import pct, result_dict


@dataclass
class PairBenchmark:
    """Pairs of images to verify.

    Attributes:
        name: shown in reports and TensorBoard.
        num_images: how many distinct images ``load`` serves (each is decoded once).
        load: i -> (H, W, 3) uint8 RGB image.
        pairs: (N, 2) int indices into the images.
        issame: (N,) bool.
        folds: (N,) int fold id of each pair.
        source: the file or directory the benchmark came from.
        skipped_pairs: pairs dropped because an image was missing (only with skip_missing).
        item_of_image: for video benchmarks (YTF), (num_images,) the video each frame belongs to; the
            pairs then index videos, whose embedding is the normalised mean of their frames' normalised
            embeddings. None: the pairs index images.
    """

    name: str
    num_images: int
    load: Callable[[int], np.ndarray]
    pairs: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    source: str = ""
    skipped_pairs: int = 0
    notes: list[str] = field(default_factory=list)
    item_of_image: np.ndarray | None = None
    #: the group of each pair (P,) for the breakdown at one global threshold (:mod:`frtrain.evaluation.groups`)
    pair_groups: np.ndarray | None = None
    groups_far: float = 1e-3
    #: (P, 2) the identity cluster of each pair's two sides (0..num_clusters-1) for the interval; None: the images
    #: linked by genuine pairs (:mod:`frtrain.evaluation.intervals`)
    pair_clusters: np.ndarray | None = None
    num_clusters: int = 0
    cluster_unit: str = ""
    #: (num_images,) the person of each image where the reader knows it (files in a folder per person): the names
    #: frtrain-audit matches against a training set
    image_people: list[str] | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def clusters(self) -> tuple[np.ndarray, int, str]:
        """((P, 2) cluster of each pair's sides, C, unit): the people where the reader knows them, else the images
        linked by genuine pairs."""
        if self.pair_clusters is not None:
            return self.pair_clusters, self.num_clusters, self.cluster_unit
        items = self.num_images if self.item_of_image is None else int(self.item_of_image.max()) + 1
        linked, count = linked_image_clusters(self.pairs, self.issame, items)
        return linked, count, "images linked by genuine pairs (the benchmark names no people)"

    def with_groups(self, groups_csv: str, far: float = 1e-3) -> "PairBenchmark":
        """Group the pairs by a CSV mapping each image file to a group (the ``groups`` option of any pair benchmark
        read from image files)."""
        paths = getattr(self.load, "paths", None)
        if paths is None or self.item_of_image is not None:
            raise DataError(f"{self.source}: groups need pairs of image files (a .bin has no file names; YTF pairs videos)")
        self.pair_groups = pair_groups_of(list(paths), self.pairs, read_image_groups(groups_csv), groups_csv)
        self.groups_far = float(far)
        return self

    def embeddings(self, embedder) -> tuple[np.ndarray, float | None]:
        """(embedding of every image, or of every video for YTF, (n, d'); XNorm) as the protocol scores them."""
        emb, xnorm = embedder.embed(self.load, self.num_images, self.name)
        if len(emb) != self.num_images:
            raise RuntimeError(f"{self.name}: embedded {len(emb)} images, expected {self.num_images}")
        if self.item_of_image is not None:
            emb = mean_per_item(emb, self.item_of_image)
        return emb, xnorm

    def pair_scores(self, embedder) -> np.ndarray:
        """The cosine similarity (P,) of every pair, as scoring computes it (1 - d/2)."""
        emb, _ = self.embeddings(embedder)
        return 1.0 - metrics.pair_distances(emb[self.pairs[:, 0]], emb[self.pairs[:, 1]]) / 2.0

    def score(self, embedder) -> "PairResult":
        """Embed every image once (``embedder``: :class:`frtrain.evaluation.embed.Embedder`) and score the pairs."""
        start = time.perf_counter()
        emb, xnorm = self.embeddings(embedder)
        result = verification_scores(self.name, emb[self.pairs[:, 0]], emb[self.pairs[:, 1]], self.issame,
                                     self.folds, embedder.thresholds, xnorm, clusters=self.clusters(),
                                     resamples=getattr(embedder, "interval_resamples", 0))
        result.skipped_pairs = self.skipped_pairs
        result.notes = list(self.notes) + result.notes
        if self.pair_groups is not None:
            result.groups = breakdown(result.per_pair["score"], self.issame, self.pair_groups, self.groups_far,
                                      result.per_pair["correct"])
        result.seconds = time.perf_counter() - start
        return result


def mean_per_item(emb: np.ndarray, item_of_image: np.ndarray) -> np.ndarray:
    """Per-item (video) embedding: the normalised mean of its images' normalised embeddings.

    (N, d) image embeddings and (N,) item ids -> (num_items, d) float64.
    """
    e = normalize(np.asarray(emb, dtype=np.float64))
    out = np.zeros((int(item_of_image.max()) + 1, e.shape[1]))
    np.add.at(out, item_of_image, e)
    return normalize(out)


#: the TAR@FAR columns of the pair table
PAIR_TABLE_FARS = ("0.001", "0.0001")


@dataclass
class PairResult:
    """Scores of a pair benchmark. Accuracies are fractions (0..1); thresholds are distances d = 2 - 2cos; TAR at
    FAR by the strict rule (None where the impostor pairs cannot measure the rate)."""

    name: str
    num_pairs: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    threshold: float
    tar_at_far: dict[str, float | None]
    auc: float
    eer: float
    xnorm: float | None = None
    num_impostors: int = 0
    far_thresholds: dict[str, dict] = field(default_factory=dict)
    skipped_pairs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    tar_rule: str = "strict"
    #: the breakdown by group at one global threshold, when the benchmark groups its pairs (BFW, ``groups``)
    groups: dict | None = None
    roc: dict[str, list[float]] = field(default_factory=dict, repr=False)
    #: per-pair arrays (N,): ``score`` (cosine), ``issame``, ``fold``, ``correct`` (at its fold's threshold)
    per_pair: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    #: the accuracy's 95% interval from the cluster bootstrap over identities (None when not computed)
    interval: ClusteredInterval | None = None

    caption = ("Pair benchmarks: accuracy is insightface's 10-fold protocol (a threshold per fold chosen on the other "
               "folds); its 95% interval is a cluster bootstrap over the unit named beside it (pairs of a resampled "
               "person kept with its multiplicity, impostor pairs when both people are drawn, thresholds chosen again "
               "per resample on the other folds); ± std is over the 10 folds; TAR@FAR by the strict rule (the best TPR with FPR at most the target; — with fewer than 1/FAR "
               "impostor pairs); threshold: the mean chosen distance 2 - 2cos.")

    def to_dict(self, with_roc: bool = False) -> dict:
        return result_dict(self, with_roc)

    def scalars(self) -> dict[str, float]:
        """What TensorBoard gets: the summary numbers by name."""
        out = {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std, "auc": self.auc, "eer": self.eer,
               "threshold": self.threshold}
        if self.xnorm is not None:
            out["xnorm"] = self.xnorm
        out.update({f"tar@far={k}": v for k, v in self.tar_at_far.items() if v is not None})
        for g, r in (self.groups or {}).get("groups", {}).items():
            out.update({f"group/{g}/{k}": r[k] for k in ("tar", "fmr", "accuracy") if r.get(k) is not None})
        return out

    def headline(self) -> str:
        interval = f" (95% {self.interval.text()})" if self.interval else ""
        return f"accuracy {100 * self.accuracy:.2f}% ± {100 * self.accuracy_std:.2f}{interval}"

    def table(self) -> dict[str, str]:
        row = {"benchmark": self.name, "pairs": str(self.num_pairs), "accuracy (%)": f"{100 * self.accuracy:.2f}",
               "95% interval": self.interval.text() if self.interval else "—",
               "resampled": f"{self.interval.clusters} {self.interval.unit}" if self.interval else "—",
               "± std": f"{100 * self.accuracy_std:.2f}"}
        row.update({f"TAR@FAR={float(f):g} (strict)": pct(self.tar_at_far.get(f)) for f in PAIR_TABLE_FARS})
        row.update({"AUC": f"{self.auc:.4f}", "EER (%)": f"{100 * self.eer:.2f}", "threshold": f"{self.threshold:.3f}",
                    "XNorm": "—" if self.xnorm is None else f"{self.xnorm:.2f}", "skipped": str(self.skipped_pairs),
                    "time (s)": f"{self.seconds:.1f}"})
        return row

    def details(self) -> list[str]:
        if not self.groups:
            return []
        return breakdown_lines(self.name, self.groups)


def verification_scores(name: str, emb1: np.ndarray, emb2: np.ndarray, issame, folds: np.ndarray,
                        thresholds: str = "grid", xnorm: float | None = None, clusters=None,
                        resamples: int = 0) -> PairResult:
    """All metrics of one benchmark from the two embeddings of each pair (any scale; normalised here); with
    ``clusters`` ((P, 2) ids, C, unit) and ``resamples`` > 0, the accuracy's cluster-bootstrap interval."""
    issame = np.asarray(issame, dtype=bool)
    if issame.all() or not issame.any():
        raise DataError(f"{name}: needs both matched and mismatched pairs to score")
    dist = metrics.pair_distances(emb1, emb2)
    accs, chosen = metrics.kfold_accuracy(dist, issame, np.asarray(folds), thresholds)
    score = 1.0 - dist / 2.0  # cosine similarity
    num_neg = int(np.sum(~issame))
    curve = metrics.roc(issame, score, roc_points=1 << 30)
    tars = {f: (t if metrics.enough_impostors(num_neg, float(f)) else None) for f, t in curve.tar["strict"].items()}
    tars = {f: t for f, t in tars.items() if t is not None or f in PAIR_TABLE_FARS}
    notes = [f"TAR@FAR={f} needs at least {int(round(1 / float(f)))} negative pairs, there are {num_neg}"
             for f in PAIR_TABLE_FARS if tars.get(f) is None]
    return PairResult(
        name=name, num_pairs=int(issame.size), accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
        fold_accuracies=[float(a) for a in accs], threshold=float(np.mean(chosen)), tar_at_far=tars,
        auc=curve.auc, eer=curve.eer, xnorm=xnorm, notes=notes, num_impostors=num_neg,
        far_thresholds={f"{far:g}": metrics.threshold_at_far(score[~issame], far) for far in metrics.THRESHOLD_FARS},
        roc={"fpr": curve.fpr, "tpr": curve.tpr},
        per_pair=per_pair_outcomes(dist, issame, np.asarray(folds), chosen, None if clusters is None else clusters[0]),
        interval=accuracy_interval(dist, issame, folds, thresholds, clusters, resamples))


def accuracy_interval(dist, issame, folds, thresholds, clusters, resamples: int) -> ClusteredInterval | None:
    """The 10-fold accuracy's cluster-bootstrap interval; ``thresholds=exact`` resamples choose among the cuts
    between all distinct distances."""
    if clusters is None or resamples <= 0:
        return None
    ids, count, unit = clusters
    if isinstance(thresholds, str) and thresholds == "exact":
        d = np.unique(dist)
        grid = np.r_[d[0], (d[1:] + d[:-1]) / 2.0, np.nextafter(d[-1], np.inf)]
    else:
        grid = None if isinstance(thresholds, str) else np.asarray(thresholds)
    return kfold_accuracy_interval(dist, issame, folds, ids, count, unit, grid, resamples)


def per_pair_outcomes(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray, chosen: np.ndarray,
                      clusters: np.ndarray | None = None) -> dict:
    """Each pair's cosine, label, fold, whether its fold's threshold (``chosen``, one per sorted fold value)
    classifies it correctly and (with ``clusters`` (P, 2)) its sides' identity clusters: what paired comparisons of
    two models need (frtrain-compare)."""
    fold_values = np.unique(folds)
    threshold = np.asarray(chosen)[np.searchsorted(fold_values, folds)]
    out = {"score": (1.0 - dist / 2.0).astype(np.float32), "issame": issame.astype(bool),
           "fold": folds.astype(np.int16), "correct": (dist < threshold) == issame}
    if clusters is not None:
        out["cluster_a"], out["cluster_b"] = (np.asarray(clusters[:, k], dtype=np.int32) for k in (0, 1))
    return out


class _BinImages:
    """Picklable loader of the encoded images of a .bin (sent to DataLoader workers)."""

    def __init__(self, images: list[bytes], source: str):
        self.images, self.source = images, source

    def __call__(self, i: int) -> np.ndarray:
        return decode_image(self.images[i], f"{self.source} image {i}")


def bin_benchmark(path: str, name: str | None = None, num_folds: int = 10) -> PairBenchmark:
    """An insightface ``.bin``: pair i is images 2i and 2i+1; folds are 10 consecutive equal chunks."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    images, issame = read_bin(path)
    n = len(issame)
    if n < num_folds:
        raise DataError(f"{path}: {n} pairs cannot be split into {num_folds} folds")
    # identical encoded images (a .bin repeats an image for every pair it is in) are embedded once
    first: dict[bytes, int] = {}
    unique = [first.setdefault(hashlib.sha1(b).digest(), len(first)) for b in images]
    distinct = [None] * len(first)
    for i, u in enumerate(unique):
        if distinct[u] is None:
            distinct[u] = images[i]
    index = np.asarray(unique, dtype=np.int64)
    pairs = np.stack([index[0::2], index[1::2]], axis=1)
    return PairBenchmark(
        name=name or os.path.splitext(os.path.basename(path))[0], num_images=len(distinct),
        load=_BinImages(distinct, path), pairs=pairs, issame=np.asarray(issame, dtype=bool),
        folds=kfold_ids(n, num_folds), source=path,
    )


def synthetic_benchmark(cache_dir: str, name: str = "synthetic", **spec) -> PairBenchmark:
    """The synthetic verification split (generated on first use) as a .bin benchmark."""
    from frtrain.data.synthetic import synthetic_verification_bin

    return bin_benchmark(str(synthetic_verification_bin(cache_dir, **spec)), name=name)


class FileImages:
    """Picklable loader of image files (sent to DataLoader workers), optionally cropped (fractions cut off each
    border): ``FileImages(paths, crop)(i)`` -> (H, W, 3) uint8 RGB."""

    def __init__(self, paths: list[str], crop=None):
        self.paths, self.crop = paths, crop

    def __call__(self, i: int) -> np.ndarray:
        return center_crop(read_image(self.paths[i]), self.crop)


def parent_folder(path: str) -> str:
    """The person of an image in an identity-folder layout: its folder's name."""
    return os.path.basename(os.path.dirname(path))


def file_pair_benchmark(name: str, source: str, file_pairs: list[tuple[str, str]], issame: list[bool],
                        folds: list[int], where: list[str], crop=None, skip_missing: bool = False,
                        notes: list[str] | None = None, identity_of: Callable[[str], str] = parent_folder,
                        unit: str = "people (the images' folders)") -> PairBenchmark:
    """A benchmark from pairs of image paths; each distinct file is decoded once. The readers of LFW, CFP and
    CSV pair lists are built on it.

    Args:
        where: for each pair, where it came from (``file:line``), for the missing-image error.
        skip_missing: drop (and count) pairs with a missing image instead of failing; a benchmark left with
            no pair at all is an error all the same (a wrong root, not a few missing files).
        identity_of: an image path -> its person, the unit the interval resamples (``unit`` names it).
    """
    index: dict[str, int] = {}
    rows, same, fold, skipped, notes = [], [], [], 0, list(notes or [])
    for (f1, f2), s, k, w in zip(file_pairs, issame, folds, where):
        missing = [f for f in (f1, f2) if f not in index and not os.path.isfile(f)]
        if missing:
            if not skip_missing:
                raise DataError(f"{missing[0]}: no such image ({w}); skip_missing=true drops such pairs")
            skipped += 1
            continue
        rows.append([index.setdefault(f, len(index)) for f in (f1, f2)])
        same.append(bool(s))
        fold.append(int(k))
    if skipped:
        notes.append(f"{skipped} pairs skipped: an image file is missing")
    if not rows:
        raise DataError(f"{source}: none of its {len(file_pairs)} pairs has both images (e.g. {file_pairs[0][0]} is "
                        "missing); is the image directory right?" if file_pairs else f"{source}: lists no pairs")
    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise DataError(f"{source}: its usable pairs are all {'same' if same.all() else 'different'}-person pairs; "
                        "scoring needs both kinds")
    pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    people = [identity_of(f) for f in index]
    clusters, count = dense_clusters([[people[a], people[b]] for a, b in pairs])
    return PairBenchmark(name=name, num_images=len(index), load=FileImages(list(index), crop), pairs=pairs, issame=same,
                         folds=np.asarray(fold, dtype=np.int64), source=source, skipped_pairs=skipped, notes=notes,
                         pair_clusters=clusters, num_clusters=count, cluster_unit=unit, image_people=people)

