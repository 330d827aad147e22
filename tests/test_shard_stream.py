"""Training from WebDataset shards (data=wds): each sample once per epoch over ranks x loader workers, a new order
each epoch, resume at the same sample (the stream, and a training run bit-identically), corrupt samples skipped and
counted, and the plan's errors in one line."""

from __future__ import annotations

import json

import pytest
import torch

from frtrain.data.shard_stream import ShardFaces, ShardLoader, ShardStream
from frtrain.engine.build import build
from frtrain.engine.checkpoint import load_checkpoint
from frtrain.errors import ConfigError
from frtrain.tools import folder2wds
from frtrain.train import train

from conftest import TINY_DATA, compose_train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The tiny synthetic training set (60 identities x 16 images) as 16 shards of 60 samples."""
    cfg = compose_train(TINY_DATA + ["eval=none"])
    folder = build("data", cfg.data, exclude=("loader",), input_size=(40, 40)).root
    out = tmp_path_factory.mktemp("wds") / "tiny"
    assert folder2wds.main([str(folder), str(out), "--max-count", "60"]) == 0
    return out


def _keys(monkeypatch):
    """Decode to the sample's key instead of its pixels, to see which samples a batch holds."""
    monkeypatch.setattr(ShardFaces, "decode", lambda self, raw, seed: (torch.tensor([int(raw["__key__"])]),
                                                                       int(raw["cls"])))


