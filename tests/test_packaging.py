"""frtrain installs as a package: the configs at the top of the repository ship inside it (frtrain.configs), so an
editable install and a built wheel both run from any working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds and installs a wheel


def test_pyproject_lists_every_package_of_frtrain():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "frtrain").rglob("__init__.py")}
    assert listed == on_disk | {"frtrain.configs"}


def _run(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_installed_commands_find_their_configs_from_another_directory(tmp_path):
    train = _run([sys.executable, "-m", "frtrain.train", "--cfg", "job", "head=cosface"], tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "_target_: frtrain.heads.CosFace" in train.stdout
    evaluate = _run([sys.executable, "-m", "frtrain.evaluate", "--help"], tmp_path)
    assert evaluate.returncode == 0 and evaluate.stdout.startswith("``frtrain-eval``"), evaluate.stdout


def test_a_wheel_installed_elsewhere_trains_and_evaluates_from_another_directory(tmp_path):
    wheel_dir, target, work, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "work", tmp_path / "src"
    work.mkdir()
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "tests",
                                                             "__pycache__", "outputs", "multirun"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
                  str(src)], tmp_path)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheel_dir.glob("frtrain-*.whl"))
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                     tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (target / "frtrain" / "configs" / "train.yaml").is_file()  # the configs travel inside the package
    env = dict(os.environ, PYTHONPATH=str(target))
    where = _run([sys.executable, "-c", "import frtrain.configs; print(frtrain.configs.__file__)"], work, env)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr  # the wheel, not the checkout
    script = lambda name: [sys.executable, str(target / "bin" / name)]  # noqa: E731
    job = _run(script("frtrain-train") + ["--cfg", "job", "experiment=npt_casia_r50"], work, env)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "_target_: frtrain.heads.NPTLoss" in job.stdout
    help_ = _run(script("frtrain-eval") + ["--help"], work, env)
    assert help_.returncode == 0 and "model" in help_.stdout, help_.stderr[-2000:]
    short = _run(script("frtrain-train") + ["data.num_identities=20", "data.images_per_identity=4", "data.image_size=24",
                                            "backbone.input_size=24", "data.loader.batch_size=16",
                                            "data.loader.num_workers=0", "trainer.max_steps=2", "eval=none",
                                            "trainer.progress=false", f"output_dir={work / 'run'}"], work, env)
    assert short.returncode == 0, short.stderr[-2000:]
    assert (work / "run" / "checkpoints").is_dir()
    scored = _run(script("frtrain-eval") + [f"model={work / 'run'}", "benchmarks.synthetic.num_identities=20",
                                            "benchmarks.synthetic.images_per_identity=4", "benchmarks.synthetic.num_pairs=40",
                                            "benchmarks.synthetic.image_size=24", "eval.num_workers=0",
                                            f"output_dir={work / 'eval'}"], work, env)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert (work / "eval" / "report.md").is_file()
