"""frtrain-analyze on a checkpoint trained like `make train` (tiny): on its own training folder (the head's class
vectors) and on a real-format identity folder of other people; the reported numbers are the measures of the
embeddings taken apart from the command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from frtrain.analyze import analyze
from frtrain.evaluation import geometry as G
from frtrain.train import train

from conftest import TINY_DATA, TINY_EVAL, compose_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_train(TINY_DATA + TINY_EVAL + [f"output_dir={out}", "trainer.max_steps=30", "eval.every_steps=0"]))
    return out


def _cfg(overrides):
    from frtrain.config import compose

    return compose("analyze", overrides + ["eval.num_workers=0", "eval.intervals=100", "batches=50"])


def test_on_its_own_training_folder_the_head_rows_are_the_class_vectors(trained, tmp_path, cache_dir):
    from frtrain.data.synthetic import SyntheticFaces

    root = SyntheticFaces(cache_dir, num_identities=60, images_per_identity=16, image_size=40).root
    r = analyze(_cfg([f"model={trained}", f"dataset={root}", "images_per_class=6", f"output_dir={tmp_path}"]))
    assert r["class_vectors"] == "the head's rows" and r["identities"] == 60 and r["images"] == 360
    assert r["head"] == "ArcFace" and r["margins"]["target_degrees"] == pytest.approx(np.degrees(0.5))
    assert r["separation_classes"]["count"] == 60
    head = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)["head"]
    w = G.unit(next(v for k, v in head.items() if k.endswith("weight")).float().numpy())
    assert r["separation_classes"]["min"] == pytest.approx(G.separation(w)["min"], abs=1e-9)
    assert r["pairs"]["genuine_pairs"] == 60 * 15
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["shape"]["identities"] == 60 and "spectrum" in saved["shape"]
    for name in ("similarities.png", "angles.png", "spectrum.png", "norm_quality.png"):
        assert (tmp_path / name).stat().st_size > 1000
    text = (tmp_path / "analysis.md").read_text()
    assert "| pairs | UNPG" in text and "| margins |" in text and "Spearman" in text


def test_on_a_real_format_folder_the_numbers_are_the_measures_of_its_embeddings(trained, tmp_path):
    from frtrain.engine.model_files import embedder_for
    from frtrain.evaluation.benchmarks import FileImages

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for person in range(8):
        base = rng.integers(0, 256, (40, 40, 3))
        (tmp_path / "faces" / f"person_{person}").mkdir(parents=True)
        for k in range(6):
            p = tmp_path / "faces" / f"person_{person}" / f"{k}.jpg"
            Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)).save(p, quality=95)
            paths.append(str(p))
            labels.append(person)
    cfg = _cfg([f"model={trained}", f"dataset={tmp_path / 'faces'}", f"output_dir={tmp_path / 'out'}"])
    r = analyze(cfg)
    assert r["class_vectors"].startswith("identities' mean embeddings") and r["separation_classes"]["count"] == 60
    embedder, _ = embedder_for(cfg)
    raw, _ = embedder.embed(FileImages(paths), len(paths))
    emb, labels = G.unit(raw), np.array(labels)
    pairs = G.pair_sets(emb, labels, 64, 50, 2_000_000)
    assert r["pairs"]["genuine_mean"] == pytest.approx(pairs["genuine_mean"], abs=1e-5)
    assert r["pairs"]["d_prime"] == pytest.approx(pairs["d_prime"], rel=1e-4)
    assert r["shape"]["anisotropy_median"] == pytest.approx(G.intra_shape(emb, labels)["anisotropy_median"], rel=1e-4)
    norms = np.linalg.norm(np.asarray(raw, dtype=np.float64), axis=1)
    quality = [G.sharpness(FileImages(paths)(i)) for i in range(len(paths))]
    from scipy.stats import spearmanr

    assert r["norms"]["spearman"] == pytest.approx(spearmanr(norms, quality).statistic, abs=1e-6)


def test_a_measure_that_does_not_exist_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "frtrain.analyze", f"model={tmp_path}/m.pt", f"data={tmp_path}",
                        "measures=[pairs,curvature]", f"hydra.run.dir={tmp_path}/o"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "measures=['pairs', 'curvature']: expected some of" in r.stderr
    assert "Traceback" not in r.stderr


def test_eval_analysis_logs_the_measures_and_histograms_to_tensorboard_during_training(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_train(TINY_DATA + TINY_EVAL + [f"output_dir={tmp_path}", "trainer.max_steps=20",
                                                 "eval.every_steps=10", "eval.analysis=[pairs,separation,shape,margins,norms]"]))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for name in ("genuine_cosines", "impostor_cosines", "class_nearest_angles", "norms"):
        assert f"geometry/{name}" in tags["histograms"], name
        assert [e.step for e in events.Histograms(f"geometry/{name}")] == [10, 20]
    for name in ("pairs/d_prime", "separation_classes/min", "shape/anisotropy_median", "margins/below_target",
                 "norms/spearman"):
        assert f"geometry/{name}" in tags["scalars"], name
    results = json.loads((tmp_path / "results.json").read_text())
    geometry = results["geometry"]
    assert geometry["pairs"]["genuine_pairs"] == 60 * 10  # the first 5 images of each of the 60 classes
    assert geometry["separation_classes"]["count"] == 60
    last = events.Scalars("geometry/pairs/d_prime")[-1]
    assert last.step == 20 and last.value == pytest.approx(geometry["scalars"]["pairs/d_prime"], rel=1e-6)
    assert [h["step"] for h in results["history"]["geometry"]] == [10, 20]


def test_a_bad_analysis_measure_stops_training_before_any_work(tmp_path):
    from frtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval.analysis"):
        train(compose_train(TINY_DATA + [f"output_dir={tmp_path}", "eval.analysis=[curvature]"]))
