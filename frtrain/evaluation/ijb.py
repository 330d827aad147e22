"""IJB-B / IJB-C: template-based 1:1 verification and 1:N identification, as insightface's ``eval_ijbc.py`` does it.

Layout (insightface's IJB release), under ``root``::

    meta/<p>_face_tid_mid.txt         image name, template id, media id (space separated)
    meta/<p>_template_pair_label.txt  template 1, template 2, label (1 same, 0 different)
    meta/<p>_name_5pts_score.txt      image name, 5 landmarks (x1 y1 ... x5 y5), detector score
    meta/<p>_1N_gal_{G1,G2|S1,S2}.csv, meta/<p>_1N_probe_mixed.csv   (1:N; optional) header with TEMPLATE_ID,
                                      SUBJECT_ID, FILENAME (the image's name in the landmark list) [, SIGHTING_ID]
    loose_crop/<image name>

with ``<p>`` = ``ijbb`` or ``ijbc``. The procedure, every choice recorded with the result:

1. each image is aligned from its 5 landmarks onto the ArcFace template (:mod:`frtrain.evaluation.align`) and
   embedded with its horizontal flip; both embeddings are written to a memory-mapped file as they are computed,
   so an interrupted evaluation resumes where it stopped (``embeddings.done`` counts the images finished);
2. image feature: ``flip`` ``sum`` (insightface), ``concat`` or ``none``; ``normalize: false`` keeps the raw norm
   (insightface), ``true`` L2-normalises each image; ``score_weighting: true`` multiplies by the detector score;
3. template: the mean of the image features of each media, summed over the template's medias, L2-normalised
   (one streaming pass over the images sorted by template and media);
4. 1:1: cosine of every template pair (blockwise matrix products, a block of templates at a time); ROC; TAR at
   FAR 1e-6 .. 1e-1 by insightface's rule (the ROC point whose FPR is nearest the target: what papers report) and
   by the strict rule (the best TPR with FPR at most the target); AUC;
5. 1:N: per gallery, probes against gallery templates by cosine: top-1/5/10 identification rate of the mated
   probes and TPIR at FPIR 1e-2 and 1e-1 (the threshold from the non-mated probes' best scores).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from frtrain.data.images import read_image, resize_to
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.align import align_face

log = logging.getLogger("frtrain")

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (1e-2, 1e-1)
GALLERIES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}


def _rows(path: str, expected: int, what: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a space-separated file; a line with another field count names file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file ({what})")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != expected:
                raise DataError(f"{path}:{lineno}: expected {what}: {expected} fields, got {len(fields)}: {line.strip()!r}")
            out.append((lineno, fields))
    if not out:
        raise DataError(f"{path}: is empty ({what})")
    return out


def _ints(path: str, lineno: int, fields: list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in fields]
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected {what} as integers, got {' '.join(fields)!r}") from None


@dataclass
class TemplateBenchmark:
    """An IJB-style template benchmark (see the module docstring). Arrays are aligned on the images of the
    landmark list; ``pairs`` hold template ids."""

    name: str
    root: str
    protocol: str
    images: list[str]
    landmarks: np.ndarray  # (N, 5, 2) float32
    scores: np.ndarray  # (N,) detector scores
    templates: np.ndarray  # (N,) template id of each image
    medias: np.ndarray  # (N,) media id of each image
    pairs: np.ndarray  # (P, 2) template ids
    labels: np.ndarray  # (P,) 1 same, 0 different
    identification: dict[str, dict] = field(default_factory=dict)  # gallery name -> {templates, subjects, rows...}
    flip: str = "sum"
    normalize: bool = False
    score_weighting: bool = True
    cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_pairs(self) -> int:
        return len(self.labels)

    def settings(self) -> dict:
        return {"flip": self.flip, "normalize_images": self.normalize, "score_weighting": self.score_weighting,
                "alignment": "5-point similarity onto the ArcFace 112x112 template",
                "template": "mean per media, summed over medias, L2-normalised"}


def ijb_benchmark(root: str, protocol: str = "ijbc", name: str | None = None, flip: str = "sum",
                  normalize: bool = False, score_weighting: bool = True, identification: bool = True,
                  cache_dir: str | None = None) -> TemplateBenchmark:
    """Read an IJB-B/C release (see the module docstring); errors name the file, the line and what was expected."""
    if protocol not in GALLERIES:
        raise ConfigError(f"benchmarks.<name>.protocol={protocol!r}: expected ijbb or ijbc")
    if flip not in ("sum", "concat", "none"):
        raise ConfigError(f"benchmarks.<name>.flip={flip!r}: expected sum, concat or none")
    root = os.path.abspath(os.path.expanduser(str(root)))
    meta = os.path.join(root, "meta")
    if not os.path.isdir(meta):
        raise DataError(f"{root}: no meta/ directory (expected insightface's IJB layout: meta/{protocol}_*.txt, loose_crop/)")
    lmk_path = os.path.join(meta, f"{protocol}_name_5pts_score.txt")
    images, landmarks, scores, index_of = [], [], [], {}
    for lineno, f in _rows(lmk_path, 12, "'<image> x1 y1 ... x5 y5 <score>'"):
        try:
            values = [float(v) for v in f[1:]]
        except ValueError:
            raise DataError(f"{lmk_path}:{lineno}: expected 11 numbers after the image name, got {' '.join(f[1:])!r}") from None
        index_of[f[0]] = len(images)
        images.append(os.path.join(root, "loose_crop", f[0]))
        landmarks.append(values[:10])
        scores.append(values[10])
    tid_path = os.path.join(meta, f"{protocol}_face_tid_mid.txt")
    tid_rows = _rows(tid_path, 3, "'<image> <template id> <media id>'")
    if len(tid_rows) != len(images):
        raise DataError(f"{tid_path}: lists {len(tid_rows)} images, {lmk_path} lists {len(images)}; they must match "
                        "line for line")
    templates, medias = np.empty(len(images), np.int64), np.empty(len(images), np.int64)
    for i, (lineno, f) in enumerate(tid_rows):
        if os.path.join(root, "loose_crop", f[0]) != images[i]:
            raise DataError(f"{tid_path}:{lineno}: image {f[0]!r}, but line {i + 1} of {lmk_path} is "
                            f"{os.path.basename(images[i])!r}; the two lists must be in the same order")
        templates[i], medias[i] = _ints(tid_path, lineno, f[1:], "template and media ids")
    known = set(templates.tolist())
    pair_path = os.path.join(meta, f"{protocol}_template_pair_label.txt")
    pairs, labels = [], []
    for lineno, f in _rows(pair_path, 3, "'<template 1> <template 2> <label>'"):
        t1, t2, label = _ints(pair_path, lineno, f, "two template ids and a 0/1 label")
        for t in (t1, t2):
            if t not in known:
                raise DataError(f"{pair_path}:{lineno}: template {t} has no image in {tid_path}")
        if label not in (0, 1):
            raise DataError(f"{pair_path}:{lineno}: label {label}, expected 0 or 1")
        pairs.append((t1, t2))
        labels.append(label)
    labels = np.asarray(labels, dtype=np.int8)
    if labels.all() or not labels.any():
        raise DataError(f"{pair_path}: needs both genuine (1) and impostor (0) pairs")
    missing = next((p for p in images if not os.path.isfile(p)), None)
    if missing:
        raise DataError(f"{missing}: no such image (listed in {lmk_path})")
    bench = TemplateBenchmark(
        name=name or protocol, root=root, protocol=protocol, images=images,
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, 5, 2), scores=np.asarray(scores, np.float32),
        templates=templates, medias=medias, pairs=np.asarray(pairs, np.int64).reshape(-1, 2), labels=labels,
        flip=flip, normalize=bool(normalize), score_weighting=bool(score_weighting), cache_dir=cache_dir)
    if identification:
        bench.identification = read_identification(meta, protocol, index_of)
        if not bench.identification:
            bench.notes.append("no 1:N gallery/probe files in meta/: identification not scored")
    return bench


def read_identification(meta: str, protocol: str, index_of: dict[str, int]) -> dict[str, dict]:
    """The 1:N lists (galleries and the mixed probes) as image indices, template ids, media ids and subjects."""
    def read(path):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        header = [h.strip().upper() for h in rows[0]] if rows else []
        cols = {k: header.index(k) for k in ("TEMPLATE_ID", "SUBJECT_ID", "FILENAME") if k in header}
        if len(cols) < 3:
            raise DataError(f"{path}:1: the header needs TEMPLATE_ID, SUBJECT_ID and FILENAME, got {rows[0] if rows else []}")
        media_col = header.index("SIGHTING_ID") if "SIGHTING_ID" in header else None
        idx, tpl, med, sub = [], [], [], []
        for lineno, row in enumerate(rows[1:], 2):
            if not any(x.strip() for x in row):
                continue
            try:
                image = os.path.basename(row[cols["FILENAME"]].strip())
                t, s = int(row[cols["TEMPLATE_ID"]]), int(row[cols["SUBJECT_ID"]])
                m = int(row[media_col]) if media_col is not None else -(len(idx) + 1)
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: expected integer TEMPLATE_ID, SUBJECT_ID and a FILENAME, got {row}") from None
            if image not in index_of:
                raise DataError(f"{path}:{lineno}: image {image!r} is not in the landmark list")
            idx.append(index_of[image])
            tpl.append(t)
            med.append(m)
            sub.append(s)
        return {"images": np.asarray(idx), "templates": np.asarray(tpl), "medias": np.asarray(med),
                "subjects": np.asarray(sub), "source": path}

    probe_path = os.path.join(meta, f"{protocol}_1N_probe_mixed.csv")
    galleries = [os.path.join(meta, f"{protocol}_1N_gal_{g}.csv") for g in GALLERIES[protocol]]
    if not os.path.isfile(probe_path) or not all(os.path.isfile(g) for g in galleries):
        return {}
    out = {"probe": read(probe_path)}
    for g, path in zip(GALLERIES[protocol], galleries):
        out[g] = read(path)
    return out


# -- embedding: memory-mapped, resumable ----------------------------------------------------------------------------
class _Aligned:
    """Picklable loader: image i aligned from its landmarks, at the model's input size, (H, W, 3) uint8 RGB."""

    def __init__(self, paths, landmarks, size):
        self.paths, self.landmarks, self.size = paths, landmarks, size

    def __call__(self, i: int) -> np.ndarray:
        crop = align_face(read_image(self.paths[i]), self.landmarks[i], 112, where=f"{self.paths[i]} landmarks")
        return resize_to(crop, self.size)


