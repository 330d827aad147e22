"""AdaFace, CurricularFace, ElasticFace: values and gradients against independent per-sample float64 computations,
over several steps so that the running statistics and the margin generator are exercised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frtrain.errors import ConfigError
from frtrain.heads import AdaFace, CurricularFace, ElasticArcFace, ElasticCosFace

from test_heads_classic import _ce, _check, reference_margin_loss

B, D, C = 8, 6, 5
Y = torch.tensor([0, 1, 2, 3, 4, 1, 0, 1])


def _x(seed, spread=(2.0, 40.0)):
    """Embeddings with norms spread over ``spread`` (AdaFace's margin depends on them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * torch.linspace(*spread, B, dtype=torch.float64).unsqueeze(1)


def _cos_row(x, w):
    return torch.stack([x / x.norm() @ (w[j] / w[j].norm()) for j in range(w.shape[0])])


# ---------------------------------------------------------------- AdaFace
def test_adaface_over_several_steps_with_its_running_norm_statistics():
    s, m, h, alpha, eps = 16.0, 0.4, 0.333, 0.01, 1e-3
    head = AdaFace(D, C, scale=s, margin=m, h=h, momentum=alpha).train()
    mean, std = 20.0, 100.0  # the reference's own running statistics
    for step in range(3):
        x = _x(step, spread=(2.0 + 5 * step, 40.0 - 3 * step))
        norms = [float(x[i].norm()) for i in range(B)]
        safe = [min(max(n, 0.001), 100.0) for n in norms]
        batch_mean = sum(safe) / B
        batch_std = math.sqrt(sum((v - batch_mean) ** 2 for v in safe) / (B - 1))  # unbiased, as torch.std
        mean, std = alpha * batch_mean + (1 - alpha) * mean, alpha * batch_std + (1 - alpha) * std
        z = [max(-1.0, min(1.0, h * (v - mean) / (std + eps))) for v in safe]

        def ref(xr, p, z=z):
            losses = []
            for i in range(B):
                cos = _cos_row(xr[i], p["weight"])
                t = int(Y[i])
                theta = torch.acos(cos[t].clamp(-1 + eps, 1 - eps))
                psi = torch.cos((theta - m * z[i]).clamp(eps, math.pi - eps)) - (m + m * z[i])
                losses.append(_ce(torch.cat([s * cos[:t], (s * psi).reshape(1), s * cos[t + 1:]]), t))
            return torch.stack(losses).mean()

        _check(head, ref, x, Y, float32=False)  # one forward: the statistics advance once per step
        assert float(head.norm_mean) == pytest.approx(mean, rel=1e-12) and float(head.norm_std) == pytest.approx(std, rel=1e-12)
    assert 0 < z.count(1.0) + z.count(-1.0) < B or max(abs(v) for v in z) < 1  # z really varies over the batch
    assert len(set(round(v, 6) for v in z)) == B


def test_adaface_low_norm_samples_get_the_larger_angular_margin():
    head = AdaFace(D, C, scale=16.0).double().eval()
    head.norm_mean.fill_(20.0)
    head.norm_std.fill_(5.0)
    norms = torch.tensor([1.0, 20.0, 35.0], dtype=torch.float64)
    z = head.quality(norms)
    assert z[0] == -1.0 and z[1] == 0.0 and 0 < z[2] < 1  # low quality -> negative z (clipped at -1)
    cos_t = torch.full((3,), 0.6, dtype=torch.float64)
    psi = head.target_logit(cos_t, norms)
    arc = math.cos(math.acos(0.6) + 0.4 * 1.0) - 0.4 * 0  # z = -1: the angular margin only, no additive one
    assert float(psi[0]) == pytest.approx(arc, abs=1e-12)


# ---------------------------------------------------------------- CurricularFace
def test_curricularface_over_several_steps_with_its_running_t():
    s, m, alpha = 16.0, 0.5, 0.01
    head = CurricularFace(D, C, scale=s, margin_rad=m, momentum=alpha).train()
    t = 0.0
    hard_seen = 0
    for step in range(3):
        x = _x(10 + step)
        with torch.no_grad():
            w = head.weight.detach().double()
            cos_t = [float(_cos_row(x[i], w)[int(Y[i])]) for i in range(B)]
        t = alpha * sum(cos_t) / B + (1 - alpha) * t  # updated before the negatives are weighted

        def ref(xr, p, t=t):
            losses = []
            for i in range(B):
                cos = _cos_row(xr[i], p["weight"])
                k = int(Y[i])
                theta = torch.acos(cos[k].clamp(-1 + 1e-7, 1 - 1e-7))
                target = torch.cos(theta + m) if float(theta) + m <= math.pi else cos[k] - m * math.sin(m)
                c = float(cos[k])
                threshold = c * math.cos(m) - math.sqrt(1 - c * c) * math.sin(m)
                row = []
                for j in range(C):
                    if j == k:
                        row.append(s * target)
                    elif float(cos[j]) > threshold:
                        row.append(s * cos[j] * (t + cos[j]))
                    else:
                        row.append(s * cos[j])
                losses.append(_ce(torch.stack(row), k))
            return torch.stack(losses).mean()

        _check(head, ref, x, Y, float32=False)
        hard_seen += float(head.stats["hard_fraction"]) > 0
        assert float(head.t) == pytest.approx(t, rel=1e-12)
    assert hard_seen > 0  # the test does exercise the hard-negative branch


# ---------------------------------------------------------------- ElasticFace
def _drawn(seed, mean, std, n, steps):
    """The margins the head's generator draws at each of ``steps`` forward passes."""
    g = torch.Generator().manual_seed(seed)
    return [torch.normal(mean, std, (n,), generator=g).double() for _ in range(steps)]


def _assign(margins: np.ndarray, cos_t: np.ndarray, order: str) -> np.ndarray:
    """ElasticFace+'s assignment, written independently: sorted margins; 'authors' gives sample i the margin at
    position argsort(-cos)[i]; 'rank' gives the k-th largest cosine the k-th smallest margin."""
    ordered = np.sort(margins)
    by_cos = np.argsort(-cos_t, kind="stable")
    if order == "authors":
        return ordered[by_cos]
    out = np.empty_like(ordered)
    for k, i in enumerate(by_cos):
        out[i] = ordered[k]
    return out


@pytest.mark.parametrize("plus, order", [(False, "authors"), (True, "authors"), (True, "rank")])
@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_elasticface_with_a_fixed_generator(kind, plus, order):
    s, mean, std = 16.0, (0.5 if kind == "arc" else 0.35), 0.2
    cls, key = (ElasticArcFace, "margin_rad") if kind == "arc" else (ElasticCosFace, "margin_cos")
    head = cls(D, C, scale=s, **{key: mean}, margin_std=std, plus=plus, plus_order=order, seed=7).train()
    draws = _drawn(7, mean, std, B, 2)
    for step in range(2):
        x = _x(20 + step)
        with torch.no_grad():
            w = head.weight.detach().double()
            cos_t = np.array([float(_cos_row(x[i], w)[int(Y[i])]) for i in range(B)])
        margins = draws[step].numpy()
        margins = _assign(margins, cos_t, order) if plus else margins

        def ref(xr, p, margins=margins):
            losses = []
            for i in range(B):
                cos = _cos_row(xr[i], p["weight"])
                k = int(Y[i])
                theta = torch.acos(cos[k].clamp(-1 + 1e-7, 1 - 1e-7))
                target = torch.cos(theta + margins[i]) if kind == "arc" else cos[k] - margins[i]
                losses.append(_ce(torch.cat([s * cos[:k], (s * target).reshape(1), s * cos[k + 1:]]), k))
            return torch.stack(losses).mean()

        _check(head, ref, x, Y, float32=False)
    if plus and order == "authors":  # the authors' permutation differs from the rank pairing on this batch
        assert not np.allclose(_assign(draws[1].numpy(), cos_t, "authors"), _assign(draws[1].numpy(), cos_t, "rank"))


def test_elasticface_outside_training_uses_the_mean_margin_and_draws_nothing():
    head = ElasticArcFace(D, C, scale=16.0, margin_rad=0.5, margin_std=0.3).double().eval()
    state = head.margin_rng.clone()
    x = _x(30)
    arc = lambda t, c, n: torch.cos(t + 0.5)  # noqa: E731
    assert torch.allclose(head(x, Y), reference_margin_loss(x, head.weight.detach(), Y, 16.0, arc), atol=1e-10)
    assert torch.equal(head.margin_rng, state)


def test_the_float32_head_follows_the_float64_reference():
    for make in (lambda: AdaFace(D, C, scale=16.0), lambda: CurricularFace(D, C, scale=16.0),
                 lambda: ElasticCosFace(D, C, scale=16.0, margin_std=0.0)):
        a = make().eval()
        b = make().double().eval()
        b.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in a.state_dict().items()})
        x = _x(40)
        assert abs(float(a(x.float(), Y)) - float(b(x, Y))) <= 1e-5 * abs(float(b(x, Y)))


@pytest.mark.parametrize("make, match", [
    (lambda: AdaFace(D, C, h=0.0), "head.h=0.0"),
    (lambda: AdaFace(D, C, margin=-0.1), "head.margin=-0.1"),
    (lambda: AdaFace(D, C, batch_stats="local"), "head.batch_stats='local'"),
    (lambda: CurricularFace(D, C, momentum=0.0), "head.momentum=0.0"),
    (lambda: ElasticArcFace(D, C, margin_std=-1.0), "head.margin_std=-1.0"),
    (lambda: ElasticCosFace(D, C, plus_order="sorted"), "head.plus_order='sorted'"),
])
def test_out_of_range_options_fail_at_construction(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_per_rank_statistics_saved_by_two_ranks_load_into_one_process_as_their_mean():
    head = AdaFace(D, C, batch_stats="per_rank")  # one process: one slot
    state = head.state_dict()
    state["norm_mean"] = torch.tensor([10.0, 30.0])  # as two ranks would have saved it
    state["norm_std"] = torch.tensor([1.0, 3.0])
    head.load_state_dict(state)
    assert float(head.norm_mean) == 20.0 and float(head.norm_std) == 2.0
