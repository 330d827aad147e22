"""The frtrain-train command line: one-line errors for bad input, before any work; deprecated spellings; multirun."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import TINY_DATA, TINY_RUN

TRAIN = [sys.executable, "-m", "frtrain.train"]


def _run(args, tmp_path, timeout=300, cache=None):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    if cache is not None:
        env["FRTRAIN_CACHE"] = str(cache)
    return subprocess.run(TRAIN + args + [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/multi"],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["head=nope"], "frtrain-train: error: head=nope: no such option; (the options of head: adaface, arcface, center,"),
    (["head=arcfce"], "frtrain-train: error: head=arcfce: no such option; did you mean arcface"),
    (["optim.lrr=0.1"], "frtrain-train: error: optim.lrr: no such key; did you mean optim.lr? "
                        "(optim has: lr, momentum, weight_decay)"),
    (["head.marginn=0.4"], "frtrain-train: error: head.marginn: no such key; did you mean head.margin_rad"),
    (["+head.foo=1"], "frtrain-train: error: head: frtrain.heads.ArcFace has no option 'foo'"),
    (["head=cosface", "+head.marginn=0.3"], "frtrain-train: error: head: frtrain.heads.CosFace has no option "
                                            "'marginn' (did you mean 'margin_cos'?"),
    (["trainer.epochs=abc"], "frtrain-train: error: trainer.epochs='abc': expected a number"),
    (["trainer.epochz=3"], "frtrain-train: error: trainer.epochz: no such key; did you mean trainer.epochs"),
    (["trainer.max_steps=-5"], "frtrain-train: error: trainer.max_steps=-5: expected a positive number of steps"),
    (["trainer.max_steps=null", "trainer.epochs=0"], "frtrain-train: error: trainer.epochs=0.0: expected a positive "
                                                     "number of epochs"),
    (["optim.lr=-0.1"], "frtrain-train: error: optim.lr=-0.1: expected a non-negative learning rate"),
    (["head.margin_rad=abc"], "frtrain-train: error: head.margin_rad='abc': expected a number"),
    (["head.margin_rad=-1"], "frtrain-train: error: head.margin_rad=-1 is out of range: expected an angular margin"),
    (["data.loader.batchsize=3"], "frtrain-train: error: data.loader.batchsize: no such key; did you mean "
                                  "data.loader.batch_size"),
    (["experiment=npt_casia"], "frtrain-train: error: experiment=npt_casia: no such option; did you mean npt_casia_r50?"),
    (["eval.flip=bad"], "frtrain-train: error: eval.flip='bad': expected sum, concat or none"),
    (["trainer.resume=/nope.pt"], "frtrain-train: error: trainer.resume=/nope.pt: no such file or directory"),
    (["data=folder"], "frtrain-train: error: data.root is not set: give it on the command line"),
    (["data=folder", "data.root=/does/not/exist"], "frtrain-train: error: data.root=/does/not/exist: no such directory"),
])
def test_a_config_mistake_is_one_line_naming_the_key_before_any_data_is_made(tmp_path, args, expected):
    cache = tmp_path / "fresh-cache"  # empty: generating the synthetic set would take minutes
    started = time.perf_counter()
    r = _run(["trainer.max_steps=1", "eval=none", "trainer.progress=false"] + args, tmp_path, cache=cache)
    elapsed = time.perf_counter() - started
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [next(line for line in r.stderr.splitlines() if line.startswith("frtrain-train: error:"))]
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "HYDRA_FULL_ERROR" not in r.stderr
    assert not (cache / "synthetic").exists()  # nothing was generated
    assert elapsed < 20, elapsed  # ~3 s here, most of it importing torch; generation alone takes minutes


def test_a_bad_head_option_on_a_fresh_cache_fails_in_under_5_seconds(tmp_path):
    """The issue's own command: frtrain-train head=cosface +head.marginn=0.3 on an empty cache."""
    started = time.perf_counter()
    r = _run(["head=cosface", "+head.marginn=0.3"], tmp_path, cache=tmp_path / "empty-cache")
    elapsed = time.perf_counter() - started
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    assert not (tmp_path / "empty-cache" / "synthetic").exists()


