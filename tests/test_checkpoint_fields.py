"""A checkpoint is data of a known shape: sizes come from the weights, every field is checked before it is used, and
each reader (frtrain-eval/verify/export, trainer.init_from, trainer.resume) answers a malformed file in one line."""

from __future__ import annotations

import collections
import copy
import os
import resource
import subprocess
import sys
import time

import pytest
import torch

from frtrain.backbones import IResNet
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import model_files
from frtrain.errors import CheckpointError, first_line
from frtrain.train import build_trainer

from conftest import TINY_DATA, compose_train

TINY = {"_target_": "frtrain.backbones.IResNet", "depth": None, "layers": [1, 1, 1, 1], "width": 8,
        "embedding_size": 32, "input_size": 40, "dropout": 0.0}


def _backbone_checkpoint(path, record=None) -> str:
    """A frtrain checkpoint (weights only) of the tiny IResNet, its record replaced by ``record``."""
    model = IResNet(depth=None, layers=[1, 1, 1, 1], width=8, embedding_size=32, input_size=40)
    meta = {"backbone": dict(record or TINY), "head": {"_target_": "frtrain.heads.ArcFace"}, "num_classes": 60,
            "embedding_size": 32, "input_size": [40, 40], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save({"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "meta": meta, "model": model.state_dict()},
               path)
    return str(path)


@pytest.mark.parametrize("change", [
    {"embedding_size": 10**9}, {"input_size": 100000}, {"width": 10**6}, {"layers": [20000, 1, 1, 1]},
    {"layers": [1, 1, 1, 1, 1]}, {"embedding_size": 64},
])
def test_a_record_asking_for_another_network_is_refused_from_the_weights_in_well_under_a_second(tmp_path, change):
    """Before: embedding_size=10**9 tried a terabyte allocation, layers=[20000,1,1,1] built blocks for ~5 minutes."""
    path = _backbone_checkpoint(tmp_path / "ckpt.pt", dict(TINY, **change))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        model_files.load_model(path)
    assert time.perf_counter() - started < 5.0  # a behaviour bound (the old cost was minutes), not a benchmark
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 200  # no allocation of that size
    assert str(e.value).startswith(path) and "\n" not in str(e.value)
    assert any(w in str(e.value) for w in ("describes", "backbone record", "input_size", "does not match"))


def test_a_record_that_matches_its_weights_still_loads(tmp_path):
    backbone, meta = model_files.load_model(_backbone_checkpoint(tmp_path / "ok.pt"))
    assert backbone.embedding_size == 32 and meta["num_classes"] == 60


@pytest.mark.slow  # three command processes (the in-process readers are tested above)
def test_the_commands_answer_a_giant_record_in_one_line(tmp_path):
    path = _backbone_checkpoint(tmp_path / "giant.pt", dict(TINY, embedding_size=10**9))
    for command in (["frtrain.evaluate", f"model={path}"], ["frtrain.export", f"model={path}"],
                    ["frtrain.verify", f"model={path}", path, path]):
        done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and "giant.pt" in lines[0], done.stderr


# -- malformed fields: every reader ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real checkpoint after 2 steps, and a trainer built for the same config (to resume or fine-tune)."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_train(TINY_DATA + ["eval=none", "trainer.max_steps=2", f"output_dir={out}"])
    trainer = build_trainer(cfg, str(out))
    trainer.fit()
    path = out / "checkpoints" / "step-00000002.pt"
    return trainer, torch.load(path, weights_only=True)


def _set(obj, dotted, value):
    """A copy of ``obj`` with the entry at ``dotted`` (keys joined by '/') set to ``value`` (or deleted)."""
    obj = copy.deepcopy(obj)
    parent, keys = obj, dotted.split("/")
    for k in keys[:-1]:
        parent = parent[int(k)] if isinstance(parent, list) else parent[k]
    if value is _DELETE:
        del parent[keys[-1]]
    else:
        parent[int(keys[-1]) if isinstance(parent, list) else keys[-1]] = value
    return obj


_DELETE = object()
#: (field, hostile value, what the one line must say); the readers that read each field
MALFORMED = [
    ("model", "a string", "'model' is a str"),
    ("model/conv1.weight", "not a tensor", "model['conv1.weight'] is a str"),
    ("model/conv1.weight", torch.zeros(1).expand(10**9), "claims 1,000,000,000 elements"),
    ("meta/input_size", [100000, 100000], "meta.input_size"),
    ("meta/std", [0.5, 0.0, 0.5], "meta.std"),
    ("meta/embedding_size", "big", "meta.embedding_size"),
    ("meta/threshold", {"cosine": "high", "far": 1e-3}, "meta.threshold.cosine"),
    ("head", ["weight"], "'head' is a list"),
    ("head/weight", "rows", "head['weight'] is a str"),
]
RESUME_ONLY = [
    ("optimizer", "SGD", "'optimizer' is not an optimiser state"),
    ("optimizer/param_groups/0/lr", "0.1", "param_groups[0].lr"),
    ("optimizer/param_groups/0/momentum", [0.9], "param_groups[0].momentum"),
    ("train_state", [0, 1], "'train_state' is a list"),
    ("train_state/step", "two", "train_state.step"),
    ("train_state/bogus", 1, "unknown entry 'bogus'"),
    ("rng", "seed", "rng[0] is a str"),
    ("rng/0/torch", torch.zeros(3), "rng[0].torch"),
    ("rng/0/python", [1, 2, 3], "rng[0].python"),
    ("lr_scheduler", None, "lr_scheduler.last_epoch"),
    ("lr_scheduler/last_epoch", "5", "lr_scheduler.last_epoch"),
    ("grad_scaler", {"scale": "x"}, "grad_scaler.scale"),
    ("lr_scheduler", _DELETE, "has no 'lr_scheduler' field"),
]


def _readers(trainer):
    return {
        "frtrain-eval/verify/export": lambda p: model_files.load_model(p),
        "trainer.init_from": lambda p: trainer.checkpointer.init_weights(trainer.backbone, trainer.head, p),
        "trainer.resume": lambda p: trainer.load_state_dict(ckpt_io.load_checkpoint(p, mmap=True), p),
    }


@pytest.mark.parametrize("field, value, message", MALFORMED, ids=[m[0] + ":" + m[2][:20] for m in MALFORMED])
def test_a_malformed_field_is_one_line_naming_the_file_and_the_field_for_every_reader(tmp_path, trained, field,
                                                                                      value, message):
    trainer, ckpt = trained
    path = str(tmp_path / "bad.pt")
    torch.save(_set(ckpt, field, value), path)
    for reader, read in _readers(trainer).items():
        with pytest.raises(CheckpointError) as e:
            read(path)
        assert str(e.value).startswith(path) and message in str(e.value) and "\n" not in str(e.value), \
            f"{reader}: {e.value}"


@pytest.mark.parametrize("field, value, message", RESUME_ONLY, ids=[m[0] + ":" + m[2][:20] for m in RESUME_ONLY])
def test_a_malformed_training_field_stops_the_resume_in_one_line(tmp_path, trained, field, value, message):
    trainer, ckpt = trained
    path = str(tmp_path / "bad.pt")
    torch.save(_set(ckpt, field, value), path)
    with pytest.raises(CheckpointError) as e:
        _readers(trainer)["trainer.resume"](path)
    assert str(e.value).startswith(path) and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_schedule_state_is_a_step_not_attributes_copied_from_the_file(tmp_path, trained):
    """LambdaLR.load_state_dict copied a file's entries into the scheduler's __dict__: a file could replace its
    methods or its schedule. Only the step is read now; the schedule itself comes from the run's config."""
    trainer, ckpt = trained
    assert ckpt["lr_scheduler"] == {"last_epoch": 2}  # what is written: the number, nothing else
    hostile = _set(ckpt, "lr_scheduler", {"last_epoch": 1, "get_last_lr": "not a method", "base_lrs": [1e9],
                                          "lr_lambdas": [None], "total_steps": 10**9})
    path = str(tmp_path / "hostile.pt")
    torch.save(hostile, path)
    schedule = trainer.scheduler.lr_lambdas[0]
    trainer.load_state_dict(ckpt_io.load_checkpoint(path), path)
    assert callable(trainer.scheduler.get_last_lr) and trainer.scheduler.lr_lambdas[0] is schedule
    assert trainer.scheduler.base_lrs[0] < 1e9 and trainer.scheduler.last_epoch == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.scheduler.base_lrs[0] * schedule(1))


def test_an_exception_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    assert first_line(MemoryError()) == "MemoryError" and first_line(ValueError("\n\n  x\n")) == "x"
    path = _backbone_checkpoint(tmp_path / "ok.pt")

    def boom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(CheckpointError, match=r"ok.pt: cannot be loaded with weights_only=True \(MemoryError\)"):
        ckpt_io.load_file(path)


# -- writing: a full disk, and what a killed save leaves -----------------------------------------------------
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "step-00000010.pt"
    ckpt_io.save_atomic({"model": {"w": torch.ones(4)}}, str(path))
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 256: file write failed")

    monkeypatch.setattr(torch, "save", full)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda d: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(CheckpointError) as e:
        ckpt_io.save_atomic({"model": {"w": torch.ones(2**20)}}, str(path))
    assert str(e.value) == (f"no space left on {tmp_path} to write step-00000010.pt (needed ~4 MB, 1 MB free); the "
                            "previous checkpoint is intact")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010.pt"]


def test_a_file_size_limit_while_saving_is_one_line_from_the_real_writer(tmp_path):
    """A real write failure (RLIMIT_FSIZE, in a child process): torch's writer fails, the line names the file."""
    script = f"""
import resource, signal, torch
from frtrain.engine import checkpoint as c
from frtrain.errors import CheckpointError
c.save_atomic({{"w": torch.ones(10)}}, {str(tmp_path / 'a.pt')!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    c.save_atomic({{"w": torch.ones(1 << 20)}}, {str(tmp_path / 'a.pt')!r})
except CheckpointError as e:
    print("ONE LINE:", e)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "ONE LINE:" in done.stdout and "a.pt" in done.stdout, done.stdout + done.stderr
    assert torch.load(tmp_path / "a.pt", weights_only=True)["w"].shape == (10,)  # the previous one, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_temporaries_of_a_killed_save_are_removed_when_a_run_starts(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step-00000008.pt").write_bytes(b"kept")
    for name in ("step-00000010.pt.tmp4242", "best.pt.tmp17"):
        (checkpoints / name).write_bytes(b"x" * 1000)
    removed = ckpt_io.remove_stale_temporaries(str(checkpoints))
    assert sorted(os.path.basename(p) for p in removed) == ["best.pt.tmp17", "step-00000010.pt.tmp4242"]
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000008.pt"]
