"""IJB-B / IJB-C scoring: template-based 1:1 verification and 1:N identification, as insightface's ``eval_ijbc.py``
and ``ijb_1n.py`` do it (the release is read by :mod:`frtrain.evaluation.ijb_release`).

The procedure, every choice recorded with the result:

1. each image is aligned from its 5 landmarks onto the ArcFace template (:mod:`frtrain.evaluation.align`) and
   embedded with its horizontal flip; both embeddings are written to a memory-mapped file as they are computed,
   so an interrupted evaluation resumes where it stopped (``embeddings.done`` counts the images finished);
2. image feature: ``flip`` ``sum`` (insightface), ``concat`` or ``none``; ``normalize: false`` keeps the raw norm
   (insightface), ``true`` L2-normalises each image; ``score_weighting: true`` multiplies by the detector score;
3. template: the mean of the image features of each media, summed over the template's medias, L2-normalised
   (one streaming pass over the images sorted by template and media);
4. 1:1: cosine of every template pair (blockwise matrix products, a block of templates at a time); ROC; TAR at
   FAR 1e-6 .. 1e-1 by insightface's rule (the ROC point whose FPR is nearest the target, ties to the larger TPR:
   what papers report) and by the strict rule (the best TPR with FPR at most the target), both from
   :func:`frtrain.evaluation.metrics.roc`; AUC;
5. 1:N: per gallery, probes against gallery templates by cosine: top-1/5/10 identification rate of the mated
   probes and TPIR at FPIR 1e-2 and 1e-1 (the threshold from the non-mated probes' best scores).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frtrain.data.images import read_image, resize_to
from frtrain.evaluation import metrics
from frtrain.evaluation.align import align_face
from frtrain.evaluation.intervals import ClusteredInterval, linked_image_clusters, tar_interval
from frtrain.evaluation.results import pct, result_dict

log = logging.getLogger("frtrain")

FPIRS = (1e-2, 1e-1)


class _Aligned:
    """Picklable loader: image i aligned from its landmarks, at the model's input size, (H, W, 3) uint8 RGB."""

    def __init__(self, paths, landmarks, size):
        self.paths, self.landmarks, self.size = paths, landmarks, size

    def __call__(self, i: int) -> np.ndarray:
        crop = align_face(read_image(self.paths[i]), self.landmarks[i], 112, where=f"{self.paths[i]} landmarks")
        return resize_to(crop, self.size)


def embedding_file(bench, model_key: str, dim: int) -> Path:
    """Where this model's embeddings of this benchmark go: ``<cache_dir>/ijb/<hash>.f32``."""
    key = hashlib.sha1(f"{model_key}|{bench.root}|{bench.protocol}|{bench.num_images}|{dim}".encode()).hexdigest()[:16]
    base = Path(os.path.expanduser(bench.cache_dir or os.path.join("~", ".cache", "frtrain")))
    return base / "ijb" / f"{bench.protocol}-{key}.f32"


def embed_images(bench, embedder, path: Path) -> np.memmap:
    """(N, 2, d) float32 memmap at ``path``: each image's embedding and its flip's, written as computed; an
    earlier interrupted run of the same model and benchmark is continued from ``path.done``."""
    from tqdm import tqdm

    dim = embedder.embedding_size
    path.parent.mkdir(parents=True, exist_ok=True)
    done_file = path.with_suffix(".done")
    shape = (bench.num_images, 2, dim)
    done = int(done_file.read_text()) if done_file.is_file() and path.is_file() else 0
    emb = np.memmap(path, dtype=np.float32, mode="r+" if done else "w+", shape=shape)
    if done:
        log.info("%s: resuming the embedding at image %d of %d (%s)", bench.name, done, bench.num_images, path)
    if done >= bench.num_images:
        return emb
    load = _Aligned(bench.images, bench.landmarks, embedder.input_size)
    bar = tqdm(total=bench.num_images, initial=done, desc=f"{bench.name} images", unit="img",
               disable=not embedder.progress)
    for images in embedder.batches(load, bench.num_images, start=done):
        out, _ = embedder.forward([images], flip="concat")
        emb[done:done + len(out)] = out.reshape(len(out), 2, dim)
        done += len(out)
        emb.flush()
        done_file.write_text(str(done))
        bar.update(len(out))
    bar.close()
    return emb