def embedding_file(bench: TemplateBenchmark, model_key: str, dim: int) -> Path:
    """Where this model's embeddings of this benchmark go: ``<cache_dir>/ijb/<hash>.f32``."""
    key = hashlib.sha1(f"{model_key}|{bench.root}|{bench.protocol}|{bench.num_images}|{dim}".encode()).hexdigest()[:16]
    base = Path(os.path.expanduser(bench.cache_dir or os.path.join("~", ".cache", "frtrain")))
    return base / "ijb" / f"{bench.protocol}-{key}.f32"


def embed_images(bench: TemplateBenchmark, model, input_size, mean, std, device, forward_batch: int,
                 num_workers: int, path: Path, autocast_dtype=None, progress: bool = False) -> np.memmap:
    """(N, 2, d) float32 memmap at ``path``: each image's embedding and its flip's, written as computed; an
    earlier interrupted run of the same model and benchmark is continued from ``path.done``."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from frtrain.evaluation.embed import ImageList, embed_batches

    dim = int(model.embedding_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    done_file = path.with_suffix(".done")
    shape = (bench.num_images, 2, dim)
    done = int(done_file.read_text()) if done_file.is_file() and path.is_file() else 0
    emb = np.memmap(path, dtype=np.float32, mode="r+" if done else "w+", shape=shape)
    if done:
        log.info("%s: resuming the embedding at image %d of %d (%s)", bench.name, done, bench.num_images, path)
    if done >= bench.num_images:
        return emb
    load = _Aligned(bench.images, bench.landmarks, input_size)
    indices = list(range(done, bench.num_images))
    loader = DataLoader(torch.utils.data.Subset(ImageList(load, bench.num_images), indices), batch_size=256,
                        num_workers=num_workers)
    bar = tqdm(total=bench.num_images, initial=done, desc=f"{bench.name} images", unit="img", disable=not progress)
    for images in loader:
        out, _ = embed_batches(model, [images], mean, std, device, "concat", autocast_dtype=autocast_dtype,
                               forward_batch=forward_batch)
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


def roc_corners(genuine: np.ndarray, impostor_desc: np.ndarray, chunk: int = 1 << 20):
    """The points of scikit-learn's ``roc_curve(labels, scores)`` (``drop_intermediate=True``, without its first
    (0, 0)), as ``(false accepts, true accepts)`` int64 arrays, a chunk at a time in order of falling threshold.

    ``genuine``: (P,) scores of the genuine pairs, ascending; ``impostor_desc``: (N,) impostor scores, descending.
    A point is a distinct score; it is kept unless the counts rise by the same amounts before and after it (what
    ``roc_curve`` drops). Memory: O(chunk + P), never O(N) beyond the caller's sorted impostors."""
    n = len(impostor_desc)
    carry, lead = np.empty((0, 2), dtype=np.int64), 0  # carry: [decided point,] undecided point; lead: decided ones
    start = 0
    while start < n:
        end = min(start + chunk, n)
        while end < n and impostor_desc[end] == impostor_desc[end - 1]:  # a tie stays within one chunk
            end += 1
        hi = np.inf if start == 0 else impostor_desc[start]
        lo = -np.inf if end == n else impostor_desc[end]
        part = impostor_desc[start:end]
        g_lo, g_hi = np.searchsorted(genuine, lo, side="right"), np.searchsorted(genuine, hi, side="right")
        values = np.union1d(part, genuine[g_lo:g_hi])[::-1]  # the distinct thresholds in (lo, hi], falling
        fa = start + np.searchsorted(-part, -values, side="right")  # impostors >= each threshold
        ta = len(genuine) - np.searchsorted(genuine, values, side="left")  # genuine pairs >= each threshold
        seq = np.concatenate([carry, np.stack([fa, ta], axis=1).astype(np.int64)])
        if len(seq) >= 2:
            step = np.diff(seq, axis=0)
            flags = np.r_[True, np.any(step[1:] != step[:-1], axis=1)]  # seq[:-1]: first point, or a turn
            flags[:lead] = False  # seq[0] was decided with the previous chunk
            keep = seq[:-1][flags]
            if len(keep):
                yield keep[:, 0], keep[:, 1]
            carry, lead = seq[-2:], 1
        else:
            carry, lead = seq, 0
        start = end
    if len(carry):  # the last point is always kept
        yield carry[-1:, 0], carry[-1:, 1]


