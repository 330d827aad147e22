"""Every config option composes and builds; schedules; bad options are named."""

from __future__ import annotations

import pytest
import torch

from frtrain.config import group_options
from frtrain.engine.build import build
from frtrain.engine.schedule import WarmupCosine, WarmupPoly, WarmupStep
from frtrain.errors import ConfigError

from conftest import compose_train

def options(group: str) -> list[str]:
    return group_options(group)


@pytest.mark.parametrize("name", options("head"))
def test_every_head_config_builds_and_trains_a_step(name):
    cfg = compose_train([f"head={name}"])
    head = build("head", cfg.head, embedding_size=8, num_classes=10)
    x = torch.randn(6, 8, requires_grad=True)
    loss = head(x, torch.tensor([0, 1, 2, 3, 4, 5]))
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", options("backbone"))
def test_every_backbone_config_composes_and_small_ones_build(name):
    cfg = compose_train([f"backbone={name}"])
    if name in ("iresnet100", "iresnet200"):  # built in test_backbones; too large to build twice
        assert cfg.backbone.depth in (100, 200)
        return
    overrides = {"input_size": 32} if name != "iresnet_tiny" else {}
    node = dict(cfg.backbone) | overrides
    model = build("backbone", node).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *model.input_size))
    assert out.shape == (2, cfg.backbone.embedding_size)


@pytest.mark.parametrize("optim", options("optim"))
@pytest.mark.parametrize("sched", options("sched"))
def test_every_optimizer_and_schedule_builds(optim, sched):
    cfg = compose_train([f"optim={optim}", f"sched={sched}"])
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build("optim", cfg.optim)([{"params": [p]}])
    fn = build("sched", cfg.sched)(total_steps=100, steps_per_epoch=10)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    assert 0.0 <= fn(50) <= 1.0 and lr.get_last_lr()[0] > 0


def test_data_head_specialisations_name_existing_data_and_head_options():
    heads, datas = set(options("head")), set(options("data"))
    for name in options("data_head"):
        data, head = name.split("_", 1)
        assert data in datas and head in heads, name
    assert compose_train([]).head.scale == "auto"  # 16 on the 200 synthetic identities, 64 from 5,000 on
    assert compose_train(["head=npt"]).head.k == 6 and compose_train(["head=npt", "data=folder"]).head.k == 1


def test_debug_limit_composes_with_any_data():
    for data in options("data"):
        cfg = compose_train([f"data={data}", "debug=limit"])
        assert cfg.trainer.max_steps == 20 and cfg.data.loader.batch_size == 32


def test_unknown_option_of_a_built_object_is_named_with_the_accepted_ones():
    cfg = compose_train(["head=cosface", "+head.marginn=0.3"])
    with pytest.raises(ConfigError, match=r"head: frtrain.heads.CosFace has no option 'marginn' \(did you mean "
                                          r"'margin_cos'\? its options: margin_cos, margin_grad, sample_rate, scale\)"):
        build("head", cfg.head, embedding_size=8, num_classes=10)


def test_schedules():
    poly = WarmupPoly(total_steps=110, steps_per_epoch=10, warmup_epochs=1.0, power=2.0)
    assert [round(poly(s), 4) for s in (0, 4, 9)] == [round(1 / 11, 4), round(5 / 11, 4), round(10 / 11, 4)]
    assert poly(10) == 1.0 and poly(60) == pytest.approx(0.25) and poly(110) == 0.0
    cos = WarmupCosine(total_steps=100, steps_per_epoch=10, min_ratio=0.1)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)
    step = WarmupStep(total_steps=100, steps_per_epoch=10, milestones=[3, 6], gamma=0.1)
    assert step(29) == 1.0 and step(30) == pytest.approx(0.1) and step(60) == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="sched.milestones"):
        WarmupStep(total_steps=10, steps_per_epoch=1, milestones=[5, 2])
