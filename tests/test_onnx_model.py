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


# -- models as their publishers ship them ---------------------------------------------------------------------------
def _plain_model(path, batch, extra_input: bool = False, size=16, dim=8) -> str:
    """A third-party-style model without frtrain metadata: (batch, 3, size, size) -> (batch, dim); ``batch`` an int
    fixes the batch axis (OpenCV's SFace export has 1); ``extra_input`` wires the weight as a graph input."""
    w = np.random.default_rng(1).standard_normal((3 * size * size, dim)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])]
    initializers = [numpy_helper.from_array(w, "W")]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [3 * size * size, dim]))
        initializers = []
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "g", inputs, [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, dim])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_a_model_with_a_fixed_batch_of_one_scores_as_the_same_model_with_a_dynamic_batch(tmp_path):
    """Before: the first session.run with 32 images failed with a traceback."""
    from frtrain.config import compose
    from frtrain.data.synthetic import draw_image
    from frtrain.evaluate import evaluate

    fixed, dynamic = _plain_model(tmp_path / "fixed.onnx", 1), _plain_model(tmp_path / "dynamic.onnx", "B")
    assert OnnxEmbedder(fixed, {"size": 16}).fixed_batch == 1 and OnnxEmbedder(dynamic, {"size": 16}).fixed_batch is None
    x = torch_random((7, 3, 16, 16))
    np.testing.assert_allclose(OnnxEmbedder(fixed, {"size": 16})(x).numpy(), OnnxEmbedder(dynamic, {"size": 16})(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    three = _plain_model(tmp_path / "three.onnx", 3)  # a fixed batch the image count is not a multiple of
    np.testing.assert_allclose(OnnxEmbedder(three, {"size": 16})(x).numpy(), OnnxEmbedder(dynamic, {"size": 16})(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    accuracies = {}
    for name, path in (("fixed", fixed), ("dynamic", dynamic)):
        cfg = compose("evaluate", [f"model={path}", "input=sface", "input.size=16", f"output_dir={tmp_path}/{name}",
                                   "benchmarks.synthetic.num_identities=20", "benchmarks.synthetic.num_pairs=200",
                                   "benchmarks.synthetic.images_per_identity=4", "benchmarks.synthetic.image_size=16",
                                   "roc_plot=false"])
        accuracies[name] = evaluate(cfg)["synthetic"].accuracy
    assert accuracies["fixed"] == accuracies["dynamic"]
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(draw_image(0, 1, 3, 0, 16))
    b.write_bytes(draw_image(0, 1, 4, 0, 16))
    scores = []
    for path in (fixed, dynamic):
        done = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={path}", "input=sface", "input.size=16",
                               str(a), str(b), "threshold=0.5"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        scores.append(float(done.stdout.split()[1].rstrip(";")))
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


def torch_random(shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_a_model_that_wants_more_than_the_image_is_refused_at_load_naming_its_inputs(tmp_path):
    """Before: accepted at load, then a traceback in the first session.run (SFace's int8 release wires weights as
    graph inputs)."""
    path = _plain_model(tmp_path / "int8.onnx", "B", extra_input=True)
    with pytest.raises(CheckpointError) as e:
        OnnxEmbedder(path, {"size": 16})
    assert "the graph takes 2 inputs ('data', 'W')" in str(e.value) and "\n" not in str(e.value)


def test_verify_finds_landmarks_by_the_ending_of_the_image_path(tmp_path):
    from frtrain.errors import DataError
    from frtrain.evaluation.align import landmarks_for

    five = np.arange(10.0).reshape(5, 2)
    entries = {"loose_crop/1.jpg": five, "other/2.jpg": five + 1, "a/x/3.jpg": five + 2, "b/x/3.jpg": five + 3}
    where = "lmk.txt"
    assert landmarks_for(entries, str(tmp_path / "IJBC" / "loose_crop" / "1.jpg"), where) is entries["loose_crop/1.jpg"]
    assert landmarks_for(entries, "/data/a/x/3.jpg", where) is entries["a/x/3.jpg"]  # the longer ending decides
    with pytest.raises(DataError, match=r"/data/c/x/3.jpg: no landmarks for this image in lmk.txt"):
        landmarks_for(entries, "/data/c/x/3.jpg", where)  # x/3.jpg: two entries end so
    with pytest.raises(DataError, match="no landmarks"):
        landmarks_for(entries, "/data/9.jpg", where)
