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
def test_every_optimizer_builds_with_its_configured_options(optim):
    cfg = compose_train([f"optim={optim}", "optim.lr=0.025"])
    opt = build("optim", cfg.optim)([{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[optim]
    assert opt.defaults["lr"] == 0.025 and opt.defaults["weight_decay"] == cfg.optim.weight_decay
    if optim == "sgd":
        assert opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("sched", options("sched"))
def test_every_schedule_follows_its_closed_form(sched):
    """100 steps, 10 per epoch, one warm-up epoch: the factor at several steps against the formulas."""
    import math

    cfg = compose_train([f"sched={sched}", "sched.warmup_epochs=1"] + (["sched.milestones=[4,7]"] if sched == "step" else []))
    fn = build("sched", cfg.sched)(total_steps=100, steps_per_epoch=10)
    warm = [(s + 1) / 11 for s in range(10)]  # linear warm-up over 10 steps
    progress = lambda s: (s - 10) / 90  # noqa: E731
    closed = {"poly": lambda s: (1 - progress(s)) ** cfg.sched.get("power", 2.0),
              "cosine": lambda s: cfg.sched.get("min_ratio", 0.0) + (1 - cfg.sched.get("min_ratio", 0.0)) * 0.5 *
              (1 + math.cos(math.pi * progress(s))),
              "step": lambda s: 0.1 ** ((s >= 40) + (s >= 70))}[sched]
    for s in (0, 5, 9):
        assert fn(s) == pytest.approx(warm[s])
    for s in (10, 25, 39, 40, 55, 70, 99):
        assert fn(s) == pytest.approx(closed(s)), s
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    for _ in range(55):
        opt.step()
        lr.step()
    assert lr.get_last_lr()[0] == pytest.approx(0.5 * closed(55))


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
                                          r"'margin_cos'\? its options: chunk_size, class_dtype, margin_cos, margin_grad, memory_budget_mb, sample_rate, scale\)"):
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


SHARED_HEAD_OPTIONS = {"sample_rate", "chunk_size", "memory_budget_mb", "class_dtype"}


def test_heads_state_only_their_own_options_and_pass_the_shared_ones_on():
    """A new shared option is one parameter of Head (and its line in configs/head/_shared.yaml), not 19 signatures."""
    import inspect

    import frtrain.heads as heads
    from frtrain.heads.class_vectors import Head

    classes = [c for c in vars(heads).values() if isinstance(c, type) and issubclass(c, Head) and c is not Head]
    assert len(classes) >= 15
    for cls in classes:
        own = inspect.signature(cls.__dict__.get("__init__", cls.__init__)).parameters
        assert not SHARED_HEAD_OPTIONS & set(own), f"{cls.__name__} restates {SHARED_HEAD_OPTIONS & set(own)}"
    assert SHARED_HEAD_OPTIONS <= set(inspect.signature(Head.__init__).parameters)


def test_a_misspelt_shared_head_option_is_still_named_with_the_closest_names():
    from frtrain.config import validate_train
    from frtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"head: frtrain.heads.ArcFace has no option 'chunk_sise' \(did you mean "
                                          r"'chunk_size'\?.*sample_rate"):
        validate_train(compose_train(["+head.chunk_sise=0"]))
    with pytest.raises(ConfigError, match=r"head.class_dtype=7: expected a string"):
        validate_train(compose_train(["head=npt", "head.class_dtype=7"]))
