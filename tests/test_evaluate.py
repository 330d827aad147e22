"""frtrain-eval: a checkpoint scores exactly as it did at the end of training; reports; one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from frtrain.errors import CheckpointError
from frtrain.evaluate import evaluate
from frtrain.train import train

from conftest import TINY_DATA, TINY_EVAL, compose_eval, compose_train


def _compose_eval(overrides):
    return compose_eval(overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_train(TINY_DATA + TINY_EVAL + [f"output_dir={out}", "trainer.max_steps=30", "eval.every_steps=0"]))
    return out


def test_a_run_directory_scores_as_at_the_end_of_training_and_writes_reports(trained, tmp_path):
    results = evaluate(_compose_eval([f"model={trained}", f"output_dir={tmp_path}", "eval=synthetic",
                                      "benchmarks=[]"] + TINY_EVAL))
    at_training = json.loads((trained / "results.json").read_text())["final"]["synthetic"]
    assert results["synthetic"].accuracy == pytest.approx(at_training["accuracy"], abs=1e-12)
    assert results["synthetic"].auc == pytest.approx(at_training["auc"], abs=1e-12)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"].endswith("checkpoints/best.pt")
    roc = report["results"]["synthetic"]["roc"]
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert "| synthetic | 1200 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "roc_synthetic.png").stat().st_size > 1000


def test_not_a_frtrain_checkpoint_is_refused_naming_the_file(tmp_path):
    bare = tmp_path / "backbone.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bare)
    with pytest.raises(CheckpointError, match=r"backbone.pth: a plain state dict .*say which network it is with backbone=<name>"):
        evaluate(_compose_eval([f"model={bare}", f"output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError, match=r"empty: a directory with no checkpoints/best.pt"):
        (tmp_path / "empty").mkdir()
        evaluate(_compose_eval([f"model={tmp_path / 'empty'}", f"output_dir={tmp_path}"]))


def test_the_command_line_prints_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "frtrain.evaluate", f"model={tmp_path}/nope.pt",
                        f"hydra.run.dir={tmp_path}/eval"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f"frtrain-eval: error: {tmp_path}/nope.pt: no such checkpoint file" in r.stderr
    assert "Traceback" not in r.stderr


def test_no_benchmarks_is_a_config_error(trained, tmp_path):
    from frtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no benchmarks to score"):
        evaluate(_compose_eval([f"model={trained}", f"output_dir={tmp_path}", "eval=none", "benchmarks=[]"]))


@pytest.mark.parametrize("flip", ["none", "sum", "concat"])
def test_embeddings_with_each_flip_rule_equal_the_model_applied_by_hand(flip):
    from frtrain.evaluation.embed import embed_batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 5, 4))
    images = torch.randint(0, 256, (7, 3, 6, 5), dtype=torch.uint8)
    emb, xnorm = embed_batches(model, [images[:4], images[4:]], (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), flip,
                               forward_batch=3)
    x = (images.double() / 255 - 0.5) / 0.5
    with torch.no_grad():
        plain, mirrored = model.double()(x), model(torch.flip(x, dims=[3]))
    expected = {"none": plain, "sum": plain + mirrored, "concat": torch.cat([plain, mirrored], 1)}[flip]
    assert emb.shape == tuple(expected.shape)
    assert torch.allclose(torch.from_numpy(emb).double(), expected, atol=1e-5)


def test_a_runs_results_and_an_eval_report_of_its_checkpoint_differ_in_no_setting_that_decides_a_number(trained,
                                                                                                         tmp_path):
    from frtrain.evaluate import diff_main

    evaluate(_compose_eval([f"model={trained}", f"output_dir={tmp_path}", "eval=synthetic", "benchmarks=[]"] + TINY_EVAL))
    prov = json.loads((trained / "results.json").read_text())["provenance"]
    assert prov["settings"]["eval.flip"] == "sum" and prov["model"]["input_size"] == [40, 40]
    assert prov["settings"]["eval.benchmarks.synthetic.num_pairs"] == 1200
    assert diff_main([str(trained), str(tmp_path), f"out={tmp_path / 'diff.md'}"]) == 0
    text = (tmp_path / "diff.md").read_text()
    settings = text.split("## Numbers")[0].split("## Settings that differ")[1]
    assert [line.split(" | ")[0] for line in settings.splitlines() if line.startswith("| model")] == ["| model.sha256"]
    assert "eval." not in settings and "benchmarks." not in settings
    assert "| synthetic |" in text and "| +0.00 |" in text
    assert "## Provenance" in (tmp_path / "report.md").read_text()
