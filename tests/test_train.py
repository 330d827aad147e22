"""Training end to end: it learns, it resumes exactly, it refuses checkpoints of another model."""

from __future__ import annotations

import json
import os

import pytest
import torch

from frtrain.engine.checkpoint import load_checkpoint
from frtrain.engine.trainer import TrainingDiverged
from frtrain.errors import CheckpointError, ConfigError
from frtrain.train import train

from conftest import TINY_DATA, TINY_EVAL, compose_train


def _run(tmp_path, name, extra):
    out = tmp_path / name
    evaluation = [] if "eval=none" in extra else TINY_EVAL
    results = train(compose_train(TINY_DATA + evaluation + [f"output_dir={out}"] + extra))
    return out, results


def test_short_run_loss_falls_and_verification_accuracy_rises_well_above_chance(tmp_path):
    out, results = _run(tmp_path, "learn", ["trainer.max_steps=200", "eval.every_steps=100", "eval.at_start=true"])
    summary = json.loads((out / "results.json").read_text())
    acc = {e["step"]: e["accuracy"] for e in summary["history"]["eval"]}
    losses = [e["loss"] for e in summary["history"]["loss"]]
    assert acc[0] < 0.65, f"an untrained model should be near chance, got {acc[0]:.3f}"
    assert acc[200] >= 0.70 and acc[200] - acc[0] >= 0.12, acc
    assert losses[-1] < 0.75 * losses[0], losses
    assert results["synthetic"]["accuracy"] == pytest.approx(acc[200])
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "step-00000200.pt").is_file()
    assert (out / "config.yaml").is_file() and list((out / "tb").glob("events.out.tfevents.*"))
    assert summary["watchdog"] == [], summary["watchdog"]  # a healthy run: no check fires (tests/test_watchdog.py)


RESUME = ["eval=none", "trainer.max_steps=12", "trainer.checkpoint_every=6", "trainer.keep_last=5",
          "data.loader.batch_size=16", "sched.warmup_epochs=0.05", "backbone.dropout=0.2", "head.sample_rate=0.5",
          "trainer.log_every=1"]


