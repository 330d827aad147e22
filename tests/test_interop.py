"""insightface interop: plain backbone.pth files (float16 too), training directories, export round trip, errors."""

from __future__ import annotations

import pytest
import torch

from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.build import build
from frtrain.errors import CheckpointError
from frtrain.engine.model_files import load_model
from frtrain.engine.insightface import export_insightface, import_training_dir, load_backbone_file
from frtrain.interop import backbone_config
from frtrain.interop import main as import_main

from conftest import TINY_DATA, compose_train

TINY = ["backbone.input_size=40"]


def _backbone(seed=0):
    torch.manual_seed(seed)
    cfg = backbone_config("iresnet_tiny", TINY)
    model = build("backbone", cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), cfg


def _embed(model, seed=1):
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


def test_a_float16_backbone_pth_loads_with_the_backbone_named(tmp_path):
    model, cfg = _backbone()
    path = str(tmp_path / "backbone.pth")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    loaded, meta = load_model(path, cfg)
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    reference, _ = _backbone()
    reference.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})
    assert torch.equal(_embed(loaded), _embed(reference))
    with pytest.raises(CheckpointError, match=r"backbone.pth: a plain state dict .* with backbone=<name>"):
        load_model(path)


def test_export_then_import_gives_identical_tensors_and_embeddings(tmp_path):
    model, cfg = _backbone()
    for fp16 in (False, True):
        out = export_insightface(model, str(tmp_path / f"backbone{int(fp16)}.pth"), fp16=fp16)
        state = torch.load(out, weights_only=True)
        assert list(state) == list(model.state_dict())  # a plain state dict in insightface's key order
        assert state["conv1.weight"].dtype == (torch.float16 if fp16 else torch.float32)
        loaded, _ = load_backbone_file(out, cfg)
        if not fp16:
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
            assert torch.equal(_embed(loaded), _embed(model))
        else:
            cos = torch.nn.functional.cosine_similarity(_embed(loaded), _embed(model))
            assert float(cos.min()) > 0.999  # float16 rounding of the weights only


def _training_dir(tmp_path, model, slices, width=None):
    d = tmp_path / "insightface_out"
    d.mkdir(exist_ok=True)
    torch.save(model.state_dict(), d / "backbone.pth")
    for r, w in enumerate(slices):
        torch.save({"epoch": 3, "global_step": 100, "state_dict_backbone": model.state_dict(),
                    "state_dict_softmax_fc": {"weight": w}, "state_optimizer": {}}, d / f"checkpoint_gpu_{r}.pt")
    return d


def test_a_training_directory_imports_the_class_vectors_in_rank_order(tmp_path):
    model, cfg = _backbone()
    w = torch.randn(9, model.embedding_size)
    d = _training_dir(tmp_path, model, [w[:5], w[5:]])  # uneven slices, as insightface shards 9 classes on 2 ranks
    ckpt = import_training_dir(str(d), cfg, num_classes=9)
    assert torch.equal(ckpt["head"]["weight"], w) and ckpt["meta"]["num_classes"] == 9
    assert torch.equal(_embed(load_model_from(ckpt, tmp_path)), _embed(model))
    (d / "backbone.pth").unlink()  # then the backbone comes from rank 0's state_dict_backbone
    assert torch.equal(import_training_dir(str(d), cfg)["head"]["weight"], w)


def load_model_from(ckpt, tmp_path):
    path = str(tmp_path / "imported.pt")
    ckpt_io.save_atomic(ckpt, path)
    return load_model(path)[0]


