"""IJB-B / IJB-C releases in insightface's layout: the reader of the template benchmark (scored by
:mod:`frtrain.evaluation.templates`).

Layout, under ``root``::

    meta/<p>_face_tid_mid.txt         image name, template id, media id (space separated)
    meta/<p>_template_pair_label.txt  template 1, template 2, label (1 same, 0 different)
    meta/<p>_name_5pts_score.txt      image name, 5 landmarks (x1 y1 ... x5 y5), detector score
    meta/<p>_1N_gal_{G1,G2|S1,S2}.csv, meta/<p>_1N_probe_mixed.csv   (1:N; optional) header with TEMPLATE_ID,
                                      SUBJECT_ID [, FILENAME (the image's name in the landmark list), SIGHTING_ID]
    loose_crop/<image name>

with ``<p>`` = ``ijbb`` or ``ijbc``. Landmarks are read as float64 (the similarity transform of insightface's
``norm_crop`` is estimated in float64). The 1:N lists name templates whose images (and media ids) come from
``<p>_face_tid_mid.txt``, as insightface's ``ijb_1n.py`` pools them (``pooling_1n: insightface``); ``csv_rows`` takes
the lists' FILENAME rows instead (media = SIGHTING_ID, or each row its own).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from frtrain.errors import ConfigError, DataError

GALLERIES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
POOLINGS = ("insightface", "csv_rows")


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
    landmarks: np.ndarray  # (N, 5, 2) float64
    scores: np.ndarray  # (N,) detector scores
    templates: np.ndarray  # (N,) template id of each image
    medias: np.ndarray  # (N,) media id of each image
    pairs: np.ndarray  # (P, 2) template ids
    labels: np.ndarray  # (P,) 1 same, 0 different
    identification: dict[str, dict] = field(default_factory=dict)  # gallery name -> {templates, subjects, rows...}
    flip: str = "sum"
    normalize: bool = False
    score_weighting: bool = True
    pooling_1n: str = "insightface"
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
                "alignment": "5-point similarity onto the ArcFace 112x112 template (landmarks as float64)",
                "template": "mean per media, summed over medias, L2-normalised",
                "1:N pooling": ({"insightface": f"the templates' images and media ids of {self.protocol}_face_tid_mid.txt "
                                                "(insightface's ijb_1n.py)",
                                 "csv_rows": "the FILENAME rows of the 1:N lists, media = SIGHTING_ID (or each row its "
                                             "own)"}[self.pooling_1n] if self.identification else "not scored"),
                "TAR@FAR rules": "insightface (nearest FPR, ties to the larger TPR) and strict (FPR at most the target)"}

    def score(self, embedder):
        """The whole protocol with ``embedder`` (:class:`frtrain.evaluation.embed.Embedder`): a
        :class:`frtrain.evaluation.templates.TemplateResult`."""
        from frtrain.evaluation.templates import score_templates

        return score_templates(self, embedder)


def ijb_benchmark(root: str, protocol: str = "ijbc", name: str | None = None, flip: str = "sum",
                  normalize: bool = False, score_weighting: bool = True, identification: bool = True,
                  pooling_1n: str = "insightface", cache_dir: str | None = None) -> TemplateBenchmark:
    """Read an IJB-B/C release (see the module docstring); errors name the file, the line and what was expected."""
    if protocol not in GALLERIES:
        raise ConfigError(f"benchmarks.<name>.protocol={protocol!r}: expected ijbb or ijbc")
    if flip not in ("sum", "concat", "none"):
        raise ConfigError(f"benchmarks.<name>.flip={flip!r}: expected sum, concat or none")
    if pooling_1n not in POOLINGS:
        raise ConfigError(f"benchmarks.<name>.pooling_1n={pooling_1n!r}: expected {' or '.join(POOLINGS)}")
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
        landmarks=np.asarray(landmarks, np.float64).reshape(-1, 5, 2), scores=np.asarray(scores, np.float32),
        templates=templates, medias=medias, pairs=np.asarray(pairs, np.int64).reshape(-1, 2), labels=labels,
        flip=flip, normalize=bool(normalize), score_weighting=bool(score_weighting), pooling_1n=pooling_1n,
        cache_dir=cache_dir)
    if identification:
        bench.identification = read_identification(meta, protocol, index_of, templates, medias, pooling_1n)
        if not bench.identification:
            bench.notes.append("no 1:N gallery/probe files in meta/: identification not scored")
    return bench


def read_identification(meta: str, protocol: str, index_of: dict[str, int], templates: np.ndarray,
                        medias: np.ndarray, pooling: str = "insightface") -> dict[str, dict]:
    """The 1:N lists (galleries and the mixed probes) as image indices, template ids, media ids and subjects.

    ``pooling="insightface"``: a list names templates (TEMPLATE_ID, SUBJECT_ID); a template's images and their media
    ids are those of ``<p>_face_tid_mid.txt`` (``templates``, ``medias``: per image of the landmark list), as
    insightface's ``ijb_1n.py`` pools them. ``csv_rows``: the list's FILENAME rows are the images, SIGHTING_ID
    their media (each row its own media without that column).
    """
    def read(path):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        header = [h.strip().upper() for h in rows[0]] if rows else []
        needed = ("TEMPLATE_ID", "SUBJECT_ID") + (("FILENAME",) if pooling == "csv_rows" else ())
        cols = {k: header.index(k) for k in needed if k in header}
        if len(cols) < len(needed):
            raise DataError(f"{path}:1: the header needs {', '.join(needed)}, got {rows[0] if rows else []}")
        media_col = header.index("SIGHTING_ID") if "SIGHTING_ID" in header else None
        idx, tpl, med, sub, subject_of = [], [], [], [], {}
        for lineno, row in enumerate(rows[1:], 2):
            if not any(x.strip() for x in row):
                continue
            try:
                t, s = int(row[cols["TEMPLATE_ID"]]), int(row[cols["SUBJECT_ID"]])
                if pooling == "csv_rows":
                    image = os.path.basename(row[cols["FILENAME"]].strip())
                    m = int(row[media_col]) if media_col is not None else -(len(idx) + 1)
            except (IndexError, ValueError):
                raise DataError(f"{path}:{lineno}: expected integer TEMPLATE_ID, SUBJECT_ID"
                                f"{' and a FILENAME' if pooling == 'csv_rows' else ''}, got {row}") from None
            subject_of.setdefault(t, (s, lineno))
            if pooling == "csv_rows":
                if image not in index_of:
                    raise DataError(f"{path}:{lineno}: image {image!r} is not in the landmark list")
                idx.append(index_of[image])
                tpl.append(t)
                med.append(m)
                sub.append(s)
        if pooling == "insightface":
            listed = np.asarray(sorted(subject_of), dtype=np.int64)
            rows_of = np.flatnonzero(np.isin(templates, listed))
            missing = np.setdiff1d(listed, templates[rows_of])
            if missing.size:
                t = int(missing[0])
                raise DataError(f"{path}:{subject_of[t][1]}: template {t} has no image in {protocol}_face_tid_mid.txt "
                                "(insightface pools a 1:N template's images from there; pooling_1n=csv_rows takes "
                                "the list's FILENAME rows)")
            idx, tpl, med = rows_of, templates[rows_of], medias[rows_of]
            sub = [subject_of[int(t)][0] for t in tpl]
        return {"images": np.asarray(idx, dtype=np.int64), "templates": np.asarray(tpl, dtype=np.int64),
                "medias": np.asarray(med, dtype=np.int64), "subjects": np.asarray(sub, dtype=np.int64), "source": path}

    probe_path = os.path.join(meta, f"{protocol}_1N_probe_mixed.csv")
    galleries = [os.path.join(meta, f"{protocol}_1N_gal_{g}.csv") for g in GALLERIES[protocol]]
    if not os.path.isfile(probe_path) or not all(os.path.isfile(g) for g in galleries):
        return {}
    out = {"probe": read(probe_path)}
    for g, path in zip(GALLERIES[protocol], galleries):
        out[g] = read(path)
    return out