def image_features(raw: np.ndarray, scores: np.ndarray, flip: str, normalize: bool, score_weighting: bool) -> np.ndarray:
    """Image features (n, d') from raw (n, 2, d) embeddings (plain, flip) and detector scores (n,), float64."""
    raw = np.asarray(raw, dtype=np.float64)
    feats = {"sum": raw[:, 0] + raw[:, 1], "none": raw[:, 0],
             "concat": raw.reshape(len(raw), -1)}[flip]
    if normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if score_weighting:
        feats = feats * np.asarray(scores, dtype=np.float64)[:, None]
    return feats


def template_features(raw, scores, image_rows, templates, medias, flip, normalize, score_weighting,
                      chunk_images: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(unique template ids (T,), L2-normalised template features (T, d')) in one streaming pass.

    ``image_rows`` (n,) index ``raw``/``scores``; ``templates``/``medias`` (n,) are their ids. Images are sorted by
    (template, media); chunks end at media boundaries, so each media's mean is exact.
    """
    order = np.lexsort((medias, templates))
    t_sorted, m_sorted = templates[order], medias[order]
    starts = np.flatnonzero(np.r_[True, (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])])
    ends = np.r_[starts[1:], len(order)]
    unique_t = np.unique(templates)
    dim = image_features(raw[:1], scores[:1], flip, normalize, score_weighting).shape[1]
    out = np.zeros((len(unique_t), dim))
    g = 0
    while g < len(starts):
        last = max(g, np.searchsorted(ends, starts[g] + chunk_images, side="right") - 1)
        lo, hi = starts[g], ends[last]
        rows = image_rows[order[lo:hi]]
        keep = np.argsort(rows, kind="stable")  # read the memmap in file order, then put back
        feats = np.empty((hi - lo, dim))
        feats[keep] = image_features(raw[rows[keep]], scores[rows[keep]], flip, normalize, score_weighting)
        group_starts = starts[g:last + 1] - lo
        sums = np.add.reduceat(feats, group_starts, axis=0)
        counts = (ends[g:last + 1] - starts[g:last + 1]).astype(np.float64)
        where = np.searchsorted(unique_t, t_sorted[starts[g:last + 1]])
        np.add.at(out, where, sums / counts[:, None])
        g = last + 1
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return unique_t, out


def pair_scores(unique_t: np.ndarray, feats: np.ndarray, pairs: np.ndarray, block: int = 1024) -> np.ndarray:
    """Cosine (P,) of every template pair: for each block of first templates one (block x T) product, read off.

    Memory beyond the (P,) float32 result: the block of each pair's first template (2 bytes a pair for fewer than
    2^15 blocks), and per block its pairs' template indices and the product; no sort of the pair list and no
    per-pair int64 index array (IJB-C's 15.7M pairs: ~250 MB each)."""
    small = len(unique_t) // block < 2**15
    first_block = np.empty(len(pairs), np.int16 if small else np.int32)
    for lo in range(0, len(pairs), 1 << 20):  # in slices: searchsorted's int64 result is 8 bytes a pair
        first_block[lo:lo + (1 << 20)] = np.searchsorted(unique_t, pairs[lo:lo + (1 << 20), 0]) // block
    f32 = feats.astype(np.float32)
    scores = np.empty(len(pairs), dtype=np.float32)
    for k, lo in enumerate(range(0, len(unique_t), block)):
        sel = np.flatnonzero(first_block == k)
        if sel.size:
            a = np.searchsorted(unique_t, pairs[sel, 0]) - lo
            b = np.searchsorted(unique_t, pairs[sel, 1])
            scores[sel] = (f32[lo:lo + block] @ f32.T)[a, b]
    return scores


def identification_rates(probe_feats, probe_subjects, gallery_feats, gallery_subjects, ranks=(1, 5, 10),
                         fpirs=FPIRS, block: int = 1024) -> dict:
    """Closed-set top-k identification rates of the mated probes and open-set TPIR at FPIR (non-mated probes set
    the threshold: the score that a fraction FPIR of their best gallery scores reach)."""
    mated = np.isin(probe_subjects, gallery_subjects)
    rank_of, best, best_correct = np.empty(len(probe_feats), np.int64), np.empty(len(probe_feats)), np.zeros(len(probe_feats), bool)
    g32 = gallery_feats.astype(np.float32)
    for lo in range(0, len(probe_feats), block):
        sim = probe_feats[lo:lo + block].astype(np.float32) @ g32.T
        order = np.argsort(-sim, axis=1, kind="stable")
        hit = gallery_subjects[order] == probe_subjects[lo:lo + block, None]
        rank_of[lo:lo + block] = np.where(hit.any(1), hit.argmax(1) + 1, len(gallery_feats) + 1)
        best[lo:lo + block] = sim.max(1)
        best_correct[lo:lo + block] = hit[:, 0]
    out = {"mated_probes": int(mated.sum()), "non_mated_probes": int((~mated).sum())}
    for k in ranks:
        out[f"top{k}"] = float((rank_of[mated] <= k).mean()) if mated.any() else None
    non = np.sort(best[~mated])[::-1]
    for f in fpirs:
        if len(non) == 0:
            out[f"tpir@fpir={f:g}"] = None
            continue
        k = int(np.floor(f * len(non)))
        threshold = np.nextafter(non[k], np.inf) if k < len(non) else non[-1]
        out[f"tpir@fpir={f:g}"] = float((best_correct[mated] & (best[mated] >= threshold)).mean()) if mated.any() else None
    return out


#: what the interval of a template protocol resamples
SUBJECT_UNIT = "subjects (templates linked by genuine pairs)"

#: the TAR@FAR columns of the template table (both rules)
TABLE_FARS = tuple(f"{f:g}" for f in metrics.FARS)


@dataclass
class TemplateResult:
    """Scores of a template benchmark. TARs and rates are fractions. ``accuracy`` (the number training selects
    ``best.pt`` by) is TAR at FAR 1e-4 by insightface's rule."""

    name: str
    num_pairs: int
    num_templates: int
    num_images: int
    tar_at_far: dict  # insightface's rule: the ROC point whose FPR is nearest the target (ties: the larger TPR)
    tar_at_far_strict: dict  # the best TPR with FPR at most the target
    auc: float
    num_impostors: int
    settings: dict
    identification: dict = field(default_factory=dict)
    far_thresholds: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    roc: dict = field(default_factory=dict, repr=False)
    #: TAR@FAR=1e-4's 95% interval from the cluster bootstrap over subjects (None when not computed)
    interval: ClusteredInterval | None = None
    #: each template pair's ``score``, ``issame``, ``cluster_a``, ``cluster_b`` (subjects): what frtrain-compare
    #: resamples for a paired difference of TAR@FAR
    per_pair: dict | None = field(default=None, repr=False, compare=False)

    caption = ("Template benchmarks (1:1): TAR (%) at FAR by insightface's rule (eval_ijbc.py: the ROC point whose FPR "
               "is nearest the target, ties to the larger TPR; what papers report) / by the strict rule (the best TPR "
               "with FPR at most the target); the 95% interval of TAR@FAR=1e-4 (insightface's rule) is a cluster "
               "bootstrap over subjects (templates linked by genuine pairs; a pair kept with its subjects' "
               "multiplicities).")

    @property
    def accuracy(self) -> float:
        return self.tar_at_far["0.0001"]

    def scalars(self) -> dict[str, float]:
        out = {f"tar@far={k}": v for k, v in self.tar_at_far.items()}
        out.update({f"tar_strict@far={k}": v for k, v in self.tar_at_far_strict.items()}, auc=self.auc)
        for g, rates in self.identification.items():
            out.update({f"{g}/{k}": v for k, v in rates.items() if isinstance(v, float)})
        return out

    def headline(self) -> str:
        return (f"TAR@FAR=1e-4 {100 * self.accuracy:.2f}% (insightface's rule; strict "
                f"{100 * self.tar_at_far_strict['0.0001']:.2f}%)")

    def table(self) -> dict[str, str]:
        row = {"benchmark": self.name, "templates": str(self.num_templates), "pairs": str(self.num_pairs),
               "TAR@1e-4 95% interval": self.interval.text() if self.interval else "—",
               "resampled": f"{self.interval.clusters} {self.interval.unit.split(' (')[0]}" if self.interval else "—"}
        row.update({f"FAR={f}": f"{pct(self.tar_at_far.get(f))} / {pct(self.tar_at_far_strict.get(f))}"
                    for f in TABLE_FARS})
        row.update({"AUC": f"{self.auc:.4f}", "time (s)": f"{self.seconds:.1f}"})
        return row

    def details(self) -> list[str]:
        lines = ["", f"{self.name} settings: " + "; ".join(f"{k} {v}" for k, v in self.settings.items())]
        if self.identification:
            lines += ["", f"{self.name} 1:N identification (%):", "",
                      "| gallery | top-1 | top-5 | top-10 | TPIR@FPIR=1e-2 | TPIR@FPIR=1e-1 |",
                      "|---|---:|---:|---:|---:|---:|"]
            for g, rates in self.identification.items():
                lines.append(f"| {g} | " + " | ".join(pct(rates.get(k)) for k in
                                                      ("top1", "top5", "top10", "tpir@fpir=0.01", "tpir@fpir=0.1")) + " |")
        return lines

    def to_dict(self, with_roc: bool = False) -> dict:
        return result_dict(self, with_roc)


def score_templates(bench, embedder) -> TemplateResult:
    """The whole protocol with ``embedder``; with its ``model_key`` the embeddings persist (and resume) under the
    cache."""
    start = time.perf_counter()
    model_key = embedder.model_key
    path = embedding_file(bench, model_key or f"temporary-{os.getpid()}-{id(embedder)}-{time.time()}",
                          embedder.embedding_size)
    try:
        raw = embed_images(bench, embedder, path)
        rows = np.arange(bench.num_images)
        unique_t, feats = template_features(raw, bench.scores, rows, bench.templates, bench.medias, bench.flip,
                                            bench.normalize, bench.score_weighting)
        scores = pair_scores(unique_t, feats, bench.pairs)
        curve = metrics.roc(bench.labels, scores)
        t_index = np.unique(bench.pairs, return_inverse=True)[1].reshape(-1, 2)
        clusters, count = linked_image_clusters(t_index, bench.labels == 1, int(t_index.max()) + 1)
        resamples = getattr(embedder, "interval_resamples", 0)
        interval = tar_interval(bench.labels == 1, scores, clusters, count, SUBJECT_UNIT, 1e-4, "insightface",
                                resamples) if resamples else None
        impostors = curve.impostors
        notes = list(bench.notes)
        for far in metrics.FARS:
            if not metrics.enough_impostors(impostors, far):
                notes.append(f"TAR@FAR={far:g}: {impostors} impostor pairs cannot measure a rate this low (the "
                             "insightface-rule figure is the nearest ROC point all the same)")
        ident = {}
        if bench.identification:
            probe = bench.identification["probe"]
            pt, pf = template_features(raw, bench.scores, probe["images"], probe["templates"], probe["medias"],
                                       bench.flip, bench.normalize, bench.score_weighting)
            p_sub = _subjects(probe, pt)
            galleries = [g for g in bench.identification if g != "probe"]
            for g in galleries:
                gal = bench.identification[g]
                gt, gf = template_features(raw, bench.scores, gal["images"], gal["templates"], gal["medias"],
                                           bench.flip, bench.normalize, bench.score_weighting)
                ident[g] = identification_rates(pf, p_sub, gf, _subjects(gal, gt))
            keys = [k for k in ident[galleries[0]] if k.startswith(("top", "tpir"))]
            ident["mean"] = {k: float(np.mean([ident[g][k] for g in galleries]))
                             if all(ident[g][k] is not None for g in galleries) else None for k in keys}
    finally:
        if model_key is None:  # a throw-away file (evaluation during training)
            for p in (path, path.with_suffix(".done")):
                if p.exists():
                    p.unlink()
    return TemplateResult(
        name=bench.name, num_pairs=bench.num_pairs, num_templates=len(unique_t), num_images=bench.num_images,
        tar_at_far=curve.tar["insightface"], tar_at_far_strict=curve.tar["strict"], auc=curve.auc,
        num_impostors=impostors, settings=bench.settings(), identification=ident,
        far_thresholds={f"{far:g}": metrics.threshold_at_far(scores[bench.labels == 0], far)
                        for far in metrics.THRESHOLD_FARS},
        seconds=time.perf_counter() - start, notes=notes, roc={"fpr": curve.fpr, "tpr": curve.tpr}, interval=interval,
        per_pair={"score": np.asarray(scores, np.float32), "issame": bench.labels == 1,
                  "cluster_a": clusters[:, 0].astype(np.int32), "cluster_b": clusters[:, 1].astype(np.int32)})


def _subjects(lists: dict, unique_t: np.ndarray) -> np.ndarray:
    """The subject of each template (T,), from the per-image rows of a 1:N list."""
    first = {}
    for t, s in zip(lists["templates"].tolist(), lists["subjects"].tolist()):
        first.setdefault(t, s)
    return np.asarray([first[t] for t in unique_t.tolist()])
