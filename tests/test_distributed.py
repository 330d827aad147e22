"""Sharded heads on 2 gloo processes (CPU): loss and gradients equal the single-process head, for every head."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frtrain import distributed as D
from frtrain.engine.build import build

from conftest import compose_train

pytestmark = pytest.mark.slow  # gloo processes: every head sharded over 2 ranks

HEADS = ["softmax", "normface", "sphereface", "cosface", "arcface", "combined", "magface", "center",
         "npt", "unpg", "intraloss", "ie", "marginloss", "adaface", "curricularface", "elasticface_arc_plus",
         "elasticface_cos"]
C, d, B, WORLD = 11, 8, 6, 2  # 11 classes over 2 ranks: uneven slices of 6 and 5


def _head(name: str):
    """Head ``name`` (``name:chunked`` for its chunked path, 2 classes per chunk: 6 or 5 local classes)."""
    name, _, path = name.partition(":")
    cfg = compose_train([f"head={name}", "data=folder", "data.root=unused"]).head
    extra = {"k": 3} if name == "npt" else {}
    extra["chunk_size"] = 2 if path == "chunked" else 0
    return build("head", cfg, embedding_size=d, num_classes=C, **extra).double()


def _inputs():
    """The global batch (W*B, d) float64 and its labels: repeated identities and every rank's classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * B, d, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 3, 10, 5, 6, 1, 7, 8, 6])
    return x, y


def _full_parameters(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.detach().clone() for k, v in _head(name).named_parameters()}


def _worker(rank: int, name: str, init_file: str, out_dir: str) -> None:
    full = _full_parameters(name)  # all C rows: built before the process group exists
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        head = _head(name)
        start, count = D.shard_range(C)
        with torch.no_grad():
            for k, p in head.named_parameters():
                rows = k in head.class_parameters and full[k].shape[0] == C
                p.copy_(full[k][start:start + count] if rows else full[k])
        x, y = _inputs()
        x_local = x[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        loss = head(x_local, y[rank * B:(rank + 1) * B])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_x": x_local.grad,
                    "grads": {k: p.grad for k, p in head.named_parameters()},
                    "after": {k: p.detach() for k, p in head.named_parameters()},
                    "buffers": {k: b.detach().clone() for k, b in head.named_buffers()}, "start": start, "count": count},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.shutdown()


CHUNKED = [f"{h}:chunked" for h in ("softmax", "arcface", "center", "npt", "unpg", "ie", "marginloss", "adaface",
                                    "curricularface", "elasticface_arc_plus")]


@pytest.mark.parametrize("name", HEADS + CHUNKED)
def test_sharded_head_equals_the_single_process_head(tmp_path, name):
    """Also the chunked path (``:chunked``) against the single-process plain head."""
    torch.manual_seed(1)
    ref_head = _head(name.split(":")[0])
    x, y = _inputs()
    x = x.clone().requires_grad_(True)
    ref_loss = ref_head(x, y)
    ref_loss.backward()
    mp.spawn(_worker, args=(name, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        s, n = got["start"], got["count"]
        assert n == (6 if rank == 0 else 5)
        torch.testing.assert_close(got["loss"], ref_loss.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["grad_x"], x.grad[rank * B:(rank + 1) * B], rtol=1e-9, atol=1e-12)
        for k, p in ref_head.named_parameters():
            g = got["grads"][k]
            if not p.requires_grad:  # moved by the head itself (center loss's centres): the same rows after the step
                torch.testing.assert_close(got["after"][k], p.detach()[s:s + n], rtol=1e-10, atol=1e-12, msg=f"{name}.{k}")
                continue
            if k in ref_head.class_parameters and p.shape[0] == C:
                torch.testing.assert_close(g, p.grad[s:s + n], rtol=1e-9, atol=1e-12, msg=f"{name}.{k} rows")
            else:  # replicated parameters (e.g. a learnt scale): each rank holds its share, they sum up
                other = torch.load(tmp_path / f"rank{1 - rank}.pt", weights_only=True)["grads"][k]
                torch.testing.assert_close(g + other, p.grad, rtol=1e-9, atol=1e-12, msg=f"{name}.{k}")
        for k, b in ref_head.named_buffers():  # running statistics, margin generators: reduced over ranks
            torch.testing.assert_close(got["buffers"][k], b, rtol=1e-10, atol=1e-12, msg=f"{name} buffer {k}")


# -- DDP with a sharded head: the backbone's gradient and the clipping norm ------------------------------

def _backbone():
    torch.manual_seed(2)
    return torch.nn.Linear(5, d).double()


def _images():
    return torch.randn(WORLD * B, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    full = _full_parameters("arcface")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        backbone = _backbone()
        model = D.wrap_ddp(backbone, torch.device("cpu"))
        head = _head("arcface")
        start, count = D.shard_range(C)
        with torch.no_grad():
            head.weight.copy_(full["weight"][start:start + count])
        _, y = _inputs()
        images = _images()[rank * B:(rank + 1) * B]
        loss = head(model(images), y[rank * B:(rank + 1) * B])
        loss.backward()
        norm = D.clip_grad_norm(list(backbone.parameters()), [head.weight], max_norm=1e9)
        torch.save({"grads": {k: p.grad for k, p in backbone.named_parameters()}, "norm": norm},
                   os.path.join(out_dir, f"ddp{rank}.pt"))
    finally:
        D.shutdown()


def test_ddp_backbone_gradient_and_clip_norm_equal_one_process(tmp_path):
    """The summing DDP hook: 2 ranks' backbone gradient is that of the global loss, not 1/W of it."""
    backbone, head = _backbone(), _head("arcface")
    with torch.no_grad():
        head.weight.copy_(_full_parameters("arcface")["weight"])
    _, y = _inputs()
    head(backbone(_images()), y).backward()
    params = list(backbone.parameters()) + [head.weight]
    ref_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in params)))
    mp.spawn(_ddp_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"ddp{rank}.pt", weights_only=True)
        for k, p in backbone.named_parameters():
            torch.testing.assert_close(got["grads"][k], p.grad, rtol=1e-9, atol=1e-12, msg=f"backbone {k}")
        assert got["norm"] == pytest.approx(ref_norm, rel=1e-9)


