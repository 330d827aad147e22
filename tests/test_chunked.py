"""The chunked path (frtrain/heads/chunked.py) gives every head the plain path's loss and gradients (float64, 1e-10)
without ever holding an N x C matrix; ``auto`` picks it above the memory budget; class vectors can be bf16/fp16."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from frtrain.config import compose, group_options
from frtrain.engine.build import build
from frtrain.heads import ArcFace

N, D, C = 12, 6, 10
#: labels on both sides of the chunk borders of chunk sizes 3, 4 and 5, and in the last chunk of 1 class (9)
LABELS = torch.tensor([0, 2, 3, 4, 5, 7, 8, 9, 9, 3, 0, 6])
HEADS = group_options("head")


def _heads(name: str, chunk: int, sample_rate: float = 1.0):
    node = compose("train", [f"head={name}", "data=folder"]).head
    extra = {"k": 3} if name == "npt" else {}
    torch.manual_seed(3)
    plain = build("head", node, embedding_size=D, num_classes=C, chunk_size=0, sample_rate=sample_rate, **extra)
    chunked = build("head", node, embedding_size=D, num_classes=C, chunk_size=chunk, sample_rate=sample_rate, **extra)
    chunked.load_state_dict(plain.state_dict())
    return plain.double().train(), chunked.double().train()


def _step(head, x, seed):
    torch.manual_seed(seed)  # Partial FC draws its negatives from the global generator
    xr = x.clone().requires_grad_(True)
    loss = head(xr, LABELS)
    params = [p for p in head.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [xr] + params)
    return loss.detach(), grads, {k: b.clone() for k, b in head.named_buffers()}


@pytest.mark.parametrize("chunk", [5, 3, 4])
@pytest.mark.parametrize("name", HEADS)
def test_the_chunked_path_equals_the_plain_one_in_float64(name, chunk):
    plain, chunked = _heads(name, chunk)
    for step in range(2):  # the second step sees the running statistics / margin generator the first one moved
        x = torch.randn(N, D, generator=torch.Generator().manual_seed(step), dtype=torch.float64) * 4
        a, b = _step(plain, x, step), _step(chunked, x, step)
        torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-10, msg=f"{name} loss")
        for i, (ga, gb) in enumerate(zip(a[1], b[1])):
            torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-10, msg=f"{name} gradient {i}")
        for k in a[2]:
            torch.testing.assert_close(b[2][k], a[2][k], rtol=0, atol=1e-12, msg=f"{name} buffer {k}")
    assert chunked.chunks(N, C) == chunk and plain.chunks(N, C) is None


@pytest.mark.parametrize("name", ["arcface", "softmax", "npt", "unpg", "marginloss", "ie", "curricularface"])
def test_the_chunked_path_equals_the_plain_one_with_partial_fc(name):
    plain, chunked = _heads(name, 3, sample_rate=0.6)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 4
    a, b = _step(plain, x, 11), _step(chunked, x, 11)
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-10)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-10)


class _LargestTensor(TorchDispatchMode):
    """Records the shape of every tensor an operator returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []
        self.allocated = []  # shapes of the outputs of operators that are not views (detach, view, ...)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
                if not func.is_view:
                    self.allocated.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("name", ["arcface", "softmax", "npt", "marginloss", "curricularface"])
def test_the_chunked_path_never_makes_an_n_by_c_tensor(name):
    n, c, d = 64, 20_000, 4  # N x C = 1.28M numbers; the class vectors (C x d) are 80k
    node = compose("train", [f"head={name}", "data=folder"]).head
    head = build("head", node, embedding_size=d, num_classes=c, chunk_size=1000)
    x = torch.randn(n, d, requires_grad=True)
    labels = torch.randint(0, c, (n,))
    with _LargestTensor() as probe:
        head(x, labels).backward()
    # nothing bigger than one N x 1000 block, except the class vectors' own size (their gradient, C x d or C)
    big = [s for s in probe.shapes if torch.Size(s).numel() > n * 1000 and s not in ((c, d), (c,))]
    assert not big, big[:3]
    plain = build("head", node, embedding_size=d, num_classes=c, chunk_size=0)
    with _LargestTensor() as probe:
        plain(x, labels).backward()
    assert (n, c) in probe.shapes  # the probe does see the plain path's N x C matrices


@pytest.mark.parametrize("name", ["arcface", "cosface", "magface", "unpg", "adaface", "elasticface_arc_plus"])
def test_margin_heads_make_one_class_sized_tensor_their_gradient(name):
    """The chunked margin softmax writes the class vectors' gradient once: the target rows come out of the same
    chunked pass, so no second dense C x d gradient (of a separate gather) is summed into it."""
    n, c, d = 64, 20_000, 8
    node = compose("train", [f"head={name}", "data=folder"]).head
    head = build("head", node, embedding_size=d, num_classes=c, chunk_size=1000)
    x = torch.randn(n, d, requires_grad=True)
    with _LargestTensor() as probe:
        head(x, torch.randint(0, c, (n,))).backward()
    assert probe.allocated.count((c, d)) == 1, probe.allocated.count((c, d))
    assert head.weight.grad is not None and head.weight.grad.shape == (c, d)


def test_auto_keeps_the_plain_path_for_the_default_run_and_chunks_above_the_budget():
    head = build("head", compose("train", []).head, embedding_size=128, num_classes=200)
    assert head.chunk_size == "auto" and head.chunks(64, 200) is None  # the synthetic default: unchanged
    big = ArcFace(512, 100_000, memory_budget_mb=256)
    chunk = big.chunks(512, 100_000)  # 5 x 512 x 100k float32 = 977 MiB of plain matrices > 256
    assert chunk is not None and 256 <= chunk < 100_000
    assert ArcFace(512, 1000, memory_budget_mb=4096).chunks(512, 100_000) is None  # a bigger budget: plain


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 1e-3), ("float16", 1e-3)])
def test_half_precision_class_vectors_give_the_float32_loss_within_1e_3(dtype, tolerance):
    torch.manual_seed(0)
    full = ArcFace(64, 5000, scale=64.0, chunk_size=700)
    half = ArcFace(64, 5000, scale=64.0, chunk_size=700, class_dtype=dtype)
    assert half.weight.dtype == getattr(torch, dtype) and half.weight.element_size() == 2
    with torch.no_grad():
        half.weight.copy_(full.weight)
    x = torch.randn(32, 64, requires_grad=True)
    labels = torch.randint(0, 5000, (32,))
    a, b = full(x, labels), half(x, labels)
    fa, fb = a.item(), b.item()
    assert abs(fb - fa) <= tolerance * abs(fa), (fa, fb)
    b.backward()
    assert half.weight.grad.dtype == half.weight.dtype and torch.isfinite(half.weight.grad.float()).all()
    assert x.grad is not None and x.grad.dtype == torch.float32
