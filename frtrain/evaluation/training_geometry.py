"""The geometry measures during training (``eval.analysis=[...]``): on a fixed sample of the training set (the first
:data:`PER_CLASS` images of the first :data:`CLASSES` classes, chosen once), against the head's class vectors; the
scalars and histograms go to TensorBoard, the last record to results.json (``geometry``)."""

from __future__ import annotations

import math

import numpy as np

from frtrain.evaluation import geometry as G

CLASSES = 200
PER_CLASS = 5  # the intra-class shape needs at least 5 images of an identity


class TrainingGeometry:
    """Measures ``measures`` of the model on ``dataset``'s sample; ``target_degrees``: the head's margin."""

    def __init__(self, dataset, measures, target_degrees: float | None = None):
        from frtrain.data.labelled import first_per_class, labels_of

        labels = labels_of(dataset)
        self.indices = first_per_class(labels, dataset.num_classes, PER_CLASS, CLASSES)
        self.labels = labels[self.indices]
        self.dataset, self.measures, self.target = dataset, tuple(measures), target_degrees
        self.quality = None

    def load(self, j: int) -> np.ndarray:
        return self.dataset.sample(int(self.indices[j]))[0]

    def measure(self, embedder, class_vectors: np.ndarray | None) -> tuple[dict, dict]:
        """(record, arrays for histograms: genuine and impostor cosines, class-vector nearest angles, norms)."""
        raw, _ = embedder.embed(self.load, len(self.indices), "geometry")
        raw = np.asarray(raw, dtype=np.float64)
        if "norms" in self.measures and self.quality is None:
            self.quality = np.array([G.sharpness(self.load(j)) for j in range(len(self.indices))])
        vectors = class_vectors[:CLASSES] if class_vectors is not None else None  # the sampled classes' rows
        record = G.measure_all(raw, self.labels, self.measures, vectors, self.target, self.quality, batches=200,
                               resamples=200)
        emb = G.unit(raw)
        arrays = {"norms": np.linalg.norm(raw, axis=1)}
        if "pairs" in self.measures:
            arrays["genuine_cosines"] = G.genuine_cosines(emb, self.labels)
            arrays["impostor_cosines"] = G.impostor_cosines(emb, self.labels, 200_000)
        if vectors is not None and "separation" in self.measures:
            sims = G.unit(vectors) @ G.unit(vectors).T
            np.fill_diagonal(sims, -np.inf)
            arrays["class_nearest_angles"] = np.degrees(np.arccos(np.clip(sims.max(axis=1), -1, 1)))
        return record, arrays


def target_margin_degrees(head_cfg: dict) -> float | None:
    """The head's target angular margin in degrees (``margin_rad``), else None."""
    return math.degrees(float(head_cfg["margin_rad"])) if "margin_rad" in (head_cfg or {}) else None
