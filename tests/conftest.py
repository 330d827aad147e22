"""Shared fixtures. Tests need no data outside the repository: real-data tests skip without their path variable.

Tiers: tests marked ``slow`` (multi-process, training grids, packaging) run with ``make test-slow``; ``make test`` runs
the rest (the inner loop); ``make test-all`` and CI (.ci/run) run both."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Generated data (synthetic faces, file indexes) goes to one cache per test session.
_CACHE = tempfile.mkdtemp(prefix="frtrain-test-cache-")
os.environ["FRTRAIN_CACHE"] = _CACHE
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return _CACHE


def compose_train(overrides: list[str]):
    """The train config as ``frtrain-train`` would compose it, with ``overrides``."""
    from frtrain.config import compose

    return compose("train", overrides)


def compose_eval(overrides: list[str]):
    """The evaluate config as ``frtrain-eval`` would compose it, with ``overrides``."""
    from frtrain.config import compose

    return compose("evaluate", overrides)


#: data and model of a run that trains in well under a minute on 2 CPU cores and learns clearly
TINY_DATA = [
    "data.num_identities=60",
    "data.images_per_identity=16",
    "data.image_size=40",
    "data.loader.batch_size=32",
    "data.loader.num_workers=0",
    "backbone.input_size=40",
    "trainer.progress=false",
]
#: its verification set (held-out synthetic identities)
TINY_EVAL = [
    "eval.benchmarks.synthetic.num_identities=60",
    "eval.benchmarks.synthetic.images_per_identity=6",
    "eval.benchmarks.synthetic.num_pairs=1200",
    "eval.benchmarks.synthetic.image_size=40",
]
TINY_RUN = TINY_DATA + TINY_EVAL


def insightface_tar_table(label, score, fars) -> dict[str, float]:
    """The reference for TAR@FAR by insightface's rule, as its eval_ijbc.py computes the table: scikit-learn's
    roc_curve, flipud ('select largest tpr at same fpr'), then per target min(zip(|fpr - x|, index))."""
    import numpy as np
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for x in fars:
        _, min_index = min(list(zip(abs(fpr - x), range(len(fpr)))))
        out[f"{x:g}"] = float(tpr[min_index])
    return out


class ProjectionModel:
    """A fixed random projection of 24x24 pixels to 12 numbers (no bias): deterministic features that follow the
    drawn identity somewhat, for the arithmetic of the protocols' tests."""

    input_size, mean, std, embedding_size = (24, 24), (0.5,) * 3, (0.5,) * 3, 12

    def __init__(self):
        import torch

        self.weight = torch.empty(12, 3 * 24 * 24).normal_(0, 0.02, generator=torch.Generator().manual_seed(0))

    def __call__(self, x):
        return x.flatten(1) @ self.weight.T


def projection_embedder(**kw):
    """An :class:`frtrain.evaluation.embed.Embedder` of :class:`ProjectionModel` on the CPU, no flip."""
    import torch

    from frtrain.evaluation.embed import Embedder

    return Embedder(ProjectionModel(), torch.device("cpu"), flip="none", batch_size=16, **kw)


def unit_features(paths):
    """(N, 12) float64 unit features of image files as the protocols score them, taken apart from the readers."""
    import numpy as np

    from frtrain.evaluation.benchmarks import FileImages

    emb, _ = projection_embedder().embed(FileImages([str(p) for p in paths]), len(paths))
    emb = emb.astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)
