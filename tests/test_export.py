"""frtrain-export to ONNX: onnxruntime gives the PyTorch embeddings; frtrain-eval scores the .onnx like the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.build import build
from frtrain.errors import CheckpointError

pytest.importorskip("onnxruntime")

from frtrain.evaluate import evaluate  # noqa: E402
from frtrain.evaluation.onnx_model import OnnxEmbedder  # noqa: E402
from frtrain.export import export, onnx_parity  # noqa: E402

BACKBONES = {
    "iresnet_tiny": ["backbone=iresnet_tiny", "backbone.input_size=40"],
    "mobilefacenet": ["backbone=mobilefacenet", "backbone.input_size=112"],
}


def _compose(name, overrides):
    from frtrain.config import compose

    return compose(name, overrides)


def _checkpoint(tmp_path, which: str) -> str:
    """A frtrain checkpoint of a randomly initialised backbone with non-trivial BatchNorm statistics."""
    cfg = _compose("train", BACKBONES[which])
    torch.manual_seed(0)
    backbone = build("backbone", cfg.backbone)
    for m in backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    meta = {"backbone": OmegaConf.to_container(cfg.backbone, resolve=True), "input_size": list(backbone.input_size),
            "mean": list(backbone.mean), "std": list(backbone.std), "embedding_size": backbone.embedding_size}
    path = str(tmp_path / f"{which}.pt")
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "meta": meta,
                         "model": backbone.state_dict()}, path)
    return path


@pytest.mark.parametrize("which", sorted(BACKBONES))
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path, which):
    path = _checkpoint(tmp_path, which)
    out = export(_compose("export", [f"model={path}"]))
    assert out == path[:-3] + ".onnx"
    from frtrain.engine.model_files import load_backbone

    backbone, _ = load_backbone(path)
    onnx_model = OnnxEmbedder(out)
    assert onnx_model.input_size == tuple(backbone.input_size) and onnx_model.embedding_size == backbone.embedding_size
    for batch in (1, 7):  # any batch size: the batch axis is dynamic
        x = torch.randn(batch, 3, *backbone.input_size, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(backbone(x), dim=1)
        got = torch.nn.functional.normalize(onnx_model(x), dim=1)
        assert got.shape == (batch, backbone.embedding_size)
        assert float((ref - got).abs().max()) <= 1e-4
    assert onnx_parity(backbone, out) <= 1e-4


def test_evaluating_the_onnx_file_scores_like_the_checkpoint(tmp_path):
    path = _checkpoint(tmp_path, "iresnet_tiny")
    onnx_path = export(_compose("export", [f"model={path}", f"out={tmp_path}/m.onnx"]))
    common = ["benchmarks.synthetic.num_identities=30", "benchmarks.synthetic.images_per_identity=4",
              "benchmarks.synthetic.num_pairs=400", "benchmarks.synthetic.image_size=40", "eval.num_workers=0",
              "roc_plot=false"]
    ref = evaluate(_compose("evaluate", [f"model={path}", f"output_dir={tmp_path}/a"] + common))["synthetic"]
    got = evaluate(_compose("evaluate", [f"model={onnx_path}", f"output_dir={tmp_path}/b"] + common))["synthetic"]
    assert got.num_pairs == ref.num_pairs == 400
    assert abs(got.accuracy - ref.accuracy) <= 1.0 / 400 and got.auc == pytest.approx(ref.auc, abs=1e-4)
    assert got.xnorm == pytest.approx(ref.xnorm, rel=1e-4)


def test_an_onnx_file_without_frtrain_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(CheckpointError, match=r"other.onnx: has no 'frtrain_meta' metadata"):
        OnnxEmbedder(str(tmp_path / "other.onnx"))


# -- ONNX models made elsewhere: the user states the input convention -----------------------------------

def _bgr_255_model(path, size=8, dim=4, seed=0):
    """An ONNX model built by hand (no frtrain metadata) that expects BGR 0..255 NCHW: embedding = flatten(x) @ W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((3 * size * size, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["emb"])],
        "bgr255", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, size, size])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", dim])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_a_third_party_onnx_model_scores_with_the_stated_input_convention(tmp_path):
    from frtrain.engine.model_files import load_model
    from frtrain.errors import CheckpointError
    from frtrain.evaluation.embed import embed_batches

    path = tmp_path / "theirs.onnx"
    w = _bgr_255_model(path)
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # RGB, as the evaluator reads
    by_hand = image[:, :, ::-1].transpose(2, 0, 1).reshape(1, -1).astype(np.float32) @ w  # BGR, 0..255, NCHW
    batch = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]]

    def embedding(convention):
        model, _ = load_model(str(path), onnx_input=convention)
        emb, _ = embed_batches(model, batch, model.mean, model.std, torch.device("cpu"), flip="none")
        return emb

    right = {"size": 8, "mean": 0.0, "std": 1.0, "channels": "bgr"}
    np.testing.assert_allclose(embedding(right), by_hand, rtol=1e-4, atol=1e-2)
    wrong = dict(right, channels="rgb")
    assert not np.allclose(embedding(wrong), by_hand, rtol=1e-2, atol=1.0)
    shifted = dict(right, mean=127.5, std=127.5)  # insightface's normalisation on a model that wants raw pixels
    assert not np.allclose(embedding(shifted), by_hand, rtol=1e-2, atol=1.0)
    with pytest.raises(CheckpointError, match=r"theirs.onnx: has no 'frtrain_meta' metadata .*input=insightface"):
        load_model(str(path))


def test_the_presets_name_the_conventions_of_the_common_zoos():
    from frtrain.config import compose

    insightface = compose("evaluate", ["model=x.onnx", "input=insightface"]).input
    sface = compose("evaluate", ["model=x.onnx", "input=sface"]).input
    assert (insightface.size, insightface.mean, insightface.std, insightface.channels) == (112, 127.5, 127.5, "rgb")
    assert (sface.size, sface.mean, sface.std, sface.channels) == (112, 0.0, 1.0, "rgb")
    assert compose("evaluate", ["model=x.onnx", "input.channels=bgr", "input.size=112"]).input.channels == "bgr"
