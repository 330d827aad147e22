"""``torchrun --nproc_per_node=2 -m frtrain.train`` on CPU (gloo): it learns, resumes bit-identically (also after a
SIGKILL), and its checkpoints resume on one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.checkpoint import load_checkpoint
from frtrain.train import train

from conftest import TINY_DATA, TINY_EVAL, compose_train

pytestmark = pytest.mark.slow  # torchrun jobs of 2 ranks

#: 2 ranks x 16 images = the global batch of 32 of the one-process tests
PER_RANK = ["data.loader.batch_size=16", "trainer.threads=1"]


def torchrun(tmp_path, name: str, extra: list[str], nproc: int = 2):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "frtrain.train", *TINY_DATA, *PER_RANK, f"output_dir={out}", *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return out, proc


def _checkpoint(run, step: int) -> dict:
    return load_checkpoint(str(run / "checkpoints" / f"step-{step:08d}.pt"))


def _assert_same_weights(a: dict, b: dict, exact: bool = True) -> None:
    for part in ("model", "head"):
        assert list(a[part]) == list(b[part])
        for key in a[part]:
            if exact:
                assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
            else:
                torch.testing.assert_close(a[part][key], b[part][key], msg=f"{part}.{key}")
    for i, entry in a["optimizer"]["state"].items():
        assert torch.equal(entry["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"]), f"momentum {i}"


def test_two_processes_train_and_verification_accuracy_rises(tmp_path):
    out, proc = torchrun(tmp_path, "ddp", TINY_EVAL + ["trainer.max_steps=200", "eval.every_steps=100",
                                                       "eval.at_start=true"])
    summary = json.loads((out / "results.json").read_text())
    acc = {e["step"]: e["accuracy"] for e in summary["history"]["eval"]}
    losses = [e["loss"] for e in summary["history"]["loss"]]
    assert acc[0] < 0.65 and acc[200] >= 0.70 and acc[200] - acc[0] >= 0.12, acc
    assert losses[-1] < 0.75 * losses[0], losses
    assert proc.stdout.count("verification on synthetic") == 1  # rank 0 alone reports
    ckpt = _checkpoint(out, 200)
    assert ckpt["meta"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["head"]["weight"].shape == (60, 128)  # both ranks' 30 class vectors, whole


RESUME = ["eval=none", "trainer.max_steps=40", "trainer.checkpoint_every=4", "trainer.keep_last=20",
          "sched.warmup_epochs=0.05", "backbone.dropout=0.2", "trainer.log_every=1", "head.sample_rate=0.5"]


def torchrun_killed(tmp_path, name: str, extra: list[str], after_step: int):
    """Start a 2-rank run and SIGKILL the launcher and both ranks once checkpoint ``after_step`` exists."""
    out = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "frtrain.train", *TINY_DATA, *PER_RANK, f"output_dir={out}", *extra]
    target = out / "checkpoints" / f"step-{after_step:08d}.pt"
    with open(tmp_path / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert target.exists(), (tmp_path / f"{name}.log").read_text()[-3000:]
    return out


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """2-rank runs of 40 steps (Partial FC sampling, dropout): uninterrupted; resumed from its step 8; and
    killed (SIGKILL, all processes) after its step-8 checkpoint, then restarted with ``trainer.resume=auto``."""
    tmp = tmp_path_factory.mktemp("resume2")
    full, _ = torchrun(tmp, "full", RESUME)
    resumed, _ = torchrun(tmp, "resumed", RESUME + [f"trainer.resume={full / 'checkpoints' / 'step-00000008.pt'}"])
    killed = torchrun_killed(tmp, "killed", RESUME, after_step=8)
    interrupted_at = ckpt_io.step_checkpoints(str(killed / "checkpoints"))[-1][0]
    torchrun(tmp, "killed", RESUME + ["trainer.resume=auto"])
    return full, resumed, killed, interrupted_at


def _losses(run) -> list[float]:
    return [e["loss"] for e in json.loads((run / "results.json").read_text())["history"]["loss"]]


def test_two_process_resume_is_bit_identical_to_the_uninterrupted_run(two_rank_runs):
    full, resumed, _, _ = two_rank_runs
    a, b = _checkpoint(full, 40), _checkpoint(resumed, 40)
    _assert_same_weights(a, b)
    assert a["train_state"] == b["train_state"]
    for ra, rb in zip(a["rng"], b["rng"]):
        assert torch.equal(ra["torch"], rb["torch"])
    assert _losses(full)[8:] == _losses(resumed)


def test_a_two_process_run_killed_mid_training_resumes_to_the_same_weights(two_rank_runs):
    full, _, killed, interrupted_at = two_rank_runs
    assert 8 <= interrupted_at < 40, "the kill came after the run had finished: nothing was tested"
    _assert_same_weights(_checkpoint(full, 40), _checkpoint(killed, 40))


def _one_process(tmp_path, name: str, extra: list[str]):
    out = tmp_path / name
    train(compose_train(TINY_DATA + ["data.loader.batch_size=32", f"output_dir={out}"] + extra))
    return out


def test_a_two_rank_checkpoint_resumes_on_one_process(tmp_path, two_rank_runs):
    full = two_rank_runs[0]
    step8 = full / "checkpoints" / "step-00000008.pt"
    # loaded on one process (all 60 classes) and saved again without a step: the same checkpoint
    same = _one_process(tmp_path, "reload", RESUME + ["trainer.max_steps=8", f"trainer.resume={step8}"])
    _assert_same_weights(load_checkpoint(str(step8)), _checkpoint(same, 8))
    # and it trains on from there: same global batch (32), same samples; BatchNorm now sees 32 images at once
    # instead of 2 x 16, and Partial FC draws other negatives, so the losses are close, not equal
    cont = _one_process(tmp_path, "continued", RESUME + ["trainer.max_steps=14", f"trainer.resume={step8}"])
    assert _checkpoint(cont, 14)["train_state"]["step"] == 14
    two, one = _losses(full)[8:14], _losses(cont)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a - b) < 0.05 * b, (one, two)


FAIL_ON_RANK_1 = '''
import os
from frtrain.engine.trainer import Trainer
from frtrain.errors import DataError
from frtrain.train import main

fit = Trainer.fit
def failing_fit(self):
    if os.environ["RANK"] == "1":
        raise DataError("injected failure on rank 1")
    return fit(self)
Trainer.fit = failing_fit
main()
'''


def test_a_rank_that_fails_stops_the_job_with_its_error_instead_of_hanging(tmp_path):
    """Rank 1 fails before training; rank 0 waits in a collective. The failing rank must leave at once (not wait
    for the others at the shutdown barrier) so that torchrun sees it and stops rank 0."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *TINY_DATA, *PER_RANK, "eval=none", "trainer.max_steps=50", f"output_dir={tmp_path / 'out'}"]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung after rank 1 failed")
    assert proc.returncode != 0
    assert "frtrain-train: error: injected failure on rank 1" in proc.stderr
