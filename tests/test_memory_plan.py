"""The memory plan (``frtrain-plan``, ``trainer.plan``): each item's arithmetic worked out by hand, the activation
probe on a model whose saved tensors are known, the optimiser-state count, the suggestions, the class count read
without the images, and the refusal of a run that does not fit before any data is generated.

How close the prediction comes to measured peaks is scripts/bench_plan.py's job (docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from frtrain.engine.memory_plan import (CPU_RUNTIME_BYTES, GIB, RunShape, estimate, make_plan,
                                        optimizer_state_per_param, probe_activations)
from frtrain.errors import ConfigError
from frtrain.engine.memory_plan import count_classes
from frtrain.plan import main as plan_main
from frtrain.train import train

from conftest import compose_train

MiB = 2**20


def _shape(**change) -> RunShape:
    base = dict(device_type="cuda", precision="fp32", params=1_000_000, trainable=1_000_000, largest_param=250_000,
                act_per_image=2 * MiB, act_fixed=0.0, largest_saved_per_image=0.5 * MiB, image_hw=(112, 112),
                embedding_size=512, classes=1_000_000, ranks=2, batch=64, accumulate=1, optimizer_state=1.0,
                weight_decay_copy=True, sample_rate=1.0, chunk_size="auto", memory_budget_mb=256.0,
                class_dtype="float32", workers=2, prefetch=2)
    base.update(change)
    return RunShape(**base)


def test_items_and_peak_follow_the_written_out_sums():
    s = _shape()
    items, peak, moment = estimate(s)
    got = {i.name: i.bytes for i in items}
    local, d, n = 500_000, 512, 128  # C / ranks, the embedding, the gathered batch
    assert got["class vectors"] == got["class optimiser state"] == got["class-vector gradient"] == local * d * 4
    assert got["backbone weights"] == got["backbone gradients"] == got["backbone optimiser state"] == 4e6
    assert got["activations"] == 64 * 2 * MiB and got["backward working set"] == 64 * 0.5 * MiB
    assert got["input batch"] == 64 * 3 * 112 * 112 * 5
    assert got["DDP gradient buckets"] == 4e6  # two ranks
    assert got["optimiser step temporaries"] == 4e6 + local * d * 4  # every gradient copied at once on CUDA
    # 128 x 500,000 float32 logits x 5 matrices exceed the 256 MiB budget: chunked, 6 blocks of N x chunk
    chunk = int(256 * MiB / 4 / (6 * 4 * n))
    assert got["head working set"] == 6 * 4 * n * chunk + 2 * 4 * n * d
    persistent = 2 * 4e6 + 2 * local * d * 4  # weights + state (backbone), vectors + state (classes)
    grads = 4e6 + local * d * 4 + 4e6  # backbone, class vectors, DDP buckets
    backward = persistent + 64 * 2 * MiB + 64 * 3 * 112 * 112 * 5 + grads + max(got["head working set"], 64 * 0.5 * MiB)
    step = persistent + grads + 4e6 + local * d * 4
    assert peak == pytest.approx(max(backward, step)) and moment == ("backward pass" if backward >= step else
                                                                     "optimiser step")


def test_half_precision_sharding_partial_fc_and_the_cpu_runtime_change_the_right_items():
    bf16 = {i.name: i.bytes for i in estimate(_shape(precision="bf16", class_dtype="bfloat16"))[0]}
    assert bf16["class vectors"] == bf16["class-vector gradient"] == 500_000 * 512 * 2
    one = {i.name: i.bytes for i in estimate(_shape(ranks=1))[0]}
    assert one["class vectors"] == 1_000_000 * 512 * 4 and "DDP gradient buckets" not in one
    pfc = {i.name: i.bytes for i in estimate(_shape(sample_rate=0.1, chunk_size=0))[0]}
    k = math.ceil(0.1 * 500_000)
    assert pfc["Partial FC rows"] == 2 * k * 512 * 4 and pfc["head working set"] == 5 * 4 * 128 * k
    cpu = {i.name: i.bytes for i in estimate(_shape(device_type="cpu"))[0]}
    assert cpu["CPU runtime"] == CPU_RUNTIME_BYTES
    assert cpu["optimiser step temporaries"] == 500_000 * 512 * 4  # the largest gradient, one tensor at a time


class _Known(nn.Module):
    """Flatten -> Linear(48, 32) -> ReLU -> Linear(32, 8): the forward saves the input (48 floats per image, the
    flattened view of the image's storage) and the ReLU output (32 floats, also the second Linear's input)."""

    input_size = (4, 4)
    embedding_size = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        return self.net(x)


def test_the_activation_probe_counts_each_saved_storage_once_and_leaves_the_weights_out():
    per_image, fixed, largest = probe_activations(_Known(), "fp32")
    assert per_image == (48 + 32) * 4 and fixed == 0 and largest == 48 * 4


def test_optimiser_state_is_counted_by_stepping_the_optimiser():
    assert optimizer_state_per_param(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=5e-4)) == (1.0, True)
    assert optimizer_state_per_param(lambda g: torch.optim.SGD(g, lr=0.1)) == (0.0, False)
    assert optimizer_state_per_param(lambda g: torch.optim.AdamW(g, lr=1e-3)) == (2.0, True)


def test_a_run_that_does_not_fit_gets_the_cheapest_exact_change_first():
    s = _shape(ranks=1, batch=512, chunk_size=0)  # the plain path's 5 float32 512 x 1M matrices: 9.5 GiB
    plan = make_plan(s, 12 * GIB, "trainer.device_memory_gb")
    assert plan.fits is False and plan.suggestions
    overrides, peak = plan.suggestions[0]
    assert peak <= plan.limit and overrides[0] == "head.chunk_size=auto"  # the plain path's logits were the excess
    # the suggested change, applied by hand, gives the same prediction
    change = {"chunk_size": "auto", "memory_budget_mb": 64} if overrides[0].startswith("head.chunk_size") else {}
    for o in overrides:
        key, value = o.split("=")
        if key == "head.class_dtype":
            change["class_dtype"] = value
        elif key == "data.loader.batch_size":
            change["batch"] = int(value)
        elif key == "trainer.accumulate":
            change["accumulate"] = int(value)
        elif key == "head.sample_rate":
            change["sample_rate"] = float(value)
    assert estimate(dataclasses.replace(s, **change))[1] == pytest.approx(peak)
    assert "does NOT fit" in plan.render() and " ".join(overrides) in plan.one_line()
    assert make_plan(s, 1000 * GIB, "x").fits is True and not make_plan(s, 1000 * GIB, "x").suggestions


def test_the_class_count_comes_from_the_datas_index_without_its_images(tmp_path):
    assert count_classes(compose_train(["data.num_identities=37"])) == 37
    assert count_classes(compose_train(["trainer.plan_classes=2000000"])) == 2_000_000
    for name in ("a", "b", ".hidden"):
        (tmp_path / "faces" / name).mkdir(parents=True)
    assert count_classes(compose_train(["data=folder", f"data.root={tmp_path / 'faces'}"])) == 2
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "index.json").write_text(json.dumps(
        {"format": "frtrain-wds/1", "num_classes": 123, "samples": 5, "shards": [{"name": "000000.tar", "samples": 5,
                                                                                   "bytes": 1}], "source": "x"}))
    assert count_classes(compose_train(["data=wds", f"data.root={tmp_path / 'wds'}"])) == 123


def test_frtrain_plan_prints_the_table_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    plan_main(["backbone=iresnet50", "trainer.device=cuda", "trainer.plan_classes=2000000",
               "trainer.device_memory_gb=12", "data.loader.batch_size=128"])
    out = capsys.readouterr().out
    assert "2,000,000 classes" in out and "predicted peak" in out and "does NOT fit" in out
    assert "head.class_dtype=bfloat16" in out
    plan_main(["--json", "trainer.device=cpu"])
    record = json.loads(capsys.readouterr().out)
    assert record["shape"]["classes"] == 200 and record["fits"] is True
    assert list(tmp_path.iterdir()) == []


def test_a_run_predicted_not_to_fit_stops_in_one_line_before_any_data_is_generated(tmp_path):
    cache = tmp_path / "cache"
    cfg = compose_train([f"paths.cache_dir={cache}", f"output_dir={tmp_path / 'run'}", "trainer.plan=true",
                         "trainer.device_memory_gb=0.05"])
    with pytest.raises(ConfigError, match=r"trainer.plan: the run needs about .* GiB per rank .* allows 0.0\d GiB"):
        train(cfg)
    assert not cache.exists()


def test_plan_settings_are_checked():
    from frtrain.config import validate_train

    for bad in ("trainer.plan=maybe", "trainer.device_memory_gb=-1", "trainer.plan_classes=1", "trainer.plan_ranks=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            validate_train(compose_train([bad]))


def test_when_no_single_change_fits_the_exact_changes_are_combined_checkpointing_included():
    s = _shape(ranks=1, classes=2_000_000, chunk_size=0, batch=128, act_per_image=60 * MiB,
               checkpointed_activations=(6 * MiB, 0.0, 0.5 * MiB))
    plan = make_plan(s, 12 * GIB, "x")
    assert plan.fits is False and len(plan.suggestions) == 1
    overrides, peak = plan.suggestions[0]
    assert overrides == ["head.chunk_size=auto", "head.memory_budget_mb=64", "head.class_dtype=bfloat16",
                         "backbone.checkpointing=true"]
    combined = dataclasses.replace(s, chunk_size="auto", memory_budget_mb=64, class_dtype="bfloat16",
                                   checkpointing=True, act_per_image=6 * MiB, largest_saved_per_image=0.5 * MiB)
    assert estimate(combined)[1] == pytest.approx(peak) and peak <= plan.limit
    without = dataclasses.replace(combined, checkpointing=False, act_per_image=60 * MiB)
    assert estimate(without)[1] > plan.limit  # checkpointing was needed
