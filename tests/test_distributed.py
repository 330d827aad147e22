"""Sharded heads on 2 gloo processes (CPU): loss and gradients equal the single-process head, for every head."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frtrain.engine import distributed as D
from frtrain.engine.build import build

from conftest import compose_train

HEADS = ["softmax", "normface", "sphereface", "cosface", "arcface", "combined", "magface", "center",
         "npt", "unpg", "intraloss", "ie", "marginloss"]
C, d, B, WORLD = 11, 8, 6, 2  # 11 classes over 2 ranks: uneven slices of 6 and 5


def _head(name: str):
    cfg = compose_train([f"head={name}", "data=folder", "data.root=unused"]).head
    extra = {"k": 3} if name == "npt" else {}
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
                    "grads": {k: p.grad for k, p in head.named_parameters()}, "start": start, "count": count},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", HEADS)
def test_sharded_head_equals_the_single_process_head(tmp_path, name):
    torch.manual_seed(1)
    ref_head = _head(name)
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
            if k in ref_head.class_parameters and p.shape[0] == C:
                torch.testing.assert_close(g, p.grad[s:s + n], rtol=1e-9, atol=1e-12, msg=f"{name}.{k} rows")
            else:  # replicated parameters (e.g. a learnt scale): each rank holds its share, they sum up
                other = torch.load(tmp_path / f"rank{1 - rank}.pt", weights_only=True)["grads"][k]
                torch.testing.assert_close(g + other, p.grad, rtol=1e-9, atol=1e-12, msg=f"{name}.{k}")