@pytest.mark.parametrize("head", ["arcface", "adaface", "curricularface", "elasticface_arc_plus"])
def test_resume_continues_exactly_where_an_uninterrupted_run_goes(tmp_path, head):
    """Also for heads with running statistics (AdaFace, CurricularFace) and a margin generator (ElasticFace)."""
    full, _ = _run(tmp_path, "full", RESUME + [f"head={head}"])
    step6 = full / "checkpoints" / "step-00000006.pt"
    resumed, _ = _run(tmp_path, "resumed", RESUME + [f"head={head}", f"trainer.resume={step6}"])
    a = load_checkpoint(str(full / "checkpoints" / "step-00000012.pt"))
    b = load_checkpoint(str(resumed / "checkpoints" / "step-00000012.pt"))
    # the checkpoint's keys are a contract with users' tools: pinned here, not read from the code
    assert list(a) == ["format", "version", "meta", "model", "head", "optimizer", "lr_scheduler", "grad_scaler",
                       "train_state", "rng"]
    for part in ("model", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for key in ("norm_mean", "t", "margin_rng"):  # the state that makes these heads' steps depend on the past
        if key in a["head"]:
            assert not torch.equal(a["head"][key], load_checkpoint(str(step6))["head"][key]), f"{key} never moved"
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 12
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["train_state"] == b["train_state"]
    losses_full = json.loads((full / "results.json").read_text())["history"]["loss"]
    losses_resumed = json.loads((resumed / "results.json").read_text())["history"]["loss"]
    assert [e["loss"] for e in losses_full if e["step"] > 6] == [e["loss"] for e in losses_resumed]


def test_resume_auto_takes_the_latest_checkpoint_of_the_output_directory(tmp_path):
    common = ["eval=none", "trainer.checkpoint_every=2", "data.loader.batch_size=16", "trainer.log_every=1"]
    out, _ = _run(tmp_path, "auto", common + ["trainer.max_steps=4"])
    _, _ = _run(tmp_path, "auto", common + ["trainer.max_steps=6", "trainer.resume=auto"])
    log = load_checkpoint(str(out / "checkpoints" / "step-00000006.pt"))["train_state"]
    assert log["step"] == 6
    assert len(json.loads((out / "results.json").read_text())["history"]["loss"]) == 2  # steps 5, 6 only


@pytest.mark.parametrize("override, match", [
    (["backbone=mobilefacenet", "backbone.input_size=40", "backbone.embedding_size=128"],
     r"was trained with backbone frtrain.backbones.IResNet, this run builds frtrain.backbones.MobileFaceNet"),
    (["head=cosface"], r"was trained with head frtrain.heads.ArcFace, this run builds frtrain.heads.CosFace"),
    (["data.num_identities=61"], r"has 60 classes, the training data has 61"),
])
def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, override, match):
    out, _ = _run(tmp_path, "base", ["eval=none", "trainer.max_steps=1", "data.loader.batch_size=16"])
    ckpt = out / "checkpoints" / "step-00000001.pt"
    with pytest.raises(CheckpointError, match=match):
        _run(tmp_path, "other", ["eval=none", "trainer.max_steps=2", "data.loader.batch_size=16",
                                 f"trainer.resume={ckpt}"] + override)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    out, _ = _run(tmp_path, "acc", ["eval=none", "trainer.epochs=1", "trainer.accumulate=3", "data.loader.batch_size=16"])
    state = load_checkpoint(str(next((out / "checkpoints").glob("step-*.pt"))))["train_state"]
    assert state["step"] == (60 * 16 // 16) // 3  # 60 batches of 16 per epoch, 3 per optimiser step
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 0


def test_a_diverging_run_stops_with_the_step_number(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at step \d+"):
        _run(tmp_path, "nan", ["eval=none", "trainer.max_steps=30", "head=softmax", "optim.lr=1e12",
                               "optim.weight_decay=0", "data.loader.batch_size=16"])


def test_gradient_clipping_bounds_the_update(tmp_path):
    """With a tiny clip norm, one SGD step (no momentum, no decay) moves the weights by at most lr * clip."""
    common = ["eval=none", "trainer.max_steps=1", "data.loader.batch_size=16", "optim.momentum=0", "optim.weight_decay=0",
              "optim.lr=0.5", "trainer.log_every=1"]
    clipped, _ = _run(tmp_path, "clipped", common + ["trainer.clip_grad_norm=0.001"])
    free, _ = _run(tmp_path, "free", common)
    init = compose_train(TINY_DATA + common)
    from frtrain.engine.build import build

    torch.manual_seed(int(init.seed))  # the same initial weights as the runs (seeded before building)
    backbone = build("backbone", init.backbone)
    dataset = build("data", init.data, exclude=("loader",), input_size=backbone.input_size)
    head = build("head", init.head, embedding_size=backbone.embedding_size, num_classes=dataset.num_classes)
    start = [p.detach().clone() for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]

    def moved(run):
        ck = load_checkpoint(str(run / "checkpoints" / "step-00000001.pt"))
        after = [v for k, v in ck["model"].items() if k in dict(backbone.named_parameters())
                 and dict(backbone.named_parameters())[k].requires_grad] + list(ck["head"].values())
        return torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, start)))

    assert float(moved(clipped)) <= 0.5 * 0.001 * 1.0001
    assert float(moved(free)) > 100 * float(moved(clipped))


def test_mixed_precision_on_cpu_is_refused_with_the_option_named(tmp_path):
    from frtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.precision=bf16: mixed precision is for CUDA"):
        _run(tmp_path, "bf16", ["eval=none", "trainer.max_steps=1", "trainer.precision=bf16", "trainer.device=cpu"])


@pytest.mark.parametrize("head", ["npt", "unpg", "intraloss", "ie", "marginloss", "adaface", "curricularface",
                                  "elasticface_arc_plus", "elasticface_cos"])
@pytest.mark.slow  # a training grid over the heads
def test_each_paper_head_trains_verification_accuracy_well_above_chance(tmp_path, head):
    out, results = _run(tmp_path, head, [f"head={head}", "trainer.max_steps=200", "eval.every_steps=1000"])
    losses = [e["loss"] for e in json.loads((out / "results.json").read_text())["history"]["loss"]]
    assert losses[-1] < losses[0], losses
    # chance is 50%; the same run reaches 71-83% depending on the head (measured), arcface 78%
    assert results["synthetic"]["accuracy"] >= 0.65, results["synthetic"]


