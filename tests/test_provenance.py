"""Provenance in every report, and frtrain-eval diff: a planted setting difference (colour order, flip mode) is named
and its effect measured by re-scoring with that setting alone switched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from frtrain.evaluate import diff_main, evaluate, score

from conftest import compose_eval

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 16


def _onnx_projection(path) -> str:
    """A plain ONNX model (no frtrain metadata): a fixed random projection of 3x16x16 pixels to 8 numbers."""
    w = np.random.default_rng(0).normal(0, 0.05, (3 * SIZE * SIZE, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["B", 8])], [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A pairs CSV over 24 identities x 4 images (a coloured base image each, plus noise), and the model."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    images = {}
    for person in range(24):
        base = rng.integers(0, 256, (SIZE, SIZE, 3))
        (root / f"p{person:02d}").mkdir()
        for k in range(4):
            pixels = np.clip(base + rng.normal(0, 60, base.shape), 0, 255).astype(np.uint8)
            name = f"p{person:02d}/{k}.png"
            Image.fromarray(pixels).save(root / name)
            images.setdefault(person, []).append(name)
    rows = []
    for person in range(24):
        rows += [(images[person][0], images[person][k], 1) for k in (1, 2, 3)]
        rows += [(images[person][0], images[(person + d) % 24][1], 0) for d in (1, 5, 11)]
    (root / "pairs.csv").write_text("".join(f"{a},{b},{s}\n" for a, b, s in rows))
    return root, _onnx_projection(root / "model.onnx")


def _overrides(root, model, out, channels="rgb", flip="sum"):
    return [f"model={model}", f"output_dir={out}", "benchmarks=[pairs_csv]", f"benchmarks.pairs_csv.path={root}/pairs.csv",
            "benchmarks.pairs_csv.num_folds=4", f"input.size={SIZE}", "input.mean=127.5", "input.std=127.5",
            f"input.channels={channels}", f"eval.flip={flip}", "eval.num_workers=0", "eval.intervals=100",
            "roc_plot=false"]


def test_an_eval_report_records_what_decides_its_numbers(release, tmp_path):
    root, model = release
    evaluate(compose_eval(_overrides(root, model, tmp_path, channels="bgr", flip="concat")))
    prov = json.loads((tmp_path / "report.json").read_text())["provenance"]
    assert prov["model"]["sha256"] == hashlib.sha256(open(model, "rb").read()).hexdigest()
    assert prov["model"]["channels"] == "bgr" and prov["model"]["input_size"] == [SIZE, SIZE]
    assert prov["model"]["mean"] == pytest.approx([0.5] * 3) and prov["model"]["std"] == pytest.approx([0.5] * 3)
    settings = prov["settings"]
    assert settings["eval.flip"] == "concat" and settings["input.channels"] == "bgr"
    assert settings["benchmarks.pairs_csv.num_folds"] == 4 and settings["eval.thresholds"] == "grid"
    files = prov["benchmarks"]["pairs_csv"]["files"]
    csv = next(f for f in files if f["path"].endswith("pairs.csv"))
    assert csv["sha256"] == hashlib.sha256((root / "pairs.csv").read_bytes()).hexdigest()
    assert csv["bytes"] == (root / "pairs.csv").stat().st_size
    assert prov["benchmarks"]["pairs_csv"]["skipped"] == {"skipped_pairs": 0}
    assert "first best" in prov["benchmarks"]["pairs_csv"]["rules"]["accuracy"]


def test_diff_names_a_planted_colour_order_and_flip_difference_and_each_ones_effect(release, tmp_path, capsys):
    root, model = release
    evaluate(compose_eval(_overrides(root, model, tmp_path / "a", channels="rgb", flip="sum")))
    evaluate(compose_eval(_overrides(root, model, tmp_path / "b", channels="bgr", flip="none")))
    capsys.readouterr()
    assert diff_main([str(tmp_path / "a"), str(tmp_path / "b"), f"model={model}", f"out={tmp_path / 'diff.md'}"]) == 0
    text = (tmp_path / "diff.md").read_text()
    settings = text.split("## Numbers")[0]
    assert "| eval.flip | sum | none |" in settings and "| input.channels | rgb | bgr |" in settings
    assert "| model.channels | rgb | bgr |" in settings
    assert "pairs_csv.num_folds" not in settings and "model.sha256" not in settings  # the same on both sides

    def accuracy(**kw):  # independently: score with A's settings but the one switched
        return 100 * score(compose_eval(_overrides(root, model, tmp_path / "x", **kw)))[1]["pairs_csv"].accuracy

    a, b = accuracy(), accuracy(channels="bgr", flip="none")
    assert f"| pairs_csv | {a:.2f} | {b:.2f} | {b - a:+.2f} |" in text
    assert a != b  # the planted settings change the number
    switched = text.split("## Each setting switched alone")[1]
    assert f"| none (A's settings) | {a:.2f} |" in switched
    assert f"| eval.flip | {accuracy(flip='none') - a:+.2f} |" in switched
    assert f"| input.channels | {accuracy(channels='bgr') - a:+.2f} |" in switched


def test_diff_against_a_paper_row_compares_what_the_paper_states(release, tmp_path):
    root, model = release
    evaluate(compose_eval(_overrides(root, model, tmp_path / "a")))
    paper = tmp_path / "paper.yaml"
    paper.write_text("name: a paper, Table 2\nsettings: {eval.flip: concat, model.input_size: [16, 16]}\n"
                     "results: {pairs_csv: 99.5}\n")
    diff_main([str(tmp_path / "a"), str(paper), f"out={tmp_path / 'd.md'}"])
    text = (tmp_path / "d.md").read_text()
    assert "| eval.flip | sum | concat |" in text and "input_size" not in text.split("## Numbers")[0]
    assert "| pairs_csv |" in text and "| 99.50 |" in text


def test_diff_refuses_a_report_without_provenance_in_one_line(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({"results": {}}))
    r = subprocess.run([sys.executable, "-m", "frtrain.evaluate", "diff", str(tmp_path / "old"), str(tmp_path / "old")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "report.json: has no provenance record" in r.stderr and "Traceback" not in r.stderr