# -- checkpoints of a sharded head: whole on disk, resharded on load ------------------------------------

def _center_model(full):
    """A head with centres (IE loss: weight, bias and centres, centres in their own optimiser group) holding
    this rank's slice of ``full``, and an SGD optimiser with momentum that also steps a backbone-like tensor."""
    head = _head("ie")
    start, count = D.shard_range(C)
    with torch.no_grad():
        for k, p in head.named_parameters():
            p.copy_(full[k][start:start + count])
    groups = [{"params": [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]}] + head.param_groups()
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return head, optimizer


def _step(head, optimizer, rank: int, world: int) -> None:
    x, y = _inputs()
    per = x.shape[0] // world
    loss = head(x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
    (loss + optimizer.param_groups[0]["params"][0].sum()).backward()
    optimizer.step()


def _shard_worker(rank: int, world: int, init_file: str, out_dir: str, mode: str) -> None:
    from frtrain.engine import sharded_state

    full = _full_parameters("ie")  # all C rows: built before the process group exists
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        head, optimizer = _center_model(full)
        if mode == "save":
            _step(head, optimizer, rank, world)
        else:  # load the whole state written by 2 ranks, then write it whole again
            whole = torch.load(os.path.join(out_dir, "whole.pt"), weights_only=True)
            head.load_state_dict(sharded_state.load_head(head, whole["head"], "whole.pt"))
            optimizer.load_state_dict(sharded_state.load_optimizer(optimizer, head, whole["optimizer"], "whole.pt"))
            torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "range": D.shard_range(C)},
                       os.path.join(out_dir, f"local{rank}.pt"))
        saved = {"head": sharded_state.save_head(head), "optimizer": sharded_state.save_optimizer(optimizer, head)}
        if rank == 0:
            torch.save(saved, os.path.join(out_dir, "whole.pt" if mode == "save" else "again.pt"))
    finally:
        D.shutdown()


def test_a_sharded_checkpoint_is_whole_and_reshards_on_another_world_size(tmp_path):
    from frtrain.engine import sharded_state

    head, optimizer = _center_model(_full_parameters("ie"))  # one process: all 11 rows
    _step(head, optimizer, 0, 1)
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "rdzv2"), str(tmp_path), "save"), nprocs=2, join=True)
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    # saved by 2 ranks (6 + 5 rows) = the one-process head and momentum after the same step
    for k, v in head.state_dict().items():
        torch.testing.assert_close(whole["head"][k], v, rtol=1e-10, atol=1e-12, msg=k)
    ref_state = optimizer.state_dict()["state"]
    assert sorted(whole["optimizer"]["state"]) == sorted(ref_state) == [0, 1, 2, 3]
    for i, entry in ref_state.items():
        torch.testing.assert_close(whole["optimizer"]["state"][i]["momentum_buffer"], entry["momentum_buffer"],
                                   rtol=1e-10, atol=1e-12, msg=f"momentum of parameter {i}")
    # 3 ranks (4 + 4 + 3 rows) each take their slice, and write the same whole state again
    mp.spawn(_shard_worker, args=(3, str(tmp_path / "rdzv3"), str(tmp_path), "load"), nprocs=3, join=True)
    for rank in range(3):
        local = torch.load(tmp_path / f"local{rank}.pt", weights_only=True)
        start, count = local["range"]
        assert count == (4 if rank < 2 else 3)
        for k in ("weight", "bias", "centers"):
            assert torch.equal(local["head"][k], whole["head"][k][start:start + count])
        for i in (1, 2, 3):
            assert torch.equal(local["optimizer"]["state"][i]["momentum_buffer"],
                               whole["optimizer"]["state"][i]["momentum_buffer"][start:start + count])
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    for k, v in whole["head"].items():
        assert torch.equal(again["head"][k], v), k
    # and one process loads it whole
    head1, optimizer1 = _center_model(_full_parameters("ie"))
    head1.load_state_dict(sharded_state.load_head(head1, whole["head"], "whole.pt"))
    optimizer1.load_state_dict(sharded_state.load_optimizer(optimizer1, head1, whole["optimizer"], "whole.pt"))
    assert torch.equal(optimizer1.state_dict()["state"][3]["momentum_buffer"],
                       whole["optimizer"]["state"][3]["momentum_buffer"])


# -- fp16 loss scaling: an overflow in one rank's class rows skips the step on every rank ----------------

def _scaler_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = torch.nn.Parameter(torch.ones(3))  # this rank's class rows
        optimizer = torch.optim.SGD([rows], lr=0.1)
        scaler = D.grad_scaler("cpu", enabled=True)
        scaler.scale(torch.ones(()))  # the scale is created on first use
        rows.grad = torch.tensor([1.0, 1.0, float("inf") if rank == 1 else 1.0])
        scaler.step(optimizer)
        scaler.update()
        torch.save({"rows": rows.detach(), "scale": scaler.get_scale()}, os.path.join(out_dir, f"scaler{rank}.pt"))
    finally:
        D.shutdown()


def test_an_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    mp.spawn(_scaler_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"scaler{rank}.pt", weights_only=True)
        assert torch.equal(got["rows"], torch.ones(3)), f"rank {rank} stepped"
        assert got["scale"] == 65536.0 * 0.5
