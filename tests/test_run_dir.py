"""Runs as a newcomer meets them: one run per directory, no empty directory after a config mistake, Ctrl-C that
saves and says how to resume, checkpoints by wall time, loss lines in train.log, a stray WORLD_SIZE, and every
command line the README shows composing exactly as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frtrain.config import check_command_line, validate_train
from frtrain.engine.run_dir import LOCK_NAME, RunDirectoryBusy, RunLock, remove_unstarted, untouched
from frtrain.errors import ConfigError

from conftest import ROOT, TINY_DATA, compose_train

TRAIN = [sys.executable, "-m", "frtrain.train"]


def _train(args, cwd, timeout=300, **kwargs):
    return subprocess.run(TRAIN + args, capture_output=True, text=True, timeout=timeout, cwd=cwd, **kwargs)


# -- one run per directory -----------------------------------------------------------------------------------
def test_a_second_run_in_a_held_directory_is_refused_in_one_line_and_the_first_keeps_its_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from frtrain.engine.run_dir import RunLock
with RunLock({str(run)!r}):
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "step-00000005.pt").write_bytes(b"the first run's")
        done = _train(TINY_DATA + ["eval=none", f"output_dir={run}"], tmp_path)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{run} is in use by another frtrain-train run (pid {holder.pid}" in lines[0]
        assert (run / "checkpoints" / "step-00000005.pt").read_bytes() == b"the first run's"
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file stays, the lock does not; the next run takes it over and says so
    record = json.loads((run / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid
    lock = RunLock(str(run))
    lock.acquire()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirectoryBusy):  # held again: another taker is refused
        RunLock(str(run)).acquire()
    lock.release()
    assert not (run / LOCK_NAME).exists()


def test_a_run_that_stops_before_its_first_step_leaves_no_directory(tmp_path):
    run = tmp_path / "runs" / "2026-12-06" / "10-00-00"
    done = _train(TINY_DATA + ["trainer.precision=fp16", f"hydra.run.dir={run}"], tmp_path)
    assert done.returncode == 2 and "trainer.precision=fp16" in done.stderr
    assert not run.exists() and not run.parent.exists()  # the date folder too, when empty
    assert (tmp_path / "runs").exists()


def test_an_unstarted_run_directory_is_told_from_one_with_work_in_it(tmp_path):
    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / "train.log").write_text("header")
    assert untouched(str(tmp_path / "a"))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    (tmp_path / "b" / "checkpoints" / "step-00000001.pt").write_bytes(b"x")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("the user's")
    for name in ("b", "c"):
        assert not untouched(str(tmp_path / name))
        remove_unstarted(str(tmp_path / name))
        assert (tmp_path / name).exists()


# -- Ctrl-C, wall-clock checkpoints, the log file ------------------------------------------------------------
INTERRUPTIBLE = TINY_DATA + ["eval=none", "trainer.max_steps=40", "trainer.log_every=1", "data.loader.batch_size=16",
                             "sched.warmup_epochs=0.05", "head.sample_rate=0.5", "backbone.dropout=0.2"]


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "step-00000040.pt", weights_only=True)["model"]


@pytest.mark.slow  # three training processes
def test_ctrl_c_saves_says_how_to_resume_and_the_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    full = tmp_path / "full"
    assert _train(INTERRUPTIBLE + [f"output_dir={full}"], tmp_path).returncode == 0
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(TRAIN + INTERRUPTIBLE + [f"output_dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = run / "train.log"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (log.is_file() and "step 8/40" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    m = re.fullmatch(r"frtrain-train: interrupted: stopped at step (\d+) of 40; saved \S+step-0*(\d+)\.pt; resume "
                     rf"with trainer.resume=auto hydra.run.dir={re.escape(str(run))} \(and the same other options\)",
                     lines[-1])
    assert m and m.group(1) == m.group(2) and 8 <= int(m.group(1)) < 40, err
    assert "Traceback" not in err
    resumed = _train(INTERRUPTIBLE + ["trainer.resume=auto", f"hydra.run.dir={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(full), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "the interrupted and resumed run differs from the full one"
    text = log.read_text()
    assert len(re.findall(r"step \d+/40  epoch \d+  loss [\d.]+  lr [\d.e-]+  \d+ images/s", text)) >= 40


def test_a_checkpoint_is_written_when_the_last_is_older_than_checkpoint_minutes(tmp_path):
    from frtrain.train import build_trainer

    cfg = compose_train(TINY_DATA + ["eval=none", "trainer.max_steps=3", "trainer.checkpoint_minutes=10",
                                     f"output_dir={tmp_path}"])
    trainer = build_trainer(cfg, str(tmp_path))
    assert not trainer.checkpointer.due(1)
    trainer.checkpointer.last_save -= 601  # ten minutes and a second ago
    assert trainer.checkpointer.due(1)
    trainer.checkpointer.minutes = 0
    assert not trainer.checkpointer.due(1)
    trainer.close()


# -- the environment and the config, checked before any work --------------------------------------------------
@pytest.mark.slow  # waits for a rendezvous to time out
def test_a_stray_world_size_says_what_it_waits_for_and_gives_up_within_the_timeout(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2")
    done = _train(TINY_DATA + ["eval=none"], tmp_path, env=env, timeout=120)
    assert done.returncode == 2 and "WORLD_SIZE=2 is set in the environment but RANK, MASTER_ADDR, MASTER_PORT" \
        in done.stderr.strip().splitlines()[-1]
    env.update(RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29617")
    started = time.monotonic()
    done = _train(TINY_DATA + ["eval=none", "trainer.dist_timeout=3"], tmp_path, env=env, timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 2
    assert "joining the process group as rank 0 of WORLD_SIZE=2 at 127.0.0.1:29617" in done.stdout + done.stderr
    assert "could not join the process group" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("overrides, message", [
    (["+trainer.bogus=1"], "trainer.bogus: no such key"),
    (["+data.loader.bacth_size=3"], "data.loader.bacth_size: no such key; did you mean batch_size?"),
    (["trainer.precision=fp16"], "trainer.precision=fp16: mixed precision is for CUDA"),
    (["trainer.device=cuda"], "trainer.device=cuda: CUDA is not available"),
    (["sched.warmup_epochs=100", "trainer.epochs=1"], "sched.warmup_epochs=100: the warm-up is as long as the run"),
    (["experiment=npt_casia_r50", "paths.datasets=/nonexistent"],
     "set paths.datasets=<the directory that holds casia-webface/>"),
])
def test_config_mistakes_stop_before_any_data_is_made(overrides, message):
    if overrides == ["trainer.device=cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_train(compose_train(overrides))


def _readme_command_lines() -> list[tuple[str, list[str]]]:
    """(command, arguments) of every frtrain-train / frtrain-eval / torchrun line in the README's code blocks."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for line, after in zip(lines, lines[1:] + [""]):
            if ": error:" in after:  # a mistake shown with its message
                continue
            line = line.split("  #")[0].strip()
            if not any(c in line for c in ("frtrain-train", "frtrain-eval", "frtrain.train", "frtrain-analyze",
                                           "frtrain-audit")):
                continue
            words = shlex.split(line)
            configs = {"frtrain-train": "train", "frtrain-eval": "evaluate", "frtrain-analyze": "analyze",
                       "frtrain-audit": "audit"}
            for i, w in enumerate(words):
                name = os.path.basename(w)
                if name in configs or (w == "frtrain.train" and words[i - 1] == "-m"):
                    args = [a for a in words[i + 1:] if a != "..."]
                    if args and args[0] == "diff":  # frtrain-eval diff: not a Hydra command line (tested apart)
                        break
                    if name == "frtrain-analyze":  # data=<path> reads as dataset=<path>
                        args = ["dataset=" + a[5:] if a.startswith("data=") else a for a in args]
                    found.append((configs.get(name, "train"), args))
                    break
    return found


README_LINES = _readme_command_lines()


def test_the_readme_shows_the_shared_head_options_and_other_command_lines():
    assert len(README_LINES) >= 15
    assert any("head.chunk_size=0" in " ".join(args) for _, args in README_LINES) or \
        "head.chunk_size=0" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("config_name, args", README_LINES, ids=[" ".join(a)[:60] for _, a in README_LINES])
def test_every_readme_command_line_composes_as_written(config_name, args):
    check_command_line(config_name, args)


@pytest.mark.parametrize("option", ["head.chunk_size=0", "head.memory_budget_mb=64", "head.class_dtype=bfloat16",
                                    "head.sample_rate=0.5"])
@pytest.mark.parametrize("head", ["arcface", "npt", "unpg", "center", "softmax", "magface", "adaface"])
def test_the_shared_head_options_work_on_every_head_as_the_readme_writes_them(head, option):
    check_command_line("train", [f"head={head}", option])
    validate_train(compose_train([f"head={head}", option]))
