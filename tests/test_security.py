"""Files from users are data: a checkpoint whose model record names code is refused by every reader, and the
code never runs. Each crafted record is first shown to run its command through Hydra's instantiate (what
rebuilding a model from a file's record did before), so the test fails if a record stops being a threat."""

from __future__ import annotations

import base64
import functools
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from frtrain.backbones import IResNet
from frtrain.config import compose
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine import model_files
from frtrain.errors import CheckpointError

from conftest import TINY_DATA, compose_eval, compose_train

TINY_BACKBONE = {"_target_": "frtrain.backbones.IResNet", "depth": None, "layers": [1, 1, 1, 1], "width": 16,
                 "embedding_size": 128, "input_size": 40, "dropout": 0.0}


class _Shell:
    """A pickle that runs a shell command when loaded (directly, or through a functools.partial)."""

    def __init__(self, cmd, via_partial=False):
        self.cmd, self.via_partial = cmd, via_partial

    def __reduce__(self):
        if self.via_partial:
            return (functools.partial(os.system, self.cmd), ())
        return (os.system, (self.cmd,))


def _bytes_of(obj) -> dict:
    """A record node that rebuilds the pickled bytes of ``obj`` (base64 in the record)."""
    return {"_target_": "io.BytesIO",
            "initial_bytes": {"_target_": "base64.b64decode", "s": base64.b64encode(pickle.dumps(obj)).decode()}}


def crafted_records(marker: str) -> dict[str, dict]:
    """Hydra 1.3.8 blocklists os.system and friends as targets; these get through it all the same."""
    cmd = f"touch {marker}"
    return {
        "a target of its own": {"_target_": "pathlib.Path.touch",
                                "self": {"_target_": "pathlib.Path", "_args_": [marker]}},
        "a nested target inside an allowed backbone": dict(TINY_BACKBONE, dropout={
            "_target_": "shutil.copyfile", "src": __file__, "dst": marker}),
        "numpy.load of pickled bytes": {"_target_": "numpy.load", "file": _bytes_of(_Shell(cmd)),
                                        "allow_pickle": True},
        "numpy.load of a pickled functools.partial": dict(TINY_BACKBONE, width={
            "_target_": "numpy.load", "file": _bytes_of(_Shell(cmd, via_partial=True)), "allow_pickle": True}),
        "torch.load of pickled bytes": {"_target_": "torch.load", "f": _bytes_of(_Shell(cmd)), "weights_only": False},
    }


