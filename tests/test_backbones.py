"""Backbones: output shapes, insightface's parameter counts and key layout, gradients everywhere."""

from __future__ import annotations

import pytest
import torch

from frtrain.backbones import FaceViT, IResNet, MobileFaceNet, TimmBackbone
from frtrain.errors import ConfigError

from conftest import ASSETS

# insightface's iresnet with num_features=512 (pinned in tests/assets)
PARAMS = {18: 24_025_600, 34: 34_139_328, 50: 43_590_848, 100: 65_156_160, 200: 118_833_920}
KEYS = {18: 187, 34: 331, 50: 475, 100: 925, 200: 1807}


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_iresnet_parameter_and_key_counts_match_insightface(depth):
    model = IResNet(depth)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[depth]
    assert len(model.state_dict()) == KEYS[depth]
    assert not model.features.weight.requires_grad  # insightface fixes the feature BN scale at 1


def _spec_keys(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for line in (ASSETS / f"{arch}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            out.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return out


@pytest.mark.parametrize("depth", [18, 50])
def test_iresnet_keys_and_shapes_equal_insightface_in_order(depth):
    ours = [(k, tuple(v.shape)) for k, v in IResNet(depth).state_dict().items()]
    assert ours == _spec_keys(f"iresnet{depth}")


def test_iresnet_output_shape_at_112():
    model = IResNet(18).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 512)


SMALL = {
    "iresnet_tiny": lambda: IResNet(None, layers=[1, 1, 1, 1], width=16, embedding_size=64, input_size=56),
    "iresnet_rect": lambda: IResNet(None, layers=[1, 1, 1, 1], width=8, embedding_size=32, input_size=(64, 48)),
    "mobilefacenet": lambda: MobileFaceNet(embedding_size=128, input_size=56),
    "mobilefacenet_112": lambda: MobileFaceNet(embedding_size=512, input_size=112),
    "timm_resnet18": lambda: TimmBackbone("resnet18", embedding_size=64, input_size=56),
    "vit_small": lambda: FaceViT(None, embed_dim=32, depth=2, num_heads=4, patch_size=7, input_size=56, embedding_size=64,
                                 drop_path_rate=0.1, mask_ratio=0.25),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_backbone_shapes_and_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = SMALL[name]()
    h, w = model.input_size
    x = torch.randn(3, 3, h, w)
    out = model(x)
    assert out.shape == (3, model.embedding_size)
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"No gradient for {pname}"
    assert len(model.mean) == 3 and len(model.std) == 3


def test_mobilefacenet_layout_matches_insightface_mbf():
    sd = MobileFaceNet().state_dict()
    # a few landmarks of insightface's mbf (blocks 1,4,6,2; scale 2): names and shapes
    assert tuple(sd["layers.0.layers.0.weight"].shape) == (128, 3, 3, 3)
    assert tuple(sd["layers.1.layers.0.weight"].shape) == (128, 2, 3, 3)  # grouped conv, 64 groups
    assert tuple(sd["layers.2.layers.1.layers.0.weight"].shape) == (128, 1, 3, 3)
    assert tuple(sd["layers.7.layers.1.layers.2.layers.1.running_var"].shape) == (256,)
    assert tuple(sd["conv_sep.layers.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(sd["features.layers.0.layers.0.weight"].shape) == (512, 1, 7, 7)
    assert tuple(sd["features.layers.2.weight"].shape) == (512, 512)
    assert "features.layers.3.running_mean" in sd


def test_bad_backbone_options_name_the_option():
    with pytest.raises(ConfigError, match="backbone.depth=42"):
        IResNet(42)
    with pytest.raises(ConfigError, match="backbone.layers"):
        IResNet(None, layers=[1, 1, 1])
    with pytest.raises(ConfigError, match="not a timm model.*resnet18"):
        TimmBackbone("resnet1800")