def test_training_directory_errors_name_the_file_and_both_numbers(tmp_path):
    model, cfg = _backbone()
    w = torch.randn(9, model.embedding_size)
    d = _training_dir(tmp_path, model, [w[:5], w[5:7], w[7:]])
    with pytest.raises(CheckpointError, match=r"class vectors hold 9 classes \(5 \+ 2 \+ 2\), the dataset has 10"):
        import_training_dir(str(d), cfg, num_classes=10)
    (d / "checkpoint_gpu_1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint_gpu_1.pt: missing; the directory has ranks \[0, 2\]"):
        import_training_dir(str(d), cfg)
    (tmp_path / "b").mkdir()
    d = _training_dir(tmp_path / "b", model, [torch.randn(4, 64), torch.randn(4, 64)])
    with pytest.raises(CheckpointError, match=rf"checkpoint_gpu_0.pt: class vectors have width 64, the backbone's "
                                              rf"embedding size is {model.embedding_size}"):
        import_training_dir(str(d), cfg)


def test_a_renamed_or_missing_key_is_named(tmp_path):
    model, cfg = _backbone()
    state = model.state_dict()
    state["conv_first.weight"] = state.pop("conv1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"lack key 'conv1.weight' and have unexpected key 'conv_first.weight'$"):
        load_backbone_file(str(tmp_path / "renamed.pth"), cfg)
    del state["conv_first.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing.pth: the backbone weights lack key 'conv1.weight'$"):
        load_backbone_file(str(tmp_path / "missing.pth"), cfg)


class NotATensor:
    pass


def test_a_file_that_needs_more_than_weights_only_is_refused(tmp_path):
    model, cfg = _backbone()
    torch.save({"state": model.state_dict(), "extra": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"pickled.pth: cannot be loaded with weights_only=True"):
        load_backbone_file(str(tmp_path / "pickled.pth"), cfg)


def test_fine_tune_from_an_imported_directory_and_from_a_bare_backbone(tmp_path, capsys):
    """frtrain-import-insightface, then frtrain-train trainer.init_from=...: weights and class vectors are used."""
    from frtrain.train import train

    model, _ = _backbone(seed=3)  # not the seed training starts from, so an ignored init_from shows
    w = torch.randn(60, model.embedding_size)  # TINY_DATA has 60 identities
    d = _training_dir(tmp_path, model, [w[:31], w[31:]])
    out = str(tmp_path / "frtrain.pt")
    assert import_main([str(d), "backbone=iresnet_tiny", f"out={out}", "num_classes=60"] + TINY) == 0
    assert "fine-tune with frtrain-train trainer.init_from=" in capsys.readouterr().out
    frozen = ["trainer.max_steps=1", "optim.lr=0", "eval=none", f"trainer.init_from={out}"]
    train(compose_train(TINY_DATA + frozen + [f"output_dir={tmp_path}/run"]))
    ckpt = torch.load(ckpt_io.latest_checkpoint(f"{tmp_path}/run"), weights_only=True)
    params = dict(model.named_parameters())
    assert all(torch.equal(ckpt["model"][k], params[k]) for k in params)  # lr 0: the imported weights, unchanged
    assert torch.equal(ckpt["head"]["weight"], w)
    # a bare backbone.pth: backbone loaded, the head starts fresh (and the log says so)
    train(compose_train(TINY_DATA + frozen[:-1] + [f"trainer.init_from={d}/backbone.pth", "head=npt",
                                                  f"output_dir={tmp_path}/run2"]))
    bare = torch.load(ckpt_io.latest_checkpoint(f"{tmp_path}/run2"), weights_only=True)
    assert all(torch.equal(bare["model"][k], params[k]) for k in params)
    assert bare["head"]["weight"].shape == w.shape and not torch.equal(bare["head"]["weight"], w)
    # a class count that does not match the data fails with both numbers
    torch.save({**torch.load(out, weights_only=True), "head": {"weight": torch.randn(7, model.embedding_size)}},
               tmp_path / "seven.pt")
    with pytest.raises(CheckpointError, match=r"seven.pt: has class vectors for 7 classes, the training data has 60"):
        train(compose_train(TINY_DATA + frozen[:-1] + [f"trainer.init_from={tmp_path}/seven.pt",
                                                      f"output_dir={tmp_path}/run3"]))