def tar_at_far_rules(labels: np.ndarray, scores: np.ndarray, fars=FARS, roc_points: int = 2000,
                     chunk: int = 1 << 20) -> tuple[dict, dict, dict, float]:
    """(insightface's nearest-FPR TAR, strict TAR, ROC, AUC) at each FAR, on scikit-learn's ``roc_curve`` points.

    The curve is walked in chunks (:func:`roc_corners`), so its memory is one sorted copy of the impostor scores
    (4 bytes each for float32) and a chunk, not ``roc_curve``'s half a dozen arrays of the pair count (770 MiB at
    IJB-C's 15.7M pairs). The TARs are those of the whole curve (nearest: the first point of least |FPR - far|;
    strict: the best TPR with FPR <= far) and the AUC its trapezoid sum; the returned ROC keeps at most about
    ``roc_points`` of the points, the first at or past each of ``roc_points`` FPRs log-spaced from the smallest
    positive one to 1, for the plot."""
    labels = np.asarray(labels)
    genuine = np.sort(scores[labels == 1])
    impostor = scores[labels == 0].copy()
    if len(genuine) == 0 or len(impostor) == 0:
        raise DataError(f"a ROC needs genuine and impostor pairs: {len(genuine)} genuine, {len(impostor)} impostor")
    impostor.sort()
    impostor = impostor[::-1]
    num_g, num_i = float(len(genuine)), float(len(impostor))
    fars = list(fars)
    near_d, near_t = [abs(0.0 - f) for f in fars], [0.0] * len(fars)
    strict = [0.0] * len(fars)
    auc, last_f, last_t, count, smallest = 0.0, 0.0, 0.0, 1, None
    kept_f, kept_t = [np.zeros(1)], [np.zeros(1)]
    for fa, ta in roc_corners(genuine, impostor, chunk):
        fpr, tpr = fa / num_i, ta / num_g
        for k, far in enumerate(fars):
            d = np.abs(fpr - far)
            i = int(np.argmin(d))
            if d[i] < near_d[k]:
                near_d[k], near_t[k] = float(d[i]), float(tpr[i])
            ok = fpr <= far
            if ok.any():
                strict[k] = max(strict[k], float(tpr[ok].max()))
        x, y = np.r_[last_f, fpr], np.r_[last_t, tpr]
        auc += float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())
        last_f, last_t = float(fpr[-1]), float(tpr[-1])
        if smallest is None and (fpr > 0).any():
            smallest = float(fpr[fpr > 0][0])
        count += len(fpr)
        if count <= roc_points:
            kept_f.append(fpr)
            kept_t.append(tpr)
    nearest = {f"{far:g}": t for far, t in zip(fars, near_t)}
    strict_d = {f"{far:g}": t for far, t in zip(fars, strict)}
    if count <= roc_points:
        f_all, t_all = np.concatenate(kept_f), np.concatenate(kept_t)
    else:  # a second walk picks the thinned points
        targets = np.logspace(np.log10(max(smallest or 1e-9, 1e-12)), 0, roc_points)
        f_sel, t_sel, pending = [0.0], [0.0], targets
        for fa, ta in roc_corners(genuine, impostor, chunk):
            fpr, tpr = fa / num_i, ta / num_g
            at = np.searchsorted(fpr, pending, side="left")
            hit = np.unique(at[at < len(fpr)])
            f_sel.extend(fpr[hit].tolist())
            t_sel.extend(tpr[hit].tolist())
            pending = pending[at >= len(fpr)]
        if f_sel[-1] != last_f or t_sel[-1] != last_t:  # points differ in (FA, TA): values name them
            f_sel.append(last_f)
            t_sel.append(last_t)
        f_all, t_all = np.array(f_sel), np.array(t_sel)
    return nearest, strict_d, {"fpr": f_all.tolist(), "tpr": t_all.tolist()}, auc


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


