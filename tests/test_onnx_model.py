"""An ONNX file's frtrain metadata is data: every field is checked (types, input size bound, positive std) before
the evaluator or frtrain-verify uses it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from frtrain.errors import CheckpointError, ConfigError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from frtrain.evaluation.onnx_model import META_KEY, OnnxEmbedder  # noqa: E402

GOOD = {"input_size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "embedding_size": 4, "backbone": {}}


def _model(path, meta_text: str | None, size=8, dim=4) -> str:
    """(B, 3, size, size) -> flatten -> MatMul -> (B, dim), with ``meta_text`` as the frtrain metadata."""
    w = np.random.default_rng(0).standard_normal((3 * size * size, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", dim])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if meta_text is not None:
        helper.set_model_props(model, {META_KEY: meta_text})
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "metadata is not JSON"),
    ("[1, 2]", "metadata is a list"),
    (json.dumps(dict(GOOD, input_size=[100000, 100000])), "frtrain_meta.input_size=[100000, 100000]"),
    (json.dumps(dict(GOOD, input_size=[-8, 8])), "frtrain_meta.input_size=[-8, 8]"),
    (json.dumps(dict(GOOD, input_size="112")), "frtrain_meta.input_size='112'"),
    (json.dumps(dict(GOOD, std=[0.5, 0, 0.5])), "frtrain_meta.std=[0.5, 0, 0.5]: expected positive values"),
    (json.dumps(dict(GOOD, mean=["a", 1, 2])), "frtrain_meta.mean"),
    (json.dumps(dict(GOOD, embedding_size=-1)), "frtrain_meta.embedding_size=-1"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "std"}), "metadata has no 'std'"),
    (json.dumps(dict(GOOD, threshold={"cosine": 7, "far": 1e-3})), "frtrain_meta.threshold.cosine=7"),
    (json.dumps(dict(GOOD, threshold="0.3")), "frtrain_meta.threshold is a str"),
])
def test_malformed_metadata_is_refused_in_one_line(tmp_path, text, message):
    path = _model(tmp_path / "m.onnx", text)
    with pytest.raises(CheckpointError) as e:
        OnnxEmbedder(path)
    assert str(e.value).startswith(path) and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_well_formed_metadata_gives_the_model_its_convention(tmp_path):
    model = OnnxEmbedder(_model(tmp_path / "m.onnx", json.dumps(GOOD)))
    assert model.input_size == (8, 8) and model.std == (0.5,) * 3 and model.embedding_size == 4


@pytest.mark.parametrize("convention, message", [
    ({"size": 100000}, "input.size=100000"), ({"size": [8, 0]}, "input.size=[8, 0]"),
    ({"size": 8, "std": 0}, "input.std=0: expected positive values"), ({"size": 8, "mean": "x"}, "input.mean='x'"),
])
def test_a_stated_input_convention_is_bounded_too(tmp_path, convention, message):
    path = _model(tmp_path / "m.onnx", None)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        OnnxEmbedder(path, convention)


def test_verify_answers_a_huge_metadata_input_size_in_one_line(tmp_path):
    """Before: frtrain-verify asked OpenCV for a 100000 x 100000 image (30 GB)."""
    from frtrain.data.synthetic import draw_image

    path = _model(tmp_path / "m.onnx", json.dumps(dict(GOOD, input_size=[100000, 100000])))
    (tmp_path / "a.jpg").write_bytes(draw_image(0, 0, 0, 0, 32))
    done = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={path}", str(tmp_path / "a.jpg"),
                           str(tmp_path / "a.jpg")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "frtrain_meta.input_size=[100000, 100000]" in done.stderr
