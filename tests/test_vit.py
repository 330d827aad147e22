"""insightface's face ViT family: the same parameter names, shapes and order as insightface's module (always, from
the key lists read off its source), the same embeddings for the same weights (with FRTRAIN_INSIGHTFACE_SRC set to
a checkout of insightface: its own ``recognition/arcface_torch/backbones/vit.py`` is built), gradient checkpointing
giving the same gradients, and backbone.pth files scored and exported as IResNet's are."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from frtrain.backbones import FaceViT
from frtrain.engine.build import without_initialisation
from frtrain.engine.insightface import export_insightface, load_backbone_file
from frtrain.engine.memory_plan import probe_activations
from frtrain.errors import ConfigError

from conftest import compose_train
from test_backbones import _spec_keys

SMALL = dict(variant=None, embed_dim=32, depth=2, num_heads=4, patch_size=7, input_size=56, embedding_size=64,
             drop_path_rate=0.2, mask_ratio=0.25)


@pytest.mark.parametrize("variant", ["vit_t", "vit_l"])
def test_keys_shapes_and_order_equal_insightfaces(variant):
    with without_initialisation():  # vit_l: 256M parameters, on the meta device
        model = FaceViT(variant)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _spec_keys(variant)  # the key list read off insightface's source (tests/assets)


def test_the_configs_build_insightfaces_variants():
    from frtrain.engine.build import dry_build

    sizes = {}
    for name in ("vit_t", "vit_s", "vit_b", "vit_l"):
        model = dry_build("backbone", compose_train([f"backbone={name}"]).backbone)
        sizes[name] = (model.embed_dim, len(model.blocks), model.num_patches, model.embedding_size, model.checkpointing)
    assert sizes == {"vit_t": (256, 12, 144, 512, False), "vit_s": (512, 12, 144, 512, False),
                     "vit_b": (512, 24, 144, 512, True), "vit_l": (768, 24, 144, 512, True)}


def _insightface_vit():
    src = os.environ.get("FRTRAIN_INSIGHTFACE_SRC")
    if not src:
        pytest.skip("insightface's source: set FRTRAIN_INSIGHTFACE_SRC to a checkout of deepinsight/insightface")
    path = Path(src) / "recognition" / "arcface_torch" / "backbones" / "vit.py"
    if not path.is_file():
        pytest.fail(f"FRTRAIN_INSIGHTFACE_SRC={src}: no {path}")
    spec = importlib.util.spec_from_file_location("insightface_vit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VisionTransformer


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("kind", ["vit_t", "small"])
def test_insightfaces_own_module_and_ours_give_the_same_embeddings_for_the_same_weights(kind):
    VisionTransformer = _insightface_vit()
    torch.manual_seed(0)
    if kind == "vit_t":  # get_model("vit_t")
        theirs = VisionTransformer(img_size=112, patch_size=9, num_classes=512, embed_dim=256, depth=12, num_heads=8,
                                   drop_path_rate=0.1, norm_layer="ln", mask_ratio=0.1)
        ours, size = FaceViT("vit_t"), 112
    else:
        theirs = VisionTransformer(img_size=56, patch_size=7, num_classes=64, embed_dim=32, depth=2, num_heads=4,
                                   drop_path_rate=0.2, norm_layer="ln", mask_ratio=0.25)
        ours, size = FaceViT(**SMALL), 56
    for m in theirs.modules():  # running statistics worth comparing
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-4, rtol=1e-4)
    # training mode: the same PatchDrop and stochastic depth for the same random state
    torch.manual_seed(7)
    a = theirs.train()(x)
    torch.manual_seed(7)
    b = ours.train()(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # and back: our weights load into insightface's module
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_checkpointing_gives_the_same_gradients_in_training_mode():
    torch.manual_seed(0)
    plain = FaceViT(**SMALL)
    ckpt = FaceViT(**SMALL, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(5)  # the same PatchDrop and drop-path draws
        model.train()(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name
    # the memory plan's probe sees the difference: one block's activations instead of all of them
    assert probe_activations(ckpt, "fp32")[0] < 0.7 * probe_activations(plain, "fp32")[0]


def test_a_backbone_pth_in_insightfaces_layout_scores_and_exports_back(tmp_path):
    torch.manual_seed(0)
    model = FaceViT(**SMALL).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)  # insightface's backbone.pth: a plain state dict
    node = compose_train(["backbone=vit_t"] + [f"backbone.{k}={'null' if v is None else v}" for k, v in SMALL.items()]).backbone
    loaded, meta = load_backbone_file(str(path), node)
    assert "lora" not in meta["backbone"] and meta["backbone"]["_target_"].endswith("FaceViT")
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    out = export_insightface(loaded, str(tmp_path / "exported.pth"))
    again = torch.load(out, weights_only=True)
    assert list(again) == list(model.state_dict()) and all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_bad_vit_options_are_named():
    for kwargs, message in ((dict(variant="vit_x"), "backbone.variant"), (dict(variant=None, embed_dim=30, depth=1,
                                                                                  num_heads=4), "multiple of num_heads"),
                            (dict(mask_ratio=1.0), "mask_ratio"), (dict(norm_layer="gn"), "norm_layer")):
        with pytest.raises(ConfigError, match=message):
            FaceViT(**kwargs)
    with pytest.raises(ValueError, match="112x112 inputs, got 56x56"):
        FaceViT("vit_t").eval()(torch.zeros(1, 3, 56, 56))


#: insightface's configs/wf42m_pfc03_40epoch_64gpu_vit_*.py: the network's drop path and mask ratio
RECIPES = {"vit_t_wf42m": ("vit_t", 0.05, 0.0), "vit_s_wf42m": ("vit_s", 0.05, 0.0),
           "vit_b_wf42m": ("vit_b", 0.05, 0.05), "vit_l_wf42m": ("vit_l", 0.05, 0.05)}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_vit_experiments_follow_insightfaces_webface42m_recipe(name):
    from frtrain.engine.build import build, dry_build

    variant, drop_path, mask = RECIPES[name]
    cfg = compose_train([f"experiment={name}", "paths.datasets=/data"])
    model = dry_build("backbone", cfg.backbone)
    assert (model.variant, cfg.backbone.drop_path_rate, model.mask_ratio) == (variant, drop_path, mask)
    head = dry_build("head", cfg.head, embedding_size=512, num_classes=2_059_906)
    assert type(head).__name__ == "CosFace" and head.scale == 64.0 and head.sample_rate == 0.3
    optimizer = build("optim", cfg.optim)([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["lr"] == 1e-3
    assert optimizer.defaults["weight_decay"] == 0.1
    schedule = build("sched", cfg.sched)(total_steps=4000, steps_per_epoch=100)
    assert type(schedule).__name__ == "WarmupPoly" and schedule.power == 1.0 and schedule.warmup_steps == 400
    assert cfg.trainer.epochs == 40 and cfg.data.loader.batch_size == 384 and cfg.data.root == "/data/WebFace42M"
    assert list(cfg.eval.final_only) == ["ijbc"] and cfg.eval.benchmarks.ijbc.root == "/data/IJB_release/IJBC"
    assert set(cfg.paper.reported) == {"mfr_all", "ijbc_tar_at_far_1e-4", "ijbc_tar_at_far_1e-5"}
