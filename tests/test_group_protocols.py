"""Per-group protocols (RFW, BFW, the ``groups`` option of any pair benchmark) and closed-set classification: small
releases written here in the real layouts, scored by frtrain and by an independent numpy computation of each
protocol's definition (insightface's 10-fold accuracy written out; thresholds at a FAR found by search)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from frtrain.data.synthetic import draw_image
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import FileImages
from frtrain.evaluation.closed_set import class_scorer, closed_set_benchmark
from frtrain.evaluation.groups import bfw_benchmark, rfw_benchmark
from frtrain.evaluation.pairlist import csv_benchmark

from conftest import compose_eval, projection_embedder, unit_features

GROUPS = ("African", "Asian", "Caucasian", "Indian")


# -- the independent definitions -----------------------------------------------------------------------------------
def _insightface_folds(f1, f2, issame, folds):
    """insightface's 10-fold accuracy with explicit fold ids: squared distance of unit features, the threshold of
    np.arange(0, 4, 0.01) with the best training accuracy (the first such), applied to the test fold. Returns
    (mean accuracy, population std over folds, each pair's outcome at its fold's threshold)."""
    dist = ((f1 - f2) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01)
    accs, correct = [], np.zeros(len(issame), bool)
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        correct[test] = (dist[test] < best) == issame[test]
        accs.append(np.mean(correct[test]))
    return float(np.mean(accs)), float(np.std(accs)), correct


def _accepting_threshold(impostors, far):
    """The lowest cut 'score > v' (v a distinct impostor score, or -inf) accepting at most ``far`` of the impostors:
    searched over every candidate."""
    best = np.inf
    for v in np.concatenate([[-np.inf], np.unique(impostors)]):
        if np.mean(impostors > v) <= far:
            best = min(best, v)
    return best


# -- RFW ------------------------------------------------------------------------------------------------------------
def _write_rfw(root: Path) -> dict:
    """RFW's test/ tree: data/<Group>/<m.id>/<m.id>_NNNN.jpg and txts/<Group>/<Group>_pairs.txt: 40 pairs per group
    (10 folds of 2 same + 2 different); African's list carries LFW's header line, the others do not."""
    truth = {}
    for gi, group in enumerate(GROUPS):
        people = [f"m.0{gi}{chr(97 + p)}x" for p in range(8)]
        for p, person in enumerate(people):
            (root / "test" / "data" / group / person).mkdir(parents=True)
            for k in range(1, 4):
                (root / "test" / "data" / group / person / f"{person}_{k:04d}.jpg").write_bytes(
                    draw_image(3, gi, p, k, 24))
        rng = np.random.default_rng(gi)
        lines, pairs = [], []
        for _ in range(10):
            for _ in range(2):
                p = people[rng.integers(8)]
                a, b = rng.choice([1, 2, 3], 2, replace=False)
                lines.append(f"{p}\t{a}\t{b}")
                pairs.append((p, a, p, b, True))
            for _ in range(2):
                p, q = rng.choice(people, 2, replace=False)
                a, b = rng.integers(1, 4, 2)
                lines.append(f"{p}\t{a}\t{q}\t{b}")
                pairs.append((p, a, q, b, False))
        if group == "African":
            lines.insert(0, "10\t2")
        (root / "test" / "txts" / group).mkdir(parents=True)
        (root / "test" / "txts" / group / f"{group}_pairs.txt").write_text("\n".join(lines) + "\n")
        truth[group] = pairs
    return truth


def test_rfw_per_group_accuracy_mean_std_and_skewed_error_ratio(tmp_path):
    truth = _write_rfw(tmp_path / "RFW")
    result = rfw_benchmark(str(tmp_path / "RFW")).score(projection_embedder())
    accs = {}
    for group, pairs in truth.items():
        def path(person, k, group=group):
            return tmp_path / "RFW" / "test" / "data" / group / person / f"{person}_{k:04d}.jpg"

        f1 = unit_features([path(p[0], p[1]) for p in pairs])
        f2 = unit_features([path(p[2], p[3]) for p in pairs])
        issame = np.array([p[4] for p in pairs])
        folds = np.repeat(np.arange(10), 4)  # LFW's sets for African, 10 equal chunks for the others: the same here
        accs[group], std, _ = _insightface_folds(f1, f2, issame, folds)
        assert result.groups[group]["accuracy"] == pytest.approx(accs[group])
        assert result.groups[group]["accuracy_std"] == pytest.approx(std) and result.groups[group]["pairs"] == 40
    values = np.array(list(accs.values()))
    assert result.accuracy == pytest.approx(values.mean())
    assert result.std_across_groups == pytest.approx(values.std())
    errors = 1 - values
    assert result.skewed_error_ratio == pytest.approx(errors.max() / errors.min())
    row = result.table()
    assert set(GROUPS) <= set(row) and "SER" in row and "SER" in result.headline()
    assert result.to_dict()["skewed_error_ratio"] == pytest.approx(errors.max() / errors.min())


def test_rfw_bad_files_name_the_line(tmp_path):
    _write_rfw(tmp_path / "RFW")
    bad = tmp_path / "RFW" / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    bad.write_text(bad.read_text().replace("\t1\t", "\tone\t", 1))
    with pytest.raises(DataError, match=r"Asian_pairs.txt:\d+: expected 'name n1 n2' or 'name1 n1 name2 n2'"):
        rfw_benchmark(str(tmp_path / "RFW"))
    with pytest.raises(DataError, match=r"Indian_pairs.txt: no such file"):
        rfw_benchmark(str(tmp_path / "nowhere"), groups=["Indian"])


# -- BFW ------------------------------------------------------------------------------------------------------------
BFW_SUBGROUPS = ("asian_females", "asian_males", "black_females", "white_males")
BFW_ATT = {"asian_females": "AF", "asian_males": "AM", "black_females": "BF", "white_males": "WM"}


def _write_bfw(root: Path) -> list[dict]:
    """BFW's layout: <subgroup>/<n00id>/<NNNN_NN>.jpg and the data table bfw-v0.1.5-datatable.csv (fold, p1, p2,
    label, id1, id2, att1, att2 and score columns frtrain ignores); 5 folds; a few cross-subgroup impostor pairs."""
    images = {}
    for gi, sub in enumerate(BFW_SUBGROUPS):
        for person in range(6):
            pid = f"n{gi:02d}{person:04d}"
            (root / sub / pid).mkdir(parents=True)
            images[(sub, person)] = []
            for k in range(3):
                rel = f"{sub}/{pid}/{k:04d}_01.jpg"
                (root / rel).write_bytes(draw_image(4, gi, person, k, 24))
                images[(sub, person)].append(rel)
    rng = np.random.default_rng(5)
    rows = []
    for fold in range(1, 6):
        for sub in BFW_SUBGROUPS:
            for _ in range(6):
                person = int(rng.integers(6))
                a, b = rng.choice(images[(sub, person)], 2, replace=False)
                rows.append(dict(fold=fold, p1=a, p2=b, label=1, att1=BFW_ATT[sub], att2=BFW_ATT[sub]))
                p, q = rng.choice(6, 2, replace=False)
                rows.append(dict(fold=fold, p1=rng.choice(images[(sub, int(p))]), p2=rng.choice(images[(sub, int(q))]),
                                 label=0, att1=BFW_ATT[sub], att2=BFW_ATT[sub]))
        s1, s2 = rng.choice(BFW_SUBGROUPS, 2, replace=False)
        rows.append(dict(fold=fold, p1=images[(s1, 0)][0], p2=images[(s2, 1)][1], label=0, att1=BFW_ATT[s1],
                         att2=BFW_ATT[s2]))
    with open(root / "bfw-v0.1.5-datatable.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "p1", "p2", "label", "id1", "id2", "att1", "att2", "vgg16", "resnet50"])
        for r in rows:
            w.writerow([r["fold"], r["p1"], r["p2"], r["label"], 0, 0, r["att1"], r["att2"], 0.5, 0.5])
    return rows


def test_bfw_per_subgroup_tar_fmr_and_own_thresholds_at_one_global_threshold(tmp_path):
    rows = _write_bfw(tmp_path / "bfw")
    far = 0.1
    result = bfw_benchmark(str(tmp_path / "bfw" / "bfw-v0.1.5-datatable.csv"), far=far).score(projection_embedder())
    f1 = unit_features([tmp_path / "bfw" / r["p1"] for r in rows])
    f2 = unit_features([tmp_path / "bfw" / r["p2"] for r in rows])
    score = (f1 * f2).sum(1)
    issame = np.array([r["label"] == 1 for r in rows])
    folds = np.array([r["fold"] for r in rows])
    group = np.array([r["att1"] if r["att1"] == r["att2"] else "mixed" for r in rows])
    acc, _, correct = _insightface_folds(f1, f2, issame, folds)
    assert result.accuracy == pytest.approx(acc)
    glob = _accepting_threshold(score[~issame], far)
    b = result.groups
    assert b["far"] == far and b["impostors"] == int((~issame).sum())
    assert b["threshold"] == pytest.approx(glob, abs=1e-6)
    fmr = {}
    for g in sorted(set(group)):
        m = group == g
        got = b["groups"][g]
        assert got["pairs"] == int(m.sum())
        if g != "mixed":
            assert got["tar"] == pytest.approx(np.mean(score[m & issame] > glob))
            fmr[g] = np.mean(score[m & ~issame] > glob)
        assert got["fmr"] == pytest.approx(np.mean(score[m & ~issame] > glob))
        assert got["own_threshold"] == pytest.approx(_accepting_threshold(score[m & ~issame], far), abs=1e-6)
        assert got["accuracy"] == pytest.approx(np.mean(correct[m]))
    assert list(b["groups"])[-1] == "mixed"
    highest = max(fmr.values())
    assert result.groups["highest_fmr"] in {g for g, v in fmr.items() if v == highest}
    text = "\n".join(result.details())
    assert f"highest false match rate: {b['highest_fmr']}" in text and "| mixed |" in text
    assert any(k.startswith("group/WM/") for k in result.scalars())


def test_bfw_table_without_its_columns_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("p1,p2,label\na.jpg,b.jpg,1\n")
    with pytest.raises(DataError, match=r"t.csv: expected a header with p1, p2, label, fold, att1, att2"):
        bfw_benchmark(str(tmp_path / "t.csv"))


# -- groups on any pair benchmark ----------------------------------------------------------------------------------
def test_the_groups_option_breaks_down_a_users_pair_list(tmp_path):
    rows = _write_bfw(tmp_path)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        for r in rows:
            w.writerow([r["p1"], r["p2"], r["label"], r["fold"]])
    groups = {}
    for r in rows:
        groups[r["p1"]], groups[r["p2"]] = r["p1"].split("/")[0], r["p2"].split("/")[0]
    (tmp_path / "groups.csv").write_text("image,group\n" + "".join(f"{k},{v}\n" for k, v in sorted(groups.items())))
    bench = csv_benchmark(str(tmp_path / "pairs.csv"), num_folds=5).with_groups(str(tmp_path / "groups.csv"), 0.1)
    got = bench.score(projection_embedder())
    want = bfw_benchmark(str(tmp_path / "bfw-v0.1.5-datatable.csv"), far=0.1).score(projection_embedder())
    names = {v: k for k, v in BFW_ATT.items()}
    assert got.groups["threshold"] == want.groups["threshold"]
    for att, row in want.groups["groups"].items():
        assert got.groups["groups"][names.get(att, att)] == row
    # through the config, as users set it; a .bin has no file names to group
    cfg = compose_eval([f"+benchmarks.pairs_csv.path={tmp_path / 'pairs.csv'}", "benchmarks=[pairs_csv]",
                        "benchmarks.pairs_csv.num_folds=5", f"benchmarks.pairs_csv.groups={tmp_path / 'groups.csv'}"])
    from frtrain.config import benchmark_nodes
    from frtrain.engine.build import build_benchmarks

    (built,) = build_benchmarks(benchmark_nodes(cfg))
    assert built.groups_far == pytest.approx(1e-3) and set(built.pair_groups) == set(BFW_SUBGROUPS) | {"mixed"}
    (tmp_path / "partial.csv").write_text(f"{rows[0]['p1']},x\n")
    with pytest.raises(DataError, match=r"partial.csv: .* has no group \(every image of the benchmark must be listed\)"):
        csv_benchmark(str(tmp_path / "pairs.csv"), num_folds=5).with_groups(str(tmp_path / "partial.csv"))


# -- closed set -------------------------------------------------------------------------------------------------
def _write_classes(root: Path, classes: int = 6, per_class: int = 10) -> None:
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for k in range(per_class):
            (root / f"class_{c}" / f"{k:03d}.png").write_bytes(draw_image(5, 0, c, k, 24))


def test_closed_set_top1_top5_on_the_held_out_split_equal_the_definition(tmp_path):
    _write_classes(tmp_path / "objects")
    bench = closed_set_benchmark(str(tmp_path / "objects"), holdout_fraction=0.2, holdout_seed=3)
    assert len(bench.paths) == 6 * 2  # round(0.2 x 10) per class
    from frtrain.data.folder import FaceFolder

    train = FaceFolder(str(tmp_path / "objects"), input_size=(24, 24), holdout_fraction=0.2, holdout_seed=3,
                       index_cache=False)
    held = {Path(p).relative_to(tmp_path / "objects").as_posix() for p in bench.paths}
    assert not held & {p.decode() for p in train.paths} and len(train.paths) == 48  # nothing held out is trained on
    weight, bias = torch.randn(6, 12, generator=torch.Generator().manual_seed(1)), torch.randn(6)
    labels = np.array([int(Path(p).parent.name.split("_")[1]) for p in bench.paths])
    emb = projection_embedder()
    raw, _ = emb.embed(FileImages(bench.paths), len(bench.paths))
    for state, scores in (
        ({"weight": weight, "bias": bias}, raw @ weight.numpy().T + bias.numpy()),  # linear softmax head
        ({"weight": weight}, (raw / np.linalg.norm(raw, axis=1, keepdims=True))
         @ (weight.numpy() / np.linalg.norm(weight.numpy(), axis=1, keepdims=True)).T),  # cosine heads
        ({"centers": weight}, -((raw[:, None, :] - weight.numpy()[None]) ** 2).sum(-1)),  # centres only
    ):
        emb.classifier = class_scorer(state)
        result = bench.score(emb)
        order = np.argsort(-scores, axis=1)
        assert result.top1 == pytest.approx(np.mean(order[:, 0] == labels))
        assert result.top5 == pytest.approx(np.mean([labels[i] in order[i, :5] for i in range(len(labels))]))
        assert result.images == 12 and result.classes == 6
    emb.classifier = class_scorer({"weight": torch.randn(9, 12)})
    with pytest.raises(DataError, match=r"the head scores 9 classes, the data set has 6"):
        bench.score(emb)
    emb.classifier = None
    with pytest.raises(DataError, match=r"needs the head's class vectors"):
        bench.score(emb)


def test_a_closed_set_split_that_training_does_not_leave_out_is_refused_before_the_run(tmp_path, monkeypatch):
    from conftest import compose_train
    from frtrain.config import validate_train

    _write_classes(tmp_path / "objects", classes=3, per_class=4)
    common = ["data=folder", f"data.root={tmp_path / 'objects'}", "benchmarks=[closed_set]",
              f"benchmarks.closed_set.root={tmp_path / 'objects'}", "benchmarks.closed_set.holdout_fraction=0.25"]
    with pytest.raises(ConfigError, match=r"benchmarks.closed_set.holdout_fraction=0.25 but data.holdout_fraction=0.0"):
        validate_train(compose_train(common))
    validate_train(compose_train(common + ["data.holdout_fraction=0.25"]))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the head is sharded: refused before the run, not at eval
    with pytest.raises(ConfigError, match=r"benchmarks.closed_set: closed-set accuracy needs the whole head.*"
                                          r"frtrain-eval model=<run> benchmarks=\[closed_set\]"):
        validate_train(compose_train(common + ["data.holdout_fraction=0.25"]))
    with pytest.raises(DataError, match=r"held.txt: 1 listed images are not in"):
        closed_set_benchmark(str(tmp_path / "objects"), holdout_list=str(_listing(tmp_path, "nope/0.png")))


def _listing(tmp_path: Path, *lines: str) -> Path:
    (tmp_path / "held.txt").write_text("".join(f"{x}\n" for x in lines))
    return tmp_path / "held.txt"


def test_closed_set_scores_in_training_and_in_frtrain_eval_alike(tmp_path):
    """The object experiments' protocol end to end: a run on an identity folder with a held-out split scores the
    head's classifier during training; frtrain-eval scores the checkpoint's head the same."""
    import json

    from conftest import compose_train
    from frtrain.data.synthetic import generate_identity_folder
    from frtrain.evaluate import evaluate
    from frtrain.train import train

    root = generate_identity_folder(tmp_path / "objects", num_identities=12, images_per_identity=10, image_size=40,
                                    seed=4)
    (root / "DONE").unlink()
    split = [f"benchmarks.closed_set.root={root}", "benchmarks.closed_set.holdout_fraction=0.2"]
    run = tmp_path / "run"
    train(compose_train(["data=folder", f"data.root={root}", "data.holdout_fraction=0.2", "backbone=iresnet_tiny",
                         "backbone.input_size=40", "data.loader.batch_size=16", "data.loader.num_workers=0",
                         "trainer.max_steps=40", "trainer.progress=false", "eval=none", "benchmarks=[closed_set]",
                         "eval.num_workers=0", f"output_dir={run}", *split]))
    at_training = json.loads((run / "results.json").read_text())["final"]["closed_set"]
    assert at_training["images"] == 12 * 2 and at_training["classes"] == 12
    assert at_training["top1"] > 1 / 12  # 40 steps on 96 images: better than chance on the held-out ones
    results = evaluate(compose_eval([f"model={run}", f"output_dir={tmp_path / 'eval'}", "benchmarks=[closed_set]",
                                     *split]))
    assert results["closed_set"].top1 == pytest.approx(at_training["top1"])
    assert results["closed_set"].top5 == pytest.approx(at_training["top5"])
    assert "top-1 (%)" in (tmp_path / "eval" / "report.md").read_text()


@pytest.mark.parametrize("name", ["megaface", "tinyface", "scface", "rfw", "bfw", "closed_set"])
def test_every_new_benchmark_config_names_only_its_readers_options(name):
    from frtrain.config import benchmark_nodes, check_benchmarks

    required = {"scface": ["benchmarks.scface.list_file=list.txt"], "closed_set": ["benchmarks.closed_set.root=/d"]}
    cfg = compose_eval([f"benchmarks=[{name}]", "model=x.pt", *required.get(name, [])])
    check_benchmarks(cfg)  # every key of the node is a parameter of its reader (or a pair benchmark's option)
    assert list(benchmark_nodes(cfg)) == [name]