def _write_checkpoint(path, record) -> str:
    model = IResNet(depth=None, layers=[1, 1, 1, 1], width=16, embedding_size=128, input_size=40)
    meta = {"backbone": record, "head": {"_target_": "frtrain.heads.ArcFace"}, "num_classes": 60,
            "embedding_size": 128, "input_size": [40, 40], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save({"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "meta": meta, "model": model.state_dict()},
               path)
    return str(path)


@pytest.mark.parametrize("kind", list(crafted_records("x")))
def test_the_crafted_record_really_runs_code_through_instantiate(tmp_path, kind):
    marker = tmp_path / "marker"
    try:
        instantiate(crafted_records(str(marker))[kind])
    except Exception:
        pass  # most fail after the command ran (wrong arguments downstream)
    assert marker.exists(), f"{kind}: the record no longer demonstrates the threat"


@pytest.mark.parametrize("kind", list(crafted_records("x")))
def test_every_reader_of_checkpoints_refuses_the_record_and_nothing_runs(tmp_path, kind):
    from frtrain.evaluate import evaluate
    from frtrain.export import export
    from frtrain.train import train

    marker = tmp_path / "marker"
    ckpt = _write_checkpoint(tmp_path / "crafted.pt", crafted_records(str(marker))[kind])
    readers = {
        "frtrain-eval": lambda: evaluate(compose_eval([f"model={ckpt}", f"output_dir={tmp_path}/eval"])),
        "frtrain-export": lambda: export(compose("export", [f"model={ckpt}", f"out={tmp_path}/x.onnx"])),
        "trainer.init_from": lambda: train(compose_train(TINY_DATA + [f"trainer.init_from={ckpt}", "eval=none",
                                                                      "trainer.max_steps=1", f"output_dir={tmp_path}/a"])),
        "trainer.resume": lambda: train(compose_train(TINY_DATA + [f"trainer.resume={ckpt}", "eval=none",
                                                                   "trainer.max_steps=1", f"output_dir={tmp_path}/b"])),
        "load_checkpoint": lambda: ckpt_io.load_checkpoint(ckpt),
    }
    for reader, run in readers.items():
        with pytest.raises(CheckpointError, match=rf"crafted.pt: refused: its backbone record") as err:
            run()
        assert "\n" not in str(err.value), reader
        assert not marker.exists(), f"{reader} ran the record's command"


def test_the_command_line_refuses_in_one_line_naming_the_file_and_the_target(tmp_path):
    marker = tmp_path / "marker"
    ckpt = _write_checkpoint(tmp_path / "crafted.pt", crafted_records(str(marker))["torch.load of pickled bytes"])
    for module in ("frtrain.evaluate", "frtrain.export"):
        r = subprocess.run([sys.executable, "-m", module, f"model={ckpt}", f"hydra.run.dir={tmp_path}/run"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines() == [
            f"{module.replace('frtrain.evaluate', 'frtrain-eval').replace('frtrain.export', 'frtrain-export')}: error: "
            f"{ckpt}: refused: its backbone record names 'torch.load', which is not one of frtrain's backbones "
            "(frtrain.backbones.FaceViT, frtrain.backbones.IResNet, frtrain.backbones.MobileFaceNet, frtrain.backbones.TimmBackbone); "
            "a checkpoint cannot choose code to run"]
        assert not marker.exists()


def test_an_honest_record_still_rebuilds_its_backbone_with_the_same_weights(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "honest.pt", TINY_BACKBONE)
    model, meta = model_files.load_model(ckpt)
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("record, match", [
    (dict(TINY_BACKBONE, width=[16, {"_partial_": True}]), r"has the key backbone.width\[1\]._partial_"),
    (dict(TINY_BACKBONE, frobnicate=1), r"has 'frobnicate', which frtrain.backbones.IResNet does not take"),
    ({"_target_": "frtrain.backbones.TimmBackbone", "name": "resnet18", "pretrained_file": "/etc/passwd"},
     r"its timm backbone record names 'pretrained_file'"),
    ({"_target_": "frtrain.backbones.TimmBackbone", "name": "resnet18", "kwargs": {"checkpoint_path": "/x.pth"}},
     r"its timm backbone record names 'checkpoint_path'"),
    (["not", "a", "mapping"], r"its backbone record is a list, expected a mapping"),
])
def test_records_with_anything_but_plain_arguments_are_refused(tmp_path, record, match):
    ckpt = _write_checkpoint(tmp_path / "odd.pt", record)
    with pytest.raises(CheckpointError, match=match):
        ckpt_io.load_checkpoint(ckpt)


def test_the_allow_list_is_the_backbone_registry_and_every_backbone_config_is_in_it():
    """One registry (frtrain.backbones.BACKBONES): a new backbone registered there can be scored from its
    checkpoints without an edit of the allow-list; a config naming an unregistered class fails here."""
    from frtrain.backbones import BACKBONES
    from frtrain.config import group_options
    from frtrain.engine.model_record import allowed_backbones

    allowed = allowed_backbones()
    assert set(allowed.values()) == set(BACKBONES)
    for name in group_options("backbone"):
        target = compose("train", [f"backbone={name}"]).backbone["_target_"]
        assert target in allowed, f"configs/backbone/{name}.yaml names {target}, not in frtrain.backbones.BACKBONES"