def _epoch(faces, epoch, start=0, ranks=2, workers=2, batch=16):
    """Per rank, the keys of each batch of ``epoch`` from ``start``, in the order a DataLoader with ``workers``
    workers yields them: round-robin over the workers (all yield the same count), the unfinished round of a resumed
    epoch dropped. (Real worker processes: the torchrun test below; forking them inside this long test process is
    avoided.)"""
    out = []
    for rank in range(ranks):
        stream = ShardStream(faces, batch, seed=3, rank=rank, world_size=ranks, workers=workers)
        stream.set_epoch(epoch, start)
        per_worker = [list(stream.slot_batches_from(rank * workers + w, start // workers)) for w in range(workers)]
        order = [b for round_ in zip(*per_worker) for b in round_][start % workers:]
        out.append([b[0].flatten().tolist() for b in order])
    return out


def test_two_ranks_by_two_workers_see_every_sample_once_per_epoch_in_a_new_order(shards, monkeypatch):
    _keys(monkeypatch)
    faces = ShardFaces(str(shards), shuffle_buffer=50, augment=None)
    epochs = [_epoch(faces, e) for e in (0, 1)]
    for ranks in epochs:
        keys = [k for rank in ranks for batch in rank for k in batch]
        assert sorted(keys) == list(range(960))  # 16 shards over 4 slots: all 960, none twice
        assert len(ranks[0]) == len(ranks[1]) == 30  # equal batch counts on the ranks (DDP steps together)
    assert epochs[0][0] != epochs[1][0]  # another order in the next epoch
    assert epochs[0] == [_epoch(faces, 0)[r] for r in range(2)]  # the same seed, the same order


@pytest.mark.parametrize("start", [1, 6, 7, 29])
def test_a_resumed_epoch_continues_with_the_batch_it_would_have_taken(shards, monkeypatch, start):
    _keys(monkeypatch)
    faces = ShardFaces(str(shards), shuffle_buffer=50, augment=None)
    full, resumed = _epoch(faces, 2), _epoch(faces, 2, start=start)
    assert resumed == [rank[start:] for rank in full]


def test_a_corrupt_sample_is_skipped_counted_and_replaced_by_the_next(tmp_path):
    import webdataset as wds

    from frtrain.data.shards import INDEX

    out = tmp_path / "bad"
    out.mkdir()
    good = (tmp_path / "good.jpg")
    from frtrain.data.synthetic import draw_image

    good.write_bytes(draw_image(0, 0, 1, 0, 24))
    with wds.TarWriter(str(out / "000000.tar")) as w:
        for key in range(20):
            image = b"not an image" if key == 5 else good.read_bytes()
            w.write({"__key__": f"{key:09d}", "jpg": image, "cls": b"1"})
    (out / INDEX).write_text(json.dumps({"format": "frtrain-wds/1", "num_classes": 2, "samples": 20, "shards": [
        {"name": "000000.tar", "samples": 20, "bytes": (out / "000000.tar").stat().st_size}], "source": "test"}))
    faces = ShardFaces(str(out), shuffle_buffer=0, augment=None, input_size=(24, 24))
    stream = ShardStream(faces, 8, workers=0)
    batches = list(ShardLoader(stream, 0, pin_memory=False))
    assert len(batches) == 2 and all(len(b[1]) == 8 for b in batches)
    assert batches[0][2] == [5]  # the bad sample's index, for corrupt_images.txt
    assert faces.path(5).endswith("000000.tar sample 5")


def test_the_plan_refuses_more_slots_than_shards_in_one_line(shards):
    faces = ShardFaces(str(shards))
    with pytest.raises(ConfigError, match=r"16 shards for 4 ranks x 8 loader workers"):
        ShardStream(faces, 16, world_size=4, workers=8)
    with pytest.raises(ConfigError, match="data.url="):
        ShardFaces(str(shards), url="pipe:cat /data/000000.tar")


WDS = ["data=wds", "data.loader.num_workers=0", "backbone.input_size=40", "trainer.progress=false", "eval=none",
       "trainer.max_steps=12", "trainer.checkpoint_every=6", "trainer.keep_last=5", "data.loader.batch_size=16",
       "trainer.log_every=1"]


def test_training_on_shards_resumes_bit_identically(tmp_path, shards):
    common = WDS + [f"data.root={shards}", "data.shuffle_buffer=100"]
    full = tmp_path / "full"
    train(compose_train(common + [f"output_dir={full}"]))
    step6 = full / "checkpoints" / "step-00000006.pt"
    resumed = tmp_path / "resumed"
    train(compose_train(common + [f"output_dir={resumed}", f"trainer.resume={step6}"]))
    a = load_checkpoint(str(full / "checkpoints" / "step-00000012.pt"))
    b = load_checkpoint(str(resumed / "checkpoints" / "step-00000012.pt"))
    for part in ("model", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    loss = lambda run: [e["loss"] for e in json.loads((run / "results.json").read_text())["history"]["loss"]]  # noqa: E731
    assert loss(full)[6:] == loss(resumed)


def test_data_wds_refuses_eval_analysis_before_any_work(shards):
    from frtrain.config import validate_train

    with pytest.raises(ConfigError, match="eval.analysis reads training images by index; data=wds streams them"):
        validate_train(compose_train(WDS + [f"data.root={shards}", "eval.analysis=[pairs]"]))



@pytest.mark.slow  # torchrun jobs of 2 ranks
def test_a_two_rank_gloo_run_on_shards_resumes_bit_identically(tmp_path, shards):
    import subprocess
    import sys

    def torchrun(name, extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "frtrain.train", *[o for o in WDS if not o.startswith(("trainer.checkpoint_every", "data.loader.num"))],
               f"data.root={shards}", "data.loader.num_workers=2", "trainer.threads=1", "trainer.checkpoint_every=5", f"output_dir={tmp_path / name}", *extra]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return tmp_path / name

    full = torchrun("full", [])
    # 2 ranks x 2 real loader workers; step 5 is mid-round (5 = 2 x 2 + 1): the resumed loader drops one batch
    resumed = torchrun("resumed", [f"trainer.resume={full / 'checkpoints' / 'step-00000005.pt'}"])
    a = load_checkpoint(str(full / "checkpoints" / "step-00000012.pt"))
    b = load_checkpoint(str(resumed / "checkpoints" / "step-00000012.pt"))
    for part in ("model", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert a["train_state"] == b["train_state"]