def test_the_error_is_printed_once_and_the_unstarted_run_leaves_no_directory(tmp_path):
    r = _run(["data=folder", "data.root=/does/not/exist", "trainer.progress=false"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("data.root=/does/not/exist: no such directory") == 1
    assert not (tmp_path / "run").exists()  # Hydra made it; the run never took a step


def test_deprecated_spellings_still_run_with_a_one_line_warning(tmp_path):
    r = _run(["+experiment=npt_casia_r50", "paths.datasets=/nowhere", "data.batch_size=8", "--cfg", "job"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "frtrain-train: warning: data.batch_size is now data.loader.batch_size" in r.stderr
    assert "loader:\n    batch_size: 8" in r.stdout and "_target_: frtrain.heads.NPTLoss" in r.stdout


@pytest.mark.slow  # a Hydra sweep of training runs
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


def test_a_bad_value_in_a_sweep_is_named_before_the_first_run(tmp_path):
    r = _run(["-m", "head=arcface,cosfce", "trainer.max_steps=3"] + TINY_DATA, tmp_path)
    assert r.returncode == 2 and "head=cosfce: no such option; did you mean cosface" in r.stderr
    assert not (tmp_path / "multi").exists()


def test_output_dir_holds_the_whole_run(tmp_path):
    out = tmp_path / "mine"
    r = subprocess.run(TRAIN + TINY_DATA + ["trainer.max_steps=2", "eval=none", f"output_dir={out}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "train.log").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert (out / "checkpoints").is_dir() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module, program, mentions, absent", [
    ("frtrain.train", "frtrain-train", ["Config groups of frtrain-train", "  head ", "  trainer "], []),
    ("frtrain.evaluate", "frtrain-eval", ["  benchmarks ", "  input ", "model=???  (required)", "frtrain-eval diff A B"], ["  head ", "  optim "]),
    ("frtrain.export", "frtrain-export", ["format=onnx", "model=???"], ["  head "]),
    ("frtrain.verify", "frtrain-verify", ["images=???", "allow_few_impostors=False", "  input "], ["  head "]),
    ("frtrain.compare", "frtrain-compare", ["frtrain-compare report", "frtrain-train --help"], []),
    ("frtrain.interop", "frtrain-import-insightface", ["backbone=iresnet50 out=r50.pt num_classes=93431"], []),
    ("frtrain.audit", "frtrain-audit", ["train=???  (required)", "class_vectors=mean", "  benchmarks "], ["  head "]),
    ("frtrain.analyze", "frtrain-analyze", ["model=???  (required)", "dataset=None", "images_per_class=20"], ["  head "]),
    ("frtrain.plan", "frtrain-plan", ["trainer.plan_classes=2000000", "  head ", "  trainer "], []),
])
def test_every_command_answers_help_with_its_own_usage_and_options(capsys, module, program, mentions, absent):
    """Before: frtrain-compare --help was a Hydra lexer error, frtrain-eval --help listed the training groups."""
    import importlib

    importlib.import_module(module).main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"``{program}``") and "Powered by Hydra" not in out and "powered by Hydra" not in out
    for text in mentions:
        assert text in out, text
    for text in absent:
        assert text not in out, text


def test_import_insightface_still_reads_the_old_flag_spelling(tmp_path, capsys):
    from frtrain.interop import parse

    with pytest.warns(FutureWarning, match="--backbone iresnet50 is now backbone=iresnet50"):
        directory, options, _ = parse([str(tmp_path), "--backbone", "iresnet50", "--out=x.pt", "--num-classes", "7"])
    assert directory == str(tmp_path) and options == {"backbone": "iresnet50", "out": "x.pt", "num_classes": "7"}
    assert parse([str(tmp_path), "backbone=iresnet50", "out=x.pt", "backbone.embedding_size=256"])[2] == \
        ["backbone.embedding_size=256"]
    from frtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="outt: no such option of frtrain-import-insightface"):
        parse([str(tmp_path), "backbone=iresnet50", "outt=x.pt"])


@pytest.mark.slow  # an export process
def test_export_keeps_the_exporter_s_progress_notes_off_the_console(tmp_path):
    pytest.importorskip("onnxruntime")
    import torch

    from frtrain.backbones import IResNet
    from frtrain.engine import checkpoint as ckpt_io

    model = IResNet(depth=None, layers=[1, 1, 1, 1], width=8, embedding_size=32, input_size=40)
    meta = {"backbone": {"_target_": "frtrain.backbones.IResNet", "depth": None, "layers": [1, 1, 1, 1], "width": 8,
                         "embedding_size": 32, "input_size": 40}, "embedding_size": 32, "input_size": [40, 40],
            "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save({"format": ckpt_io.FORMAT, "version": 1, "meta": meta, "model": model.state_dict()}, tmp_path / "m.pt")
    done = subprocess.run([sys.executable, "-m", "frtrain.export", f"model={tmp_path / 'm.pt'}"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'm.onnx'}"), lines  # before: 18 lines more
