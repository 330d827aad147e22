"""Fine-tuning a trained backbone: LoRA adapters (PEFT) train only the adapters and the head, checkpoints and exports
hold merged plain weights giving the adapted model's embeddings, a LoRA run resumes exactly, frozen patterns and the
head warm-up leave the backbone as it was, and the backbone's learning-rate share reaches the optimiser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frtrain.config import validate_train
from frtrain.engine import finetune
from frtrain.engine.build import build
from frtrain.engine.checkpoint import load_checkpoint, latest_checkpoint
from frtrain.engine.insightface import export_insightface
from frtrain.errors import ConfigError
from frtrain.train import build_trainer, train

from conftest import TINY_DATA, compose_train

RUN = TINY_DATA + ["eval=none", "trainer.checkpoint_every=5"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small model trained for 20 steps: the released model a user would start from."""
    out = tmp_path_factory.mktemp("base")
    train(compose_train(RUN + [f"output_dir={out}", "trainer.max_steps=20"]))
    return out


def _lora_parameters(model: nn.Module, rank: int) -> int:
    """LoRA's parameters on every Linear (r x in + out x r) and Conv2d (r x in x k x k, then a 1x1 out x r)."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            n += rank * m.in_features + m.out_features * rank
        elif isinstance(m, nn.Conv2d):
            n += rank * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups + m.out_channels * rank
    return n


def _plain_backbone(overrides=()):
    return build("backbone", compose_train(TINY_DATA + list(overrides)).backbone)


def _embed(model, seed=3):
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_lora_trains_only_the_adapters_and_the_head_and_merges_into_plain_weights(base, tmp_path):
    out = tmp_path / "lora"
    cfg = compose_train(RUN + [f"output_dir={out}", "trainer.max_steps=10", f"trainer.init_from={base}",
                               "backbone.lora.rank=4", "backbone.lora.alpha=8"])
    (tmp_path / "built").mkdir()
    trainer = build_trainer(cfg, str(tmp_path / "built"))  # what a run optimises
    backbone, head = trainer.backbone, trainer.head
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    counted = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    assert counted == _lora_parameters(_plain_backbone(), 4)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in backbone.parameters() if p.requires_grad} | {id(p) for p in head.parameters()}
    trainer.close()
    train(cfg)
    ckpt = load_checkpoint(latest_checkpoint(str(out)))
    start = load_checkpoint(latest_checkpoint(str(base)))["model"]
    adapted_state = ckpt["model_adapted"]
    # frozen: every base weight as it started (BatchNorm's running statistics are buffers, not parameters)
    for key, value in adapted_state.items():
        plain_key = key.replace(".base_layer.", ".")
        if ".lora_" not in key and "running_" not in key and "num_batches" not in key:
            assert torch.equal(value, start[plain_key]), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapted_state.items() if ".lora_B." in k)
    # the checkpoint's plain weights are the plain class's keys and give the adapted model's embeddings
    plain = _plain_backbone()
    assert list(ckpt["model"]) == list(plain.state_dict())
    plain.load_state_dict(ckpt["model"], strict=True)
    adapted = _plain_backbone()
    finetune.apply(adapted, cfg.backbone)
    adapted.load_state_dict(adapted_state, strict=True)
    assert torch.allclose(_embed(plain), _embed(adapted), atol=1e-5)
    assert not torch.allclose(_embed(plain), _embed(_plain_backbone()), atol=1e-3)
    # exported in insightface's layout: needs nothing of PEFT
    exported = torch.load(export_insightface(plain, str(tmp_path / "backbone.pth")), weights_only=True)
    fresh = _plain_backbone()
    fresh.load_state_dict(exported, strict=True)
    assert torch.allclose(_embed(fresh), _embed(adapted), atol=1e-5)


def test_a_lora_run_resumes_to_the_same_weights_as_an_uninterrupted_one(base, tmp_path):
    common = RUN + [f"trainer.init_from={base}", "backbone.lora.rank=2", "backbone.lora.dropout=0.1",
                    "trainer.max_steps=10", "trainer.keep_last=0"]
    whole = tmp_path / "whole"
    train(compose_train(common + [f"output_dir={whole}"]))
    step5 = whole / "checkpoints" / "step-00000005.pt"
    train(compose_train(common + [f"output_dir={tmp_path / 'resumed'}", f"trainer.resume={step5}"]))
    a = load_checkpoint(str(whole / "checkpoints" / "step-00000010.pt"))
    b = load_checkpoint(str(tmp_path / "resumed" / "checkpoints" / "step-00000010.pt"))
    assert list(a) == ["format", "version", "meta", "model", "model_adapted", "head", "optimizer", "lr_scheduler",
                       "grad_scaler", "train_state", "rng"]
    for key in a["model_adapted"]:
        assert torch.equal(a["model_adapted"][key], b["model_adapted"][key]), key


def test_frozen_patterns_and_the_head_warm_up_leave_the_backbone_as_it_was(base, tmp_path):
    start = load_checkpoint(latest_checkpoint(str(base)))["model"]
    out = tmp_path / "frozen"
    train(compose_train(RUN + [f"output_dir={out}", "trainer.max_steps=5", f"trainer.init_from={base}",
                               "backbone.freeze=[conv1.*,bn1.*,layer1.*]"]))
    end = load_checkpoint(latest_checkpoint(str(out)))["model"]
    for key in start:
        frozen = key.split(".")[0] in ("conv1", "bn1", "layer1") and "running_" not in key and "num_batches" not in key
        if frozen:
            assert torch.equal(start[key], end[key]), key
    assert not torch.equal(start["layer4.0.conv1.weight"], end["layer4.0.conv1.weight"])
    out = tmp_path / "warmup"
    train(compose_train(RUN + [f"output_dir={out}", "trainer.max_steps=5", f"trainer.init_from={base}",
                               "trainer.head_warmup_steps=5"]))
    ckpt = load_checkpoint(latest_checkpoint(str(out)))
    assert all(torch.equal(start[k], ckpt["model"][k]) for k in start)  # running statistics too: in eval mode
    assert not torch.equal(ckpt["head"]["weight"], load_checkpoint(latest_checkpoint(str(base)))["head"]["weight"])


def test_the_backbone_learning_rate_share_reaches_the_optimiser(tmp_path):
    cfg = compose_train(RUN + [f"output_dir={tmp_path}", "trainer.max_steps=2", "trainer.backbone_lr_scale=0.1",
                               "optim.lr=0.2"])
    (tmp_path / "built").mkdir()
    trainer = build_trainer(cfg, str(tmp_path / "built"))
    lrs = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    trainer.close()
    assert lrs[0] == pytest.approx(0.02) and lrs[1:] == [pytest.approx(0.2)] * (len(lrs) - 1)


@pytest.mark.parametrize("override, message", [
    ("backbone.freeze=[nothing.*]", r"backbone.freeze: the pattern 'nothing.\*' matches no name"),
    ("backbone.lora.rank=-1", r"backbone.lora.rank=-1"),
    ("backbone.lora.targets=[fc9]", r"backbone.lora.targets: the pattern 'fc9'"),
    ("+backbone.lora.ranks=4", r"backbone.lora has no option 'ranks'"),
    ("trainer.backbone_lr_scale=-1", r"trainer.backbone_lr_scale"),
])
def test_bad_fine_tuning_options_are_named_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_train(compose_train(TINY_DATA + [override]))


def test_the_fine_tuning_experiment_trains_adapters_and_a_new_head_on_lfw_half_a():
    cfg = compose_train(["experiment=finetune_lfw_lora", "paths.datasets=/data"])
    assert cfg.data.root == "/data/lfw/images" and list(cfg.eval.benchmarks.lfw.sets) == [6, 7, 8, 9, 10]
    assert cfg.backbone.lora.rank == 8 and cfg.trainer.init_head is False and cfg.trainer.head_warmup_steps > 0
