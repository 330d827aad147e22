"""Thresholds users can deploy: the report states them, export records them, frtrain-verify applies them with the
evaluator's own score; scripts/align.py aligns raw photos from landmark files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from frtrain.config import compose
from frtrain.data.synthetic import draw_image
from frtrain.evaluation.align import ARCFACE_TEMPLATE
from frtrain.evaluation.onnx_model import OnnxEmbedder

from conftest import ROOT, TINY_DATA, TINY_EVAL, compose_eval, compose_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from frtrain.evaluate import evaluate
    from frtrain.train import train

    out = tmp_path_factory.mktemp("run")
    train(compose_train(TINY_DATA + TINY_EVAL + [f"output_dir={out}", "trainer.max_steps=20", "eval.every_steps=0"]))
    report = out / "eval"
    evaluate(compose_eval([f"model={out}", f"output_dir={report}", "eval=synthetic", "benchmarks=[]"] + TINY_EVAL))
    return out, report


def test_the_report_states_the_thresholds_with_the_impostors_behind_them(trained):
    _, report = trained
    results = json.loads((report / "report.json").read_text())["results"]["synthetic"]
    t = results["far_thresholds"]
    assert set(t) == {"0.001", "0.0001", "1e-05"} and t["0.001"]["impostors"] == 600
    assert t["0.001"]["reliable"] is False  # 600 impostors x 1e-3 < 10: said so
    md = (report / "report.md").read_text()
    assert "| synthetic | 600 |" in md and "(*) fewer than 10/FAR impostor pairs" in md


def test_export_records_the_threshold_frtrain_eval_reported(trained, tmp_path):
    from frtrain.engine.checkpoint import load_checkpoint
    from frtrain.export import export

    from frtrain.errors import ConfigError

    run, report = trained
    reported = json.loads((report / "report.json").read_text())["results"]["synthetic"]["far_thresholds"]["0.001"]
    # 600 impostor pairs cannot back a threshold at FAR 1e-3 (10/FAR = 10,000): refused unless allowed, with the count
    with pytest.raises(ConfigError, match=r"the threshold at FAR 0.001 on synthetic rests on 600 impostor pairs, fewer "
                                          r"than 10/FAR = 10,000.*threshold.allow_few_impostors=true"):
        export(compose("export", [f"model={run}", f"out={tmp_path}/m.onnx", f"threshold.report={report}"]))
    out = export(compose("export", [f"model={run}", f"out={tmp_path}/m.onnx", f"threshold.report={report}",
                                    "threshold.allow_few_impostors=true"]))
    onnx_meta = OnnxEmbedder(out).meta["threshold"]
    ckpt_meta = load_checkpoint(str(run / "checkpoints" / "best.pt"))["meta"]["threshold"]
    assert onnx_meta["cosine"] == ckpt_meta["cosine"] == reported["cosine"]
    assert onnx_meta["far"] == 1e-3 and onnx_meta["benchmark"] == "synthetic" and onnx_meta["impostors"] == 600


def test_frtrain_verify_gives_the_evaluator_s_score_and_decides_at_the_threshold(trained, tmp_path):
    from frtrain.evaluation.pairlist import csv_benchmark
    from frtrain.evaluation.embed import Embedder
    from frtrain.engine.model_files import load_model

    run, report = trained
    images = []
    for i, (identity, k) in enumerate([(3, 0), (3, 1), (7, 0)]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(draw_image(5, 2, identity, k, 40))
        images.append(str(path))
    (tmp_path / "pairs.csv").write_text(f"{images[0]},{images[1]},1,0\n{images[0]},{images[2]},0,1\n")
    model, _ = load_model(str(run / "checkpoints" / "best.pt"))
    bench = csv_benchmark(str(tmp_path / "pairs.csv"), name="two", num_folds=2)
    expected = bench.pair_scores(Embedder(model, torch.device("cpu")))
    threshold = float(np.mean(expected))  # between the two scores: one pair each way
    for pair, (a, b) in enumerate([(images[0], images[1]), (images[0], images[2])]):
        r = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={run}", a, b, f"threshold={threshold}"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        score = float(r.stdout.split()[1].rstrip(";"))
        assert score == pytest.approx(expected[pair], abs=1e-4)
        verdict = "same person" if expected[pair] >= threshold else "different people"
        assert r.stdout.strip().endswith(verdict), r.stdout


def test_frtrain_verify_names_a_missing_image_in_one_line(trained, tmp_path):
    run, _ = trained
    r = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={run}", str(tmp_path / "a.jpg"), "b.jpg"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().startswith("frtrain-verify: error:") and "a.jpg" in r.stderr
    assert "Traceback" not in r.stderr


def test_align_script_writes_an_aligned_identity_folder(tmp_path):
    import cv2

    raw, out = tmp_path / "raw", tmp_path / "aligned"
    (raw / "alice").mkdir(parents=True)
    lines = []
    for k in range(2):
        photo = np.zeros((200, 160, 3), np.uint8)
        shift = np.array([20.0 + 10 * k, 30.0])
        for x, y in ARCFACE_TEMPLATE + shift:
            cv2.circle(photo, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
        cv2.imwrite(str(raw / "alice" / f"{k}.jpg"), photo)
        lines.append(f"alice/{k}.jpg " + " ".join(f"{v:.2f}" for v in (ARCFACE_TEMPLATE + shift).ravel()) + " 0.99")
    (tmp_path / "lmk.txt").write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align.py"), str(raw), str(tmp_path / "lmk.txt"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    faces = sorted((out / "alice").glob("*.png"))
    assert len(faces) == 2
    aligned = cv2.imread(str(faces[1]))[:, :, 0]
    x, y = ARCFACE_TEMPLATE[2]
    assert aligned[int(round(y)), int(round(x))] > 100  # the nose-tip dot lands on the template's nose tip
    (tmp_path / "bad.txt").write_text("alice/0.jpg 1 2 3\n")
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "align.py"), str(raw), str(tmp_path / "bad.txt"), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "bad.txt:1: expected '<image> x1 y1 ... x5 y5 [score]'" in bad.stderr


@pytest.mark.slow  # four verify processes
def test_verify_refuses_a_recorded_threshold_that_few_impostors_back_unless_allowed(trained, tmp_path):
    from frtrain.export import export

    run, report = trained
    out = export(compose("export", [f"model={run}", f"out={tmp_path}/m.onnx", f"threshold.report={report}",
                                    "threshold.allow_few_impostors=true"]))
    a = tmp_path / "a.jpg"
    a.write_bytes(draw_image(5, 2, 3, 0, 40))
    for model in (out, str(run)):
        r = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={model}", str(a), str(a)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "rests on 600 impostor pairs" in r.stderr and "allow_few_impostors=true" in r.stderr
        r = subprocess.run([sys.executable, "-m", "frtrain.verify", f"model={model}", str(a), str(a),
                            "allow_few_impostors=true"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "same person" in r.stdout, r.stderr[-2000:]
