"""The frtrain-train command line: one-line errors for bad input, Hydra multirun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import TINY_DATA, TINY_RUN

TRAIN = [sys.executable, "-m", "frtrain.train"]


def _run(args, tmp_path, timeout=300):
    env = dict(os.environ, HYDRA_FULL_ERROR="")
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(TRAIN + args + [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/multi"],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.parametrize("args, expected, code", [
    (["head=nope"], "Could not find 'head/nope'", 1),
    (["optim.lrr=0.1"], "Key 'lrr' is not in struct", 1),
    (["+head.foo=1"], "frtrain-train: error: head: frtrain.heads.ArcFace has no option 'foo'", 2),
    (["data=folder", "data.root=/does/not/exist"], "frtrain-train: error: data.root /does/not/exist: no such directory", 2),
    (["data=folder"], "frtrain-train: error: data.root is not set: give it on the command line", 2),
    (["head.margin=-1"], "frtrain-train: error: head.margin=-1 is out of range", 2),
    (["trainer.resume=/nope.pt"], "frtrain-train: error: trainer.resume=/nope.pt: no such file or directory", 2),
])
def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, args, expected, code):
    tiny = TINY_DATA if not any(a.startswith("data=") for a in args) else ["trainer.progress=false"]
    r = _run(args + ["trainer.max_steps=1", "eval=none"] + tiny, tmp_path)
    assert r.returncode == code, r.stderr[-2000:]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_multirun_trains_one_run_per_head(tmp_path):
    r = _run(["-m", "head=arcface,cosface", "trainer.max_steps=3", "eval.every_steps=0"] + TINY_RUN, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "multi").iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    for run, head in zip(runs, ["arcface", "cosface"]):
        assert (tmp_path / "multi" / run / "results.json").is_file()
        assert f"head={head}" in (tmp_path / "multi" / run / ".hydra" / "overrides.yaml").read_text()
        assert f"frtrain.heads.{'ArcFace' if head == 'arcface' else 'CosFace'}" in (tmp_path / "multi" / run / "config.yaml").read_text()
    assert r.stdout.count("verification on synthetic") == 2
