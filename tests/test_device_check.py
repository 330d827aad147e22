"""scripts/device_check.sh, the prepared GPU check, runs its every step at tiny sizes on CPU (--dry-run) and
writes its outputs to $OUT, so that the one run on a GPU machine does not fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_check.sh"


def test_unknown_option_is_refused():
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option '--gpu'" in done.stderr


@pytest.mark.slow  # runs every benchmark script once
@pytest.mark.timeout(900)
def test_dry_run_writes_every_result(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, FRTRAIN_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path)
    log = (out / "device_check.log").read_text() if (out / "device_check.log").exists() else done.stdout
    assert done.returncode == 0, log[-4000:] + done.stderr[-2000:]
    for step in ("install", "tests/test_cuda.py", "bench_heads (cpu)", "bench_train (cpu)", "bench_eval (cpu)", "bench_plan (cpu)",
                 "done (status 0)"):
        assert f"=== {step}" in log, step
    names = {p.name for p in out.iterdir()}
    assert {"device_check.log", "nvidia-smi.txt", "tests.txt", "bench_heads.json", "bench_train.json",
            "bench_eval.json", "bench_plan_cuda.json", "benchmarks.md"} <= names
    assert len(names) <= 8  # the device tool brings back at most 8 files

    heads = json.loads((out / "bench_heads.json").read_text())["rows"]
    assert {(r["head"], r["path"], r["class_dtype"]) for r in heads} == {
        (h, p, d) for h in ("arcface", "unpg", "npt") for p in ("plain", "chunked") for d in ("float32", "bfloat16")}
    train = json.loads((out / "bench_train.json").read_text())["rows"]
    assert [r["variant"] for r in train] == ["fp32", "bf16"] and all(r["images_per_s"] > 0 for r in train)
    assert json.loads((out / "bench_eval.json").read_text())["rows"]
    md = (out / "benchmarks.md").read_text()
    plan = json.loads((out / "bench_plan_cuda.json").read_text())["rows"]
    assert len(plan) == 1 and plan[0]["predicted_bytes"] > 0 and plan[0]["measured_bytes"] > 0
    for section in ("bench_heads", "bench_train", "bench_eval", "bench_plan"):
        assert f"<!-- {section}:begin -->" in md
    # CUDA parts skip on a machine without a GPU; the repository's docs are not touched
    assert "skipped" in (out / "tests.txt").read_text() or "passed" in (out / "tests.txt").read_text()