@pytest.mark.parametrize("option", ["trainer.channels_last=true", "trainer.compile=true"])
def test_channels_last_and_compile_train_like_the_plain_model(tmp_path, monkeypatch, option):
    """Speed options change the memory layout or fuse kernels, not the arithmetic: same losses and weights."""
    common = ["eval=none", "trainer.max_steps=3", "data.loader.batch_size=16", "trainer.log_every=1"]
    plain, _ = _run(tmp_path, "plain", common)
    seen = []  # what the training forward received: compiled or not, input layout
    real_compile = torch.compile

    def spy_compile(model, **kwargs):
        seen.append("compiled")
        return real_compile(model, **kwargs)

    def spy_input(module, args):
        seen.append("channels_last" if args[0].is_contiguous(memory_format=torch.channels_last) else "nchw")

    monkeypatch.setattr(torch, "compile", spy_compile)
    from frtrain.engine import trainer as trainer_module
    real_wrap = trainer_module.D.wrap_ddp
    monkeypatch.setattr(trainer_module.D, "wrap_ddp",
                        lambda m, d: (m.register_forward_pre_hook(spy_input), real_wrap(m, d))[1])
    fast, _ = _run(tmp_path, "fast", common + [option])
    assert ("compiled" in seen) == (option == "trainer.compile=true")  # the option took effect
    assert ("channels_last" in seen) == (option == "trainer.channels_last=true"), seen
    loss = lambda run: [e["loss"] for e in json.loads((run / "results.json").read_text())["history"]["loss"]]  # noqa: E731
    assert loss(fast) == pytest.approx(loss(plain), rel=1e-4)
    a = load_checkpoint(str(plain / "checkpoints" / "step-00000003.pt"))
    b = load_checkpoint(str(fast / "checkpoints" / "step-00000003.pt"))
    assert all(v.is_contiguous() for v in b["model"].values())  # saved in the standard layout
    # other convolution kernels sum in another order: the weights agree to float rounding, amplified by 3 steps
    flat = lambda m: torch.cat([v.flatten() for v in m.values() if v.is_floating_point()])  # noqa: E731
    wa, wb = flat(a["model"]), flat(b["model"])
    assert float((wa - wb).norm() / wa.norm()) < 2e-4


def test_resume_with_another_global_batch_continues_at_the_same_image_of_the_epoch(tmp_path, caplog):
    common = ["eval=none", "trainer.checkpoint_every=6", "trainer.log_every=1"]
    first, _ = _run(tmp_path, "b16", common + ["trainer.max_steps=6", "data.loader.batch_size=16"])
    step6 = first / "checkpoints" / "step-00000006.pt"
    assert load_checkpoint(str(step6))["train_state"]["batch_in_epoch"] == 6  # 96 images of the epoch's order
    with caplog.at_level("WARNING", logger="frtrain"):
        again, _ = _run(tmp_path, "b32", common + ["trainer.max_steps=6", "data.loader.batch_size=32",
                                                   f"trainer.resume={step6}"])
    state = load_checkpoint(str(again / "checkpoints" / "step-00000006.pt"))["train_state"]
    assert state["batch_in_epoch"] == 3 and state["images_per_batch"] == 32  # 96 images = 3 batches of 32
    assert "saved with 16 images per batch over all ranks, this run has 32" in caplog.text


def test_sphereface_anneals_once_per_optimizer_step_under_accumulation(tmp_path):
    out, _ = _run(tmp_path, "sphere", ["eval=none", "head=sphereface", "trainer.max_steps=4", "trainer.accumulate=3",
                                       "data.loader.batch_size=16"])
    head = load_checkpoint(str(out / "checkpoints" / "step-00000004.pt"))["head"]
    assert int(head["iteration"]) == 4  # 12 micro-batches, 4 optimiser steps


def test_evaluation_writes_the_roc_curve_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = _run(tmp_path, "roc", ["trainer.max_steps=2", "eval.every_steps=0"] + TINY_EVAL)
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    assert "val/synthetic/roc" in events.Tags()["images"]


def test_final_only_benchmarks_are_scored_once_after_the_last_step(tmp_path):
    extra = ["trainer.max_steps=4", "eval.every_steps=2", "+eval.benchmarks.late=${eval.benchmarks.synthetic}",
             "eval.final_only=[late]"]
    out, results = _run(tmp_path, "final_only", extra)
    history = json.loads((out / "results.json").read_text())["history"]["eval"]
    assert [(e["step"], e["benchmark"]) for e in history] == [(2, "synthetic"), (4, "synthetic"), (4, "late")]
    assert set(results) == {"synthetic", "late"}
    assert results["late"]["accuracy"] == results["synthetic"]["accuracy"]  # the same pairs, the same model


def test_final_only_must_name_a_benchmark_of_the_run(tmp_path):
    with pytest.raises(ConfigError, match=r"eval.final_only: ijbc is not a benchmark of this run \(benchmarks: synthetic\)"):
        train(compose_train(TINY_DATA + TINY_EVAL + ["eval.final_only=[ijbc]", f"output_dir={tmp_path}"]))