@dataclass
class TemplateResult:
    """Scores of a template benchmark. TARs and rates are fractions. ``accuracy`` (the number training selects
    ``best.pt`` by) is TAR at FAR 1e-4 by insightface's rule."""

    name: str
    num_pairs: int
    num_templates: int
    num_images: int
    tar_at_far: dict  # insightface's rule: the ROC point whose FPR is nearest the target
    tar_at_far_strict: dict  # the best TPR with FPR at most the target
    auc: float
    num_impostors: int
    settings: dict
    identification: dict = field(default_factory=dict)
    far_thresholds: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    roc: dict = field(default_factory=dict, repr=False)

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
        return f"TAR@FAR=1e-4 {100 * self.accuracy:.2f}% (strict {100 * self.tar_at_far_strict['0.0001']:.2f}%)"

    def to_dict(self, with_roc: bool = False) -> dict:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        if not with_roc:
            d.pop("roc")
        return d


def score_templates(bench: TemplateBenchmark, model, input_size, mean, std, device, forward_batch: int,
                    num_workers: int, model_key: str | None = None, autocast_dtype=None,
                    progress: bool = False) -> TemplateResult:
    """The whole protocol for ``model``; with ``model_key`` the embeddings persist (and resume) under the cache."""
    from frtrain.evaluation.metrics import threshold_at_far

    start = time.perf_counter()
    dim = int(model.embedding_size)
    path = embedding_file(bench, model_key or f"temporary-{os.getpid()}-{id(model)}-{time.time()}", dim)
    try:
        raw = embed_images(bench, model, input_size, mean, std, device, forward_batch, num_workers, path,
                           autocast_dtype, progress)
        rows = np.arange(bench.num_images)
        unique_t, feats = template_features(raw, bench.scores, rows, bench.templates, bench.medias, bench.flip,
                                            bench.normalize, bench.score_weighting)
        scores = pair_scores(unique_t, feats, bench.pairs)
        nearest, strict, roc, auc = tar_at_far_rules(bench.labels, scores)
        impostors = int((bench.labels == 0).sum())
        notes = list(bench.notes)
        for far in FARS:
            if impostors * far < 1:
                notes.append(f"TAR@FAR={far:g}: {impostors} impostor pairs cannot measure a rate this low")
        ident = {}
        if bench.identification:
            probe = bench.identification["probe"]
            pt, pf = template_features(raw, bench.scores, probe["images"], probe["templates"], probe["medias"],
                                       bench.flip, bench.normalize, bench.score_weighting)
            p_sub = _subjects(probe, pt)
            for g in GALLERIES[bench.protocol]:
                gal = bench.identification[g]
                gt, gf = template_features(raw, bench.scores, gal["images"], gal["templates"], gal["medias"],
                                           bench.flip, bench.normalize, bench.score_weighting)
                ident[g] = identification_rates(pf, p_sub, gf, _subjects(gal, gt))
            keys = [k for k in ident[GALLERIES[bench.protocol][0]] if k.startswith(("top", "tpir"))]
            ident["mean"] = {k: float(np.mean([ident[g][k] for g in GALLERIES[bench.protocol]]))
                             if all(ident[g][k] is not None for g in GALLERIES[bench.protocol]) else None for k in keys}
    finally:
        if model_key is None:  # a throw-away file (evaluation during training)
            for p in (path, path.with_suffix(".done")):
                if p.exists():
                    p.unlink()
    return TemplateResult(
        name=bench.name, num_pairs=bench.num_pairs, num_templates=len(unique_t), num_images=bench.num_images,
        tar_at_far=nearest, tar_at_far_strict=strict, auc=auc,
        num_impostors=impostors, settings=bench.settings(), identification=ident,
        far_thresholds={f"{far:g}": threshold_at_far(scores[bench.labels == 0], far) for far in (1e-3, 1e-4, 1e-5)},
        seconds=time.perf_counter() - start, notes=notes, roc=roc)


def _subjects(lists: dict, unique_t: np.ndarray) -> np.ndarray:
    """The subject of each template (T,), from the per-image rows of a 1:N list."""
    first = {}
    for t, s in zip(lists["templates"].tolist(), lists["subjects"].tolist()):
        first.setdefault(t, s)
    return np.asarray([first[t] for t in unique_t.tolist()])
