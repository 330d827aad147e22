"""frtrain-audit: planted benchmark identities in a training folder (two under other names, one under its own) are
found, a clean split gives none, and the overlap-free pair list scores as the audit says."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from frtrain.audit import run_audit
from frtrain.evaluate import score

from conftest import compose_eval

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE, DIM = 16, 64
PLANTED = {"p03": "renamed_one", "p07": "someone_else", "p11": "p11"}  # benchmark person -> training folder


def _faces(folder, base, count, rng):
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(3)
    bases = {f"p{i:02d}": rng.integers(0, 256, (SIZE, SIZE, 3)) for i in range(24)}
    others = {f"t{i:02d}": rng.integers(0, 256, (SIZE, SIZE, 3)) for i in range(30)}
    for name, base in bases.items():
        _faces(root / "bench" / name, base, 4, rng)
    rows = []
    for i in range(24):
        a = f"p{i:02d}"
        rows += [(f"{a}/0.png", f"{a}/{k}.png", 1, i % 4) for k in (1, 2, 3)]
        rows += [(f"{a}/0.png", f"p{(i + d) % 24:02d}/1.png", 0, i % 4) for d in (1, 5, 11)]
    (root / "bench" / "pairs.csv").write_text("".join(f"{a},{b},{s},{f}\n" for a, b, s, f in rows))
    for name, base in others.items():
        _faces(root / "clean" / name, base, 6, rng)
        _faces(root / "planted" / name, base, 6, rng)
    for person, folder in PLANTED.items():
        _faces(root / "planted" / folder, bases[person], 6, rng)  # other images of the same person
    w = np.random.default_rng(0).normal(0, 0.05, (3 * SIZE * SIZE, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["B", DIM])], [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(root / "model.onnx"))
    return root


def _cfg(root, train, out, model=True):
    from frtrain.config import compose

    return compose("audit", [f"train={root / train}", f"output_dir={out}", "benchmarks=[pairs_csv]",
                             f"benchmarks.pairs_csv.path={root / 'bench' / 'pairs.csv'}", "eval.num_workers=0",
                             "benchmarks.pairs_csv.num_folds=4",
                             "eval.intervals=100", f"input.size={SIZE}", "input.mean=127.5", "input.std=127.5"]
                   + ([f"model={root / 'model.onnx'}"] if model else []))


def test_planted_identities_are_found_under_other_names_and_the_clean_list_scores_as_reported(world, tmp_path):
    record = run_audit(_cfg(world, "planted", tmp_path))
    assert record["by_name"] == {"p11": "p11"}
    assert {k: v[0] for k, v in record["by_embedding"].items()} == PLANTED
    assert record["overlapping"] == sorted(PLANTED)
    assert record["threshold"]["rule"].startswith("normal fit to 276 impostor identity cosines")
    kept = list(csv.reader(open(tmp_path / "overlap_free_pairs.csv")))
    assert not any(p in a or p in b for a, b, _s, _f in kept for p in PLANTED)
    assert len(kept) == record["overlap_free_pairs"] == 144 - 3 * 6 - 3 * 3  # their own 6 rows, 3 impostor rows onto each
    again = score(compose_eval([f"model={world / 'model.onnx'}", "benchmarks=[pairs_csv]",
                                f"benchmarks.pairs_csv.path={tmp_path / 'overlap_free_pairs.csv'}", "eval.num_workers=0",
                                "benchmarks.pairs_csv.num_folds=4",
                                f"input.size={SIZE}", "input.mean=127.5", "input.std=127.5", "eval.intervals=0"]))[1]
    assert again["pairs_csv"].accuracy == pytest.approx(record["accuracy_overlap_free"]["accuracy"], abs=1e-12)
    full = score(compose_eval([f"model={world / 'model.onnx'}", "benchmarks=[pairs_csv]",
                               f"benchmarks.pairs_csv.path={world / 'bench' / 'pairs.csv'}", "eval.num_workers=0",
                               "benchmarks.pairs_csv.num_folds=4",
                               f"input.size={SIZE}", "input.mean=127.5", "input.std=127.5", "eval.intervals=0"]))[1]
    assert full["pairs_csv"].accuracy == pytest.approx(record["accuracy"]["accuracy"], abs=1e-12)
    text = (tmp_path / "audit.md").read_text()
    assert "| p03 | — | renamed_one," in text and "| p11 | p11 | p11," in text
    assert json.loads((tmp_path / "audit.json").read_text())["overlapping"] == sorted(PLANTED)


def test_a_clean_split_has_no_overlap(world, tmp_path):
    record = run_audit(_cfg(world, "clean", tmp_path))
    assert record["overlapping"] == [] and record["overlap_free_pairs"] == 144
    assert record["accuracy"]["accuracy"] == record["accuracy_overlap_free"]["accuracy"]


def test_without_a_model_only_names_are_compared(world, tmp_path):
    record = run_audit(_cfg(world, "planted", tmp_path, model=False))
    assert record["overlapping"] == ["p11"] and record["threshold"] is None and record["accuracy"] is None
    assert "identities under other names are not found" in (tmp_path / "audit.md").read_text()


def test_a_missing_training_set_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "frtrain.audit", f"train={tmp_path}/nope", "benchmarks=[pairs_csv]",
                        f"benchmarks.pairs_csv.path={tmp_path}/p.csv", f"hydra.run.dir={tmp_path}/o"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"train={tmp_path}/nope: no such directory or .rec file" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_rec_training_set_is_audited_by_embedding_only(world, tmp_path):
    from frtrain.tools import folder2rec

    assert folder2rec.main([str(world / "planted"), str(tmp_path / "rec")]) == 0
    from frtrain.config import compose

    cfg = compose("audit", [f"train={tmp_path / 'rec'}", f"output_dir={tmp_path / 'out'}", "benchmarks=[pairs_csv]",
                            f"benchmarks.pairs_csv.path={world / 'bench' / 'pairs.csv'}",
                            "benchmarks.pairs_csv.num_folds=4", "eval.num_workers=0", "eval.intervals=0",
                            f"input.size={SIZE}", "input.mean=127.5", "input.std=127.5", f"model={world / 'model.onnx'}"])
    record = run_audit(cfg)
    assert record["by_name"] == {} and record["overlapping"] == sorted(PLANTED)
    assert record["training_classes"] == 33
