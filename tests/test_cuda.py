"""CUDA-only behaviour: mixed precision, channels_last and torch.compile train like fp32. Skipped without a GPU
(this project's CPU machines); run them where ``torch.cuda.is_available()``."""

from __future__ import annotations

import json

import pytest
import torch

from frtrain.train import train

from conftest import TINY_DATA, compose_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

COMMON = ["eval=none", "trainer.max_steps=60", "data.loader.batch_size=32", "trainer.log_every=1", "trainer.device=cuda"]


def _losses(tmp_path, name, extra):
    out = tmp_path / name
    train(compose_train(TINY_DATA + COMMON + [f"output_dir={out}"] + extra))
    return [e["loss"] for e in json.loads((out / "results.json").read_text())["history"]["loss"]]


@pytest.mark.parametrize("options", [
    ["trainer.precision=bf16"],
    ["trainer.precision=fp16"],
    ["trainer.precision=bf16", "trainer.channels_last=true"],
    ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=true"],
])
def test_mixed_precision_and_speed_options_follow_the_fp32_loss_curve(tmp_path, options):
    fp32 = _losses(tmp_path, "fp32", ["trainer.precision=fp32"])
    fast = _losses(tmp_path, "fast", options)
    assert fast[-1] < 0.75 * fast[0], fast  # it learns
    # rounding differs from step to step, so curves drift apart slowly: compare their means over windows
    for lo in (0, 20, 40):
        a, b = sum(fp32[lo:lo + 20]) / 20, sum(fast[lo:lo + 20]) / 20
        assert abs(a - b) < 0.1 * a, (lo, a, b)
