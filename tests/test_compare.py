"""frtrain-compare: the statistics equal an independent computation, and a tiny grid trains, resumes and reports."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import stats

from frtrain.compare import main, parse
from frtrain.errors import ConfigError
from frtrain.evaluation.paired_stats import bootstrap_differences, mean_ci, paired_bootstrap


def test_mean_ci_is_the_student_t_interval():
    v = [0.81, 0.84, 0.86, 0.80]
    m, lo, hi = mean_ci(v)
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2.0
    assert m == pytest.approx(np.mean(v)) and lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert mean_ci([0.7]) == (0.7, 0.7, 0.7)


def _independent_resamples(d, seed, batches, clusters=None):
    """The resampled means, drawn as bootstrap_differences documents (per batch: seeds (b, S), then clusters (b, C))
    and weighted explicitly, one loop per resample: a pair counts m_a (one person) or m_a m_b (two) times."""
    g, out = np.random.default_rng(seed), []
    ns, np_ = d.shape
    clusters = np.repeat(np.arange(np_)[:, None], 2, 1) if clusters is None else clusters
    c_count = clusters.max() + 1
    for size in batches:
        s, c = g.integers(0, ns, (size, ns)), g.integers(0, c_count, (size, c_count))
        for k in range(size):
            m = np.bincount(c[k], minlength=c_count)
            total, weight = 0.0, 0.0
            for p in range(np_):
                a, b = clusters[p]
                w = m[a] if a == b else m[a] * m[b]
                weight += w
                total += w * sum(d[seed_row, p] for seed_row in s[k])
            out.append(total / (ns * weight))
    return np.asarray(out)


def test_bootstrap_equals_an_independent_resampling_loop():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 40)) < 0.8, rng.random((3, 40)) < 0.7
    d = a.astype(float) - b
    got = bootstrap_differences(d, resamples=250, seed=5, batch=100)  # each pair its own cluster
    np.testing.assert_allclose(got, _independent_resamples(d, 5, (100, 100, 50)), rtol=0, atol=1e-12)
    people = rng.integers(0, 12, (40, 2))
    people[:15, 1] = people[:15, 0]  # genuine pairs: one person
    got = bootstrap_differences(d, people, resamples=120, seed=3, batch=50)
    np.testing.assert_allclose(got, _independent_resamples(d, 3, (50, 50, 20), people), rtol=0, atol=1e-12)
    r = paired_bootstrap(a, b, resamples=250, seed=5)  # one batch of 250
    boot = _independent_resamples(d, 5, (250,))
    assert r.difference == pytest.approx(d.mean())
    assert (r.low, r.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    far = np.sum(boot <= 0) if d.mean() > 0 else np.sum(boot >= 0)
    assert r.p_value == pytest.approx(min(1.0, 2 * (1 + far) / 251))
    assert r.detectable == pytest.approx((1.959964 + 0.841621) * np.std(boot, ddof=1), rel=1e-5)


def test_a_planted_difference_is_found_and_a_null_one_is_not():
    rng = np.random.default_rng(0)
    shape = (3, 3000)
    better, worse = rng.random(shape) < 0.90, rng.random(shape) < 0.85
    planted = paired_bootstrap(better, worse, resamples=2000)
    assert planted.verdict == "A better" and planted.low > 0 and planted.p_value < 0.01
    same_a, same_b = rng.random(shape) < 0.85, rng.random(shape) < 0.85
    null = paired_bootstrap(same_a, same_b, resamples=2000)
    assert null.verdict == "not distinguishable at this size" and null.low < 0 < null.high and null.p_value > 0.05


@pytest.mark.parametrize("argv, match", [
    (["seeds=2"], "no heads to compare"),
    (["head=arcface,cosface", "seed=1"], "seed: frtrain-compare sets it per run"),
    (["head=arcface,cosface", "@npt:head.k=6"], "npt is not one of the compared heads"),
    (["head=arcface,cosface", "seeds=two"], "seeds='two'"),
    (["head=arcface,cosface", "baseline=npt"], "baseline=npt: not one of the compared heads"),
    (["head=arcface,cosface", "@cosface:headk6"], "a per-head override is @<head>:key=value"),
    (["head=arcface,cosface", "jobs=0"], "jobs=0: expected 1 to"),
    (["head=arcface,cosface", "jobs=many"], "jobs='many'"),
])
def test_bad_command_lines_are_refused_in_one_line(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(argv)


def test_the_grid_is_heads_times_splits_times_seeds():
    grid = parse(["head=arcface,npt", "seeds=2", "protocol=lfw_half_a,lfw_half_b", "@npt:head.k=6", "optim.lr=0.2"])
    assert len(grid.cells) == 8 and grid.common == ["optim.lr=0.2"]
    npt = [c for c in grid.cells if c.head == "npt"][0]
    assert npt.overrides(grid.common) == ["optim.lr=0.2", "head=npt", "head.k=6", "protocol=lfw_half_a", "seed=0"]
    # seed by seed: a grid stopped part-way has whole seeds
    assert [c.seed for c in grid.cells] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [(c.head, c.split[0][1]) for c in grid.cells[:4]] == [
        ("arcface", "lfw_half_a"), ("arcface", "lfw_half_b"), ("npt", "lfw_half_a"), ("npt", "lfw_half_b")]


def test_concurrent_runs_get_disjoint_cores_and_a_failure_stops_new_runs(monkeypatch, tmp_path):
    import threading

    from frtrain import compare
    from frtrain.errors import DataError

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores and CPU affinity")
    slots = compare.core_slots(2)
    assert len(slots) == 2 and not slots[0] & slots[1] and slots[0] | slots[1] == os.sched_getaffinity(0)
    assert compare.core_slots(1) == [None]

    grid = parse(["head=arcface,cosface,npt", "seeds=2", "jobs=2"])
    started, lock, both = [], threading.Lock(), threading.Barrier(2, timeout=10)

    def fake_run_cell(cell, grid, out, cores):
        with lock:
            started.append((cell.head, cell.seed, frozenset(cores)))
        if len(started) <= 2:
            both.wait()  # the first two really run at once, on different cores
        if (cell.head, cell.seed) == ("cosface", 0):
            raise DataError("the run head=cosface seed=0 failed")
        return "trained"

    monkeypatch.setattr(compare, "run_cell", fake_run_cell)
    with pytest.raises(DataError, match="cosface seed=0 failed"):
        compare.run_grid(grid, tmp_path)
    assert started[0][2] != started[1][2]
    # at most the run that replaced a finished one before cosface's failure was seen started; no seed-1 run did
    assert 2 <= len(started) <= 3 and all(seed == 0 for _, seed, _ in started)


def test_a_config_mistake_stops_before_any_run(tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit):
        main(["head=arcface,cosface", "seeds=1", f"out={out}", "optim.lrr=0.1"])
    assert not (out / "runs").exists()


TINY = ["data.num_identities=30", "data.images_per_identity=8", "data.image_size=32", "backbone.input_size=32",
        "data.loader.batch_size=32", "data.loader.num_workers=0", "trainer.max_steps=6", "trainer.checkpoint_every=3",
        "trainer.keep_last=0", "eval.every_steps=3", "eval.benchmarks.synthetic.num_identities=30",
        "eval.benchmarks.synthetic.images_per_identity=4", "eval.benchmarks.synthetic.num_pairs=200",
        "eval.benchmarks.synthetic.image_size=32"]


@pytest.mark.slow  # a training grid
@pytest.mark.timeout(900)
def test_a_tiny_grid_trains_resumes_reuses_and_flags_a_recipe_difference(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["head=arcface,cosface", "seeds=2", f"out={out}", "resamples=500", "@cosface:optim.weight_decay=0.001",
            f"jobs={min(2, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else 1)}",
            f"publish={tmp_path / 'docs' / 'results.md'}", "eval.analysis=[pairs,separation]", *TINY]
    assert main(argv) == 0
    run = out / "runs" / "cosface" / "seed-1"
    assert sorted(str(p.relative_to(out / "runs")) for p in (out / "runs").glob("*/seed-*")) == [
        "arcface/seed-0", "arcface/seed-1", "cosface/seed-0", "cosface/seed-1"]
    assert (run / "pairs" / "synthetic.npz").is_file()
    report = json.loads((out / "comparison.json").read_text())
    bench = report["benchmarks"]["synthetic"]
    assert set(bench["heads"]) == {"arcface", "cosface"} and bench["seeds"] == [0, 1]
    for h in ("arcface", "cosface"):  # the per-seed accuracies are the runs' own final accuracies
        for seed in (0, 1):
            final = json.loads((out / "runs" / h / f"seed-{seed}" / "results.json").read_text())["final"]
            assert bench["heads"][h]["per_seed"][str(seed)] == pytest.approx(final["synthetic"]["accuracy"])
    assert len(bench["differences"]) == 1 and bench["differences"][0]["pairs"] == 200
    assert any("optim.weight_decay=0.001" in n for n in report["recipe_differences"])
    md = (out / "comparison.md").read_text()
    assert "The runs differ in more than the head and the seed" in md and "![" in md
    assert "## Geometry" in md and "## Provenance" in md
    d_primes = [json.loads((out / "runs" / "arcface" / f"seed-{s}" / "results.json").read_text())["geometry"]["scalars"]
                ["pairs/d_prime"] for s in (0, 1)]
    assert report["geometry"]["arcface"]["pairs/d_prime"]["mean"] == pytest.approx(np.mean(d_primes))
    assert report["geometry"]["arcface"]["pairs/d_prime"]["seeds"] == 2
    assert (out / "accuracy_vs_step.png").is_file() and (out / "roc.png").is_file()
    assert (tmp_path / "docs" / "results.md").is_file() and (tmp_path / "docs" / "results_roc.png").is_file()
    published = tmp_path / "docs" / "results.md"
    published.write_text(published.read_text() + "Notes: arcface and cosface tie here.\n")

    # an interrupted run: its final checkpoint and results gone, the step-3 checkpoint left
    finished = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("results.json") if p.parent != run}
    (run / "results.json").unlink()
    (run / "checkpoints" / "step-00000006.pt").unlink()
    assert (run / "checkpoints" / "step-00000003.pt").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 runs (0 trained, 1 resumed, 3 reused)" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    assert "resum" in (run / "train.log").read_text().lower()
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    text = published.read_text()  # rewritten by the second call, the notes below the marker kept, once
    assert text.count("Notes: arcface and cosface tie here.") == 1 and text.count("<!-- notes:") == 1
    assert text.index("| arcface |") < text.index("Notes: arcface")

    # the report alone, from the run directories
    assert main(["report", str(out), f"out={tmp_path / 'again'}", "baseline=arcface", "resamples=200"]) == 0
    again = json.loads((tmp_path / "again" / "comparison.json").read_text())
    assert again["benchmarks"]["synthetic"]["heads"].keys() == bench["heads"].keys()
    assert os.path.isfile(tmp_path / "again" / "comparison.md")


def _fake_run(root, name="arcface"):
    """A finished run directory as frtrain-train writes it (results, config, cell, pairs)."""
    run = root / "runs" / name / "seed-0"
    (run / "pairs").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"final": {"lfw": {"accuracy": 0.9}}, "train_seconds": 3.0,
                                                  "history": {"eval": [{"step": 5, "accuracy": 0.9}]}}))
    (run / "config.yaml").write_text("seed: 0\nhead:\n  _target_: frtrain.heads.ArcFace\n")
    (run / "compare_cell.json").write_text(json.dumps({"head": name, "split": []}))
    np.savez(run / "pairs" / "lfw.npz", issame=np.array([True, False]), score=np.array([0.9, 0.1]),
             correct=np.array([True, True]), fold=np.array([0, 0]))
    return run


@pytest.mark.parametrize("file, content, message", [
    ("results.json", "{not json", "is not valid JSON"),
    ("results.json", "[1, 2]", "holds a JSON list"),
    ("results.json", json.dumps({"final": {"lfw": 0.9}}), "is not a frtrain-train results.json"),
    ("compare_cell.json", json.dumps({"head": 3}), "expected {\"head\""),
    ("config.yaml", "seed: !!python/object/apply:os.system ['echo ran']\n", "is not a plain YAML"),
    ("config.yaml", "- a list\n", "is not a frtrain-train config"),
    ("pairs/lfw.npz", None, "holds Python objects"),
    ("pairs/lfw.npz", b"PK\x03\x04 not a zip", "is not a readable .npz"),
])
def test_compare_report_answers_a_malformed_file_in_one_line_naming_it(tmp_path, capsys, file, content, message):
    run = _fake_run(tmp_path)
    target = run / file
    if content is None:
        np.savez(target, issame=np.array([{"a": 1}], dtype=object), score=np.zeros(1), correct=np.zeros(1, bool))
    elif isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and message in err[0], err


def test_an_npz_whose_header_claims_more_than_it_holds_is_refused_before_allocating(tmp_path):
    import zipfile

    from frtrain.errors import DataError
    from frtrain.safe_files import read_npz

    header = np.lib.format.header_data_from_array_1_0(np.zeros(3))
    header["shape"] = (10**12,)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        with z.open("score.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(np.zeros(3).tobytes())
    with pytest.raises(DataError, match=r"array 'score' declares shape \(1000000000000,\) of float64, more than its"):
        read_npz(tmp_path / "bomb.npz")


def test_a_tar_interval_over_seeds_stays_within_zero_and_one():
    """Before: the Student-t interval of TARs near 1 (or 0) ran past the ends of [0, 1]."""
    from frtrain.evaluation.paired_stats import proportion_ci

    for values in ([0.999, 1.0, 0.997], [0.0, 0.004, 0.001], [0.5, 0.9, 0.2]):
        m, lo, hi = proportion_ci(values, 3000)
        assert 0.0 <= lo <= m <= hi <= 1.0 and m == pytest.approx(np.mean(values))
        t_lo, t_hi = mean_ci(values)[1:]
        assert t_lo < 0 or t_hi > 1  # the plain t interval of the same values leaves [0, 1]
    # near the middle the logit interval is close to the plain one
    m, lo, hi = proportion_ci([0.50, 0.52, 0.51, 0.49], 100_000)
    _, t_lo, t_hi = mean_ci([0.50, 0.52, 0.51, 0.49])
    assert lo == pytest.approx(t_lo, abs=3e-3) and hi == pytest.approx(t_hi, abs=3e-3)


def test_the_geometry_section_reads_results_json_or_a_frtrain_analyze_record(tmp_path):
    from frtrain.evaluation.comparison import build_report, find_runs
    from frtrain.evaluation.comparison_report import markdown

    a, b = _fake_run(tmp_path, "arcface"), _fake_run(tmp_path, "unpg")
    results = json.loads((a / "results.json").read_text())
    (a / "results.json").write_text(json.dumps(dict(results, geometry={"scalars": {"pairs/d_prime": 1.5}})))
    (b / "analysis").mkdir()
    (b / "analysis" / "analysis.json").write_text(json.dumps({"scalars": {"pairs/d_prime": 2.25}}))
    report = build_report(find_runs([str(tmp_path)]), resamples=100)
    assert report["geometry"]["arcface"]["pairs/d_prime"]["mean"] == 1.5
    assert report["geometry"]["unpg"]["pairs/d_prime"]["mean"] == 2.25
    md = markdown(report, "cmd", {})
    assert "## Geometry" in md and "| unpg | 1 | 2.25 |" in md  # one seed: the value, no interval


def test_a_report_only_rewrite_keeps_the_grid_command_and_its_wall_time(tmp_path, capsys):
    _fake_run(tmp_path / "grid", "arcface"), _fake_run(tmp_path / "grid", "unpg")
    grid = "frtrain-compare head=arcface,unpg seeds=1 out=" + str(tmp_path / "grid")
    (tmp_path / "grid" / "comparison.json").write_text(json.dumps({"command": grid}))
    (tmp_path / "grid" / "wall_time.json").write_text(json.dumps({"seconds": 600.0, "trained": 2, "resumed": 0,
                                                                  "reused": 0}))
    assert main(["report", str(tmp_path / "grid"), "resamples=100"]) == 0
    md = (tmp_path / "grid" / "comparison.md").read_text()
    assert f"Command: `{grid}`" in md
    assert f"Report written by: `frtrain-compare report {tmp_path / 'grid'} resamples=100`" in md
    assert "Wall time of the grid: 10.0 min (2 runs trained" in md
    # a second rewrite still finds the grid's command, not the first rewrite's
    assert main(["report", str(tmp_path / "grid"), "resamples=100"]) == 0
    assert json.loads((tmp_path / "grid" / "comparison.json").read_text())["command"] == grid
