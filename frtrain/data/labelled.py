"""A labelled image set read for analysis rather than training (frtrain-audit, frtrain-analyze): identity folders or
an insightface ``.rec``, with each sample's label read without decoding images, and a bounded selection of images
per class."""

from __future__ import annotations

import os

import numpy as np


class LabelledImages:
    """``names`` (class names), ``with_names`` (False for a .rec, whose classes are numbers), ``labels()`` and
    ``first_per_class(k)`` over identity folders or a .rec; ``data.sample(i)`` decodes image i at ``input_size``."""

    def __init__(self, root: str, input_size):
        from frtrain.data.folder import FaceFolder
        from frtrain.data.recordio import RecordFaces

        rec = root.endswith(".rec") or os.path.isfile(os.path.join(root, "train.rec"))
        self.data = (RecordFaces(root, input_size=input_size) if rec
                     else FaceFolder(root, input_size=input_size, index_cache=False))
        self.names = list(self.data.classes)
        self.with_names = not rec
        self._labels = None

    def labels(self) -> np.ndarray:
        """(N,) the label of every sample (a .rec's read from the record headers only, once)."""
        if self._labels is None:
            self._labels = labels_of(self.data)
        return self._labels

    def first_per_class(self, k: int, max_classes: int | None = None) -> np.ndarray:
        """:func:`first_per_class` of this set."""
        return first_per_class(self.labels(), len(self.names), k, max_classes)


def labels_of(data) -> np.ndarray:
    """(N,) the label of every sample of an identity-folder or .rec data set, without decoding an image."""
    if hasattr(data, "labels"):
        return np.asarray(data.labels)
    return np.array([int(data.records.header_label(int(k))) for k in data.keys], dtype=np.int64)


def first_per_class(labels: np.ndarray, num_classes: int, k: int, max_classes: int | None = None) -> np.ndarray:
    """The indices of up to ``k`` samples of each class (of the first ``max_classes``), the first in index order,
    class-major."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(num_classes))
    rank = np.arange(len(order)) - starts[labels[order]]
    keep = rank < k
    if max_classes is not None:
        keep &= labels[order] < max_classes
    return order[keep]


class SampleImages:
    """Picklable: image ``j`` of the selected samples, (H, W, 3) uint8."""

    def __init__(self, data, indices):
        self.data, self.indices = data, np.asarray(indices)

    def __call__(self, j: int) -> np.ndarray:
        return self.data.sample(int(self.indices[j]))[0]
