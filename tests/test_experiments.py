"""Paper experiments: every file composes into buildable parts; frtrain.tools.reproduce runs and tabulates them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from frtrain.data.synthetic import generate_identity_folder, generate_verification_bin
from frtrain.engine.build import build
from frtrain.tools import reproduce

from conftest import compose_train

EXPERIMENTS = reproduce.available()


#: what each paper fixes: backbone depth, head and its hyper-parameters, global batch, schedule, epochs, benchmarks
PAPERS = {
    "npt_casia_r50": dict(depth=50, head="NPTLoss", hyper={"k": 1, "delta": 0.5, "radius": 1.0}, batch=64,
                          sched="WarmupStep", sched_args={"milestones": [30, 45], "gamma": 0.1}, epochs=65, lr=0.1,
                          benchmarks={"lfw", "agedb_30", "cfp_fp", "calfw"}, data="casia-webface"),
    "arcface_casia_r50": dict(depth=50, head="ArcFace", hyper={"scale": 64.0, "margin_rad": 0.5}, batch=64,
                              sched="WarmupStep", sched_args={"milestones": [30, 45], "gamma": 0.1}, epochs=65, lr=0.1,
                              benchmarks={"lfw", "agedb_30", "cfp_fp", "calfw"}, data="casia-webface"),
    "arcface_ms1mv2_r100": dict(depth=100, head="ArcFace", hyper={"scale": 64.0, "margin_rad": 0.5}, batch=512,
                                sched="WarmupCosine", sched_args={}, epochs=20, lr=0.1,
                                benchmarks={"lfw", "cfp_fp", "agedb_30", "ijbb", "ijbc", "megaface"}, data="faces_emore"),
    "cosface_ms1mv2_r100": dict(depth=100, head="CosFace", hyper={"scale": 64.0, "margin_cos": 0.5}, batch=512,
                                sched="WarmupCosine", sched_args={}, epochs=20, lr=0.1,
                                benchmarks={"lfw", "cfp_fp", "agedb_30", "ijbb", "ijbc", "megaface"}, data="faces_emore"),
    "unpg_ms1mv2_r100_arcface": dict(depth=100, head="UNPG", hyper={"scale": 64.0, "r": 1.5}, base=("ArcMargin", 0.5),
                                     batch=512, sched="WarmupCosine", sched_args={}, epochs=20, lr=0.1,
                                     benchmarks={"lfw", "cfp_fp", "agedb_30", "ijbb", "ijbc", "megaface"}, data="faces_emore"),
    "unpg_ms1mv2_r100_cosface": dict(depth=100, head="UNPG", hyper={"scale": 64.0, "r": 1.5}, base=("CosMargin", 0.5),
                                     batch=512, sched="WarmupCosine", sched_args={}, epochs=20, lr=0.1,
                                     benchmarks={"lfw", "cfp_fp", "agedb_30", "ijbb", "ijbc", "megaface"}, data="faces_emore"),
    "npt_ms1mv2_r50": dict(depth=50, head="NPTLoss", hyper={"k": 1, "delta": 0.5, "radius": 1.0}, batch=512,
                           sched="WarmupStep", sched_args={"milestones": [10, 18], "gamma": 0.1}, epochs=21, lr=0.1,
                           benchmarks={"lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "ytf", "ijbb", "ijbc", "megaface",
                                       "rfw"}, data="faces_emore"),
    "adaface_ms1mv2_r100": dict(depth=100, head="AdaFace", hyper={"scale": 64.0, "margin": 0.4, "h": 0.333,
                                                                  "momentum": 0.01}, batch=512, sched="WarmupStep",
                                sched_args={"milestones": [12, 20, 24], "gamma": 0.1}, epochs=26, lr=0.1,
                                benchmarks={"lfw", "cfp_fp", "agedb_30", "cplfw", "ijbb", "ijbc"}, data="faces_emore",
                                augment=["crop", "low_resolution", "photometric", "flip"]),
    "curricularface_ms1mv2_r100": dict(depth=100, head="CurricularFace", hyper={"scale": 64.0, "margin_rad": 0.5},
                                       batch=512, sched="WarmupStep", sched_args={"milestones": [10, 18, 22],
                                                                                  "gamma": 0.1}, epochs=24, lr=0.1,
                                       benchmarks={"lfw", "cfp_fp", "agedb_30", "cplfw"}, data="faces_emore"),
    "elasticface_arc_plus_ms1mv2_r100": dict(depth=100, head="ElasticArcFace",
                                             hyper={"scale": 64.0, "margin_mean": 0.5, "margin_std": 0.0175,
                                                    "plus": True}, batch=512, sched="WarmupStep",
                                             sched_args={"milestones": [8, 14, 20, 25], "gamma": 0.1}, epochs=26,
                                             lr=0.1, benchmarks={"lfw", "cfp_fp", "agedb_30", "cplfw"},
                                             data="faces_emore"),
}


#: experiments pinned in other files: insightface's ViT recipes (tests/test_vit.py), the fine-tuning example
#: (tests/test_finetune.py)
ELSEWHERE = {"vit_t_wf42m", "vit_s_wf42m", "vit_b_wf42m", "vit_l_wf42m", "finetune_lfw_lora"}


def test_every_experiment_file_is_pinned_here():
    assert set(PAPERS) | ELSEWHERE == set(EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_experiment_composes_to_the_papers_setting(name):
    want = PAPERS[name]
    cfg = compose_train([f"experiment={name}", "paths.datasets=/data"])
    assert cfg.backbone.depth == want["depth"] and cfg.data.root == f"/data/{want['data']}"
    head = build("head", cfg.head, embedding_size=int(cfg.backbone.embedding_size), num_classes=1000)
    assert type(head).__name__ == want["head"]
    for key, value in want["hyper"].items():  # a head's own option, or its margin's (ArcFace's margin_rad)
        holder = head if hasattr(head, key) else head.margin_fn
        assert getattr(holder, key) == value, f"head.{key}"
    if "base" in want:
        kind, margin = want["base"]
        assert type(head.base).__name__ == kind and margin in vars(head.base).values()
    assert cfg.data.loader.batch_size == want["batch"] and cfg.trainer.epochs == want["epochs"]
    optimizer = build("optim", cfg.optim)([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert optimizer.defaults["lr"] == want["lr"] and optimizer.defaults["momentum"] == 0.9
    schedule = build("sched", cfg.sched)(total_steps=1000, steps_per_epoch=10)
    assert type(schedule).__name__ == want["sched"]
    if want["sched_args"]:
        assert schedule.milestone_steps == [m * 10 for m in want["sched_args"]["milestones"]]
        assert schedule.gamma == want["sched_args"]["gamma"]
    assert set(cfg.eval.benchmarks) == want["benchmarks"]
    ijb = {n for n in cfg.eval.benchmarks if n.startswith("ijb")}
    large = ijb | {"megaface", "rfw", "ytf"} & set(cfg.eval.benchmarks)
    assert all(b.path == f"/data/{want['data']}/{n}.bin" for n, b in cfg.eval.benchmarks.items() if n not in large)
    for n in ijb:  # template protocols: insightface's IJB release, scored once at the end
        node = cfg.eval.benchmarks[n]
        assert node.protocol == n and node.root == f"/data/IJB_release/{n.upper()}"
    if "megaface" in cfg.eval.benchmarks:  # insightface's test pack, cleaned as insightface does
        assert cfg.eval.benchmarks.megaface.root == "/data/megaface" and cfg.eval.benchmarks.megaface.clean == "insightface"
    assert set(cfg.eval.final_only) == large  # the large protocols are scored once, after the last step
    reported_ijb = {k.split("_tar_at_far_")[0] for k in cfg.paper.reported if "_tar_at_far_" in k}
    assert reported_ijb == ijb
    for key in cfg.paper.reported:  # every cell names a benchmark the experiment scores, or has no protocol
        assert reproduce.bench_of(key) in set(cfg.eval.benchmarks) | set(reproduce.NO_PROTOCOL), key
    assert set(cfg.paper.reported) and cfg.paper.table
    assert list(cfg.data.augment) == want.get("augment", ["flip"])


@pytest.mark.slow  # trains two experiments
def test_reproduce_runs_an_experiment_and_writes_reported_next_to_reproduced(tmp_path, cache_dir):
    """A shrunken npt_casia_r50 really trains on a tiny identity folder and is scored on its four .bin files."""
    datasets = tmp_path / "datasets"
    generate_identity_folder(datasets / "casia-webface", num_identities=20, images_per_identity=4, image_size=40, seed=3)
    (datasets / "casia-webface" / "DONE").unlink()
    lfw = generate_verification_bin(datasets / "casia-webface" / "lfw.bin", num_identities=20, images_per_identity=2,
                                    num_pairs=40, image_size=40, seed=3)
    for other in ("agedb_30", "cfp_fp"):  # calfw is dropped from the run below
        shutil.copy(lfw, lfw.with_name(f"{other}.bin"))
    shrink = [f"paths.datasets={datasets}", "backbone=iresnet_tiny", "backbone.input_size=40",
              "data.loader.num_workers=0", "data.loader.batch_size=16", "trainer.max_steps=3", "trainer.progress=false",
              "eval.num_workers=0", "~eval.benchmarks.calfw"]
    runs, out = tmp_path / "runs", tmp_path / "reproduction.md"
    rows = reproduce.main(["npt_casia_r50", "arcface_casia_r50", "--runs-dir", str(runs), "--out", str(out),
                           "--run", "--", *shrink])
    table = out.read_text()
    assert "Experiments: NPT-Loss = `npt_casia_r50`; ArcFace (as reported in the NPT-Loss paper) = `arcface_casia_r50`" in table
    npt = next(r for r in rows if r["experiment"] == "npt_casia_r50")
    results = json.loads((runs / "npt_casia_r50" / "results.json").read_text())
    assert npt["reproduced"]["lfw"] == round(100 * results["final"]["lfw"]["accuracy"], 2)
    assert f"| lfw | 99.40 | {npt['reproduced']['lfw']:.2f} | 99.30 | {rows[1]['reproduced']['lfw']:.2f} |" in table
    assert npt["reproduced"]["calfw"] == "not scored"  # removed from this run's benchmarks
    assert (runs / "arcface_casia_r50" / "results.json").is_file()
    assert json.loads(out.with_suffix(".json").read_text())[0]["experiment"] == "npt_casia_r50"


def test_reproduce_says_not_run_and_names_unknown_experiments(tmp_path):
    out = tmp_path / "r.md"
    rows = reproduce.main(["unpg_ms1mv2_r100_arcface", "--runs-dir", str(tmp_path), "--out", str(out)])
    assert rows[0]["reproduced"]["lfw"] == "not run" and rows[0]["reproduced"]["ijbc_tar_at_far_1e-4"] == "not run"
    assert "| ijbc_tar_at_far_1e-4 | 96.33 | not run | IJB 1:1 templates" in out.read_text()
    # the IJB-C row is the reported key's; the evaluated benchmark ijbc gets no second row
    assert "| ijbc |" not in out.read_text() and "| megaface/sizes/1000000/rank1 | see paper | not run |" in out.read_text()
    with pytest.raises(SystemExit, match="no experiment npt_casia_r5 in .*there are: adaface_ms1mv2_r100, arcface_casia_r50"):
        reproduce.main(["npt_casia_r5", "--out", str(out)])


def test_reproduce_reads_tar_at_far_of_a_template_benchmark(tmp_path):
    """An IJB-C cell is the run's TAR at the reported FAR (insightface's rule), not its headline accuracy."""
    run = tmp_path / "arcface_ms1mv2_r100"
    run.mkdir()
    final = {"lfw": {"accuracy": 0.99817},
             "ijbc": {"accuracy": 0.9631, "tar_at_far": {"1e-05": 0.9412, "0.0001": 0.96312, "0.001": 0.9733}}}
    (run / "results.json").write_text(json.dumps({"final": final, "steps": 10, "train_seconds": 7200}))
    rows = reproduce.main(["arcface_ms1mv2_r100", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert rows[0]["reproduced"]["ijbc_tar_at_far_1e-4"] == 96.31
    assert rows[0]["reproduced"]["lfw"] == 99.82
    assert rows[0]["reproduced"]["cfp_fp"] == "not evaluated"
    assert reproduce.metric_of("ijbb_tar_at_far_1e-5") == ("ijbb", 1e-5) and reproduce.metric_of("lfw") == ("lfw", None)


def test_reproduce_reads_cells_by_path_and_says_which_have_no_protocol(tmp_path):
    """MegaFace and RFW cells are values of the result by path; IFRT's per-race cells have no protocol."""
    run = tmp_path / "npt_ms1mv2_r50"
    run.mkdir()
    final = {"megaface": {"accuracy": 0.9, "sizes": {"10000": {"rank1": 0.98123, "tar_at_far": 0.97},
                                                      "1000000": {"rank1": 0.9, "tar_at_far": None}}},
             "rfw": {"accuracy": 0.95}}
    (run / "results.json").write_text(json.dumps({"final": final, "steps": 10, "train_seconds": 60}))
    (row,) = reproduce.main(["npt_ms1mv2_r50", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "r.md")])
    got = row["reproduced"]
    assert got["megaface/sizes/10000/rank1"] == 98.12 and got["megaface/sizes/10000/tar_at_far"] == 97.0
    assert got["megaface/sizes/1000000/tar_at_far"] == "not evaluated"  # null in the result
    assert got["ifrt/African"] == "no protocol" and "IFRT" in row["protocols"]["ifrt/African"]
    assert got["rfw"] == 95.0 and got["lfw"] == "not evaluated"
    assert "| ifrt/East Asian | see paper | no protocol | no protocol: IFRT" in (tmp_path / "r.md").read_text()
