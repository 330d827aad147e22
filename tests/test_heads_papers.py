"""The five paper heads: values and gradients against independent per-sample computations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from frtrain.errors import ConfigError
from frtrain.heads import UNPG, ArcFace, ArcMargin, CosFace, CosMargin, IELoss, IntraLoss, MagFace, MagFaceMargin, MarginLoss, NPTLoss
from frtrain.heads.npt import npt_loss
from frtrain.heads.unpg import box_whisker_filter

from test_heads_classic import _ce, _check, arcface_psi, reference_margin_loss

B, D, C = 8, 6, 5
Y = torch.tensor([0, 1, 2, 3, 4, 1, 0, 1])


def _x(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=torch.float64) * 2.0


def _cos_row(xi, w):
    xi = xi / xi.norm()
    return torch.stack([xi @ (w[j] / w[j].norm()) for j in range(w.shape[0])])


# ---------------------------------------------------------------- NPT
def test_npt_check_value_of_the_spec():
    cos = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.8, 0.5], [0.1, 0.4, 0.7], [0.6, 0.55, 0.2]])
    per_sample = npt_loss(cos, torch.tensor([0, 1, 2, 0]), k=1, delta=0.5, radius=1.0)
    assert torch.allclose(per_sample, torch.tensor([0.0, 0.4, 0.4, 0.9]), atol=1e-6)
    assert per_sample.mean().item() == pytest.approx(0.425, abs=1e-6)


def npt_reference(x, w, y, k, delta, r, fill):
    out = []
    for i in range(x.shape[0]):
        cos = _cos_row(x[i], w)
        t = int(y[i])
        others = [cos[j] for j in range(w.shape[0]) if j != t]
        if fill == "zero":
            others.append(torch.zeros((), dtype=cos.dtype))
        nearest = sorted(others, key=lambda c: float(c.detach()), reverse=True)[:k]
        out.append(2 * r**2 * sum(torch.clamp(c - cos[t] + delta, min=0) for c in nearest))
    return torch.stack(out).mean()


@pytest.mark.parametrize("k, delta, r", [(1, 0.5, 1.0), (3, 0.3, 2.0)])
def test_npt_value_and_gradients(k, delta, r):
    x = _x(0)
    head = NPTLoss(D, C, k=k, delta=delta, radius=r)
    _check(head, lambda xr, p: npt_reference(xr, p["weight"], Y, k, delta, r, "neg_inf"), x, Y)


def test_npt_target_column_is_excluded_and_zero_fill_reproduces_the_authors_code():
    # every negative cosine < 0: the authors' 0 fill wins the top-1 and adds [0 - cos_t + delta]_+
    cos = torch.tensor([[0.3, -0.2, -0.5], [-0.4, 0.2, -0.1]])
    labels = torch.tensor([0, 1])
    excluded = npt_loss(cos, labels, k=1, delta=0.5, radius=1.0, target_fill="neg_inf")
    authors = npt_loss(cos, labels, k=1, delta=0.5, radius=1.0, target_fill="zero")
    assert torch.allclose(excluded, torch.tensor([2 * (-0.2 - 0.3 + 0.5), 2 * (-0.1 - 0.2 + 0.5)]).clamp_min(0))
    assert torch.allclose(authors, torch.tensor([2 * (0 - 0.3 + 0.5), 2 * (0 - 0.2 + 0.5)]))
    x = _x(1)
    head = NPTLoss(D, C, k=2, target_fill="zero")
    _check(head, lambda xr, p: npt_reference(xr, p["weight"], Y, 2, 0.5, 1.0, "zero"), x, Y)


# ---------------------------------------------------------------- UNPG
def unpg_filter_reference(values: list[float], r: float) -> list[float]:
    s = sorted(values)
    q1, q3 = s[int(0.25 * len(s))], s[int(0.75 * len(s))]
    return [v for v in values if q1 - r * (q3 - q1) <= v <= q3 + r * (q3 - q1)]


def test_box_whisker_filter_keeps_exactly_the_values_inside_the_whiskers():
    values = torch.tensor([0.10, -0.90, 0.20, 0.15, 0.30, 0.95, 0.12, 0.18, 0.25, 0.22, -0.04, -0.07], dtype=torch.float64)
    # sorted: -0.9 -0.07 -0.04 0.1 0.12 0.15 0.18 0.2 0.22 0.25 0.3 0.95; L = 12: Q1 = s[3] = 0.1, Q3 = s[9] = 0.25
    # whiskers (r = 1): [0.1 - 0.15, 0.25 + 0.15] = [-0.05, 0.4]. Interpolated quartiles (0.065, 0.2275)
    # would reach down to -0.0975 and keep -0.07: this data tells the two apart.
    kept = box_whisker_filter(values, r=1.0)
    assert kept.tolist() == pytest.approx([0.10, 0.20, 0.15, 0.30, 0.12, 0.18, 0.25, 0.22, -0.04])
    assert kept.tolist() == pytest.approx(unpg_filter_reference(values.tolist(), 1.0))
    assert box_whisker_filter(values, r=0.0).tolist() == pytest.approx([v for v in values.tolist() if 0.1 <= v <= 0.25])


def unpg_materialised(x, w, y, s, psi, r, regulariser=None):
    """CE over a full row [s*cos_ij (target s*psi), s*t for every kept batch negative t]."""
    n = x.shape[0]
    xn = x / x.norm(dim=1, keepdim=True)
    negatives = [xn[a] @ xn[b] for a in range(n) for b in range(a + 1, n) if int(y[a]) != int(y[b])]
    kept_values = unpg_filter_reference([float(t.detach()) for t in negatives], r)
    kept = [t for t in negatives if float(t) in kept_values]
    losses = []
    for i in range(n):
        cos = _cos_row(x[i], w)
        t = int(y[i])
        theta = torch.acos(cos[t].clamp(-1 + 1e-7, 1 - 1e-7))
        row = torch.cat([s * cos[:t], (s * psi(theta, cos[t], x[i].norm())).reshape(1), s * cos[t + 1 :],
                         s * torch.stack(kept) if kept else torch.zeros(0, dtype=x.dtype)])
        loss = _ce(row, t)
        if regulariser is not None:
            loss = loss + regulariser(x[i].norm())
        losses.append(loss)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("base, psi", [
    (lambda: ArcMargin(0.5), arcface_psi(0.5)),
    (lambda: CosMargin(0.35), lambda t, c, n: c - 0.35),
])
def test_unpg_memory_light_form_equals_the_materialised_form(base, psi):
    x = _x(2)
    head = UNPG(D, C, base=base(), scale=16.0, r=1.5)
    _check(head, lambda xr, p: unpg_materialised(xr, p["weight"], Y, 16.0, psi, 1.5), x, Y)
    assert 0 < float(head.stats["negatives"]) <= 25  # 28 pairs, 3 of them same-identity


def test_unpg_over_magface():
    x = _x(3) * 8
    head = UNPG(D, C, base=MagFaceMargin(l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0), scale=16.0, r=1.0)
    mag = head.base

    def psi(theta, cos, norm):
        m = mag.margin(norm)
        return torch.cos(theta + m) if float(theta + m) <= math.pi else cos - m * torch.sin(m)

    _check(head, lambda xr, p: unpg_materialised(xr, p["weight"], Y, 16.0, psi, 1.0, mag.regulariser), x, Y)


def test_unpg_with_one_identity_falls_back_to_the_base_head():
    x = _x(4)
    y = torch.full((B,), 2)
    unpg, arc = UNPG(D, C, base=ArcMargin(0.5), scale=16.0).double(), ArcFace(D, C, scale=16.0).double()
    with torch.no_grad():
        arc.weight.copy_(unpg.weight)
    assert torch.allclose(unpg(x, y), arc(x, y), atol=1e-12)
    assert float(unpg.stats["negatives"]) == 0


# ---------------------------------------------------------------- IntraLoss
def test_intraloss_region_all_is_arcface_plus_lambda_mean_theta_over_pi():
    x = _x(5)
    intra = IntraLoss(D, C, base=ArcMargin(0.5), scale=16.0, lambda_intra=0.7, region="all").double()
    arc = ArcFace(D, C, scale=16.0, margin_rad=0.5).double()
    with torch.no_grad():
        arc.weight.copy_(intra.weight)
    theta = torch.stack([torch.acos(_cos_row(x[i], intra.weight.detach())[int(Y[i])]) for i in range(B)])
    assert torch.allclose(intra(x, Y), arc(x, Y) + 0.7 * theta.mean() / math.pi, atol=1e-10)


@pytest.mark.parametrize("base, psi", [(lambda: ArcMargin(0.5), arcface_psi(0.5)),
                                       (lambda: CosMargin(0.5), lambda t, c, n: c - 0.5)])
def test_intraloss_above_class_mean(base, psi):
    x = _x(6)
    lam = 0.8

    def ref(xr, p):
        w = p["weight"]
        thetas = [torch.acos(_cos_row(xr[i], w)[int(Y[i])].clamp(-1 + 1e-7, 1 - 1e-7)) for i in range(B)]
        batch_mean = sum(float(t) for t in thetas) / B
        extra = []
        for i in range(B):
            same = [float(thetas[j]) for j in range(B) if int(Y[j]) == int(Y[i])]
            reference = sum(same) / len(same) if len(same) > 1 else batch_mean
            extra.append(thetas[i] / math.pi if float(thetas[i]) > reference else torch.zeros((), dtype=x.dtype))
        return reference_margin_loss(xr, w, Y, 16.0, psi) + lam * torch.stack(extra).mean()

    _check(IntraLoss(D, C, base=base(), scale=16.0, lambda_intra=lam), ref, x, Y)


# ---------------------------------------------------------------- IE
@pytest.mark.parametrize("projection, smooth, normalize", [("exp_neg", "softplus", True), ("identity", "hinge", False),
                                                           ("exp_neg", "hinge", False)])
def test_ie_value_and_gradients(projection, smooth, normalize):
    x = _x(7)
    tau, alpha, lam = 0.7, 0.5, 0.9
    head = IELoss(D, C, lambda_ie=lam, tau=tau, alpha=alpha, projection=projection, smooth=smooth,
                  normalize_features=normalize)

    def ref(xr, p):
        out = []
        for i in range(B):
            t = int(Y[i])
            xi = xr[i] / xr[i].norm() if normalize else xr[i]
            ks = []
            for j in range(C):
                c = p["centers"][j] / p["centers"][j].norm() if normalize else p["centers"][j]
                d = (xi - c).square().sum()
                ks.append(torch.exp(-d / tau) if projection == "exp_neg" else -d)
            z = sum(ks[j] for j in range(C) if j != t) / (C - 1) - ks[t] + alpha
            ie = F.softplus(z) if smooth == "softplus" else torch.clamp(z, min=0)
            out.append(_ce(p["weight"] @ xr[i] + p["bias"], t) + lam * ie)
        return torch.stack(out).mean()

    _check(head, ref, x, Y)


# ---------------------------------------------------------------- Margin Loss
@pytest.mark.parametrize("reduce", ["hard_mean", "all_mean", "nearest"])
@pytest.mark.parametrize("normalize", [True, False])
def test_margin_loss_value_and_gradients(reduce, normalize):
    x = _x(8) * (1.0 if normalize else 0.3)
    m, lam = (1.0 if normalize else 2.0), 0.6
    head = MarginLoss(D, C, margin_sqdist=m, lambda_m=lam, reduce=reduce, normalize_features=normalize)

    def ref(xr, p):
        out = []
        for i in range(B):
            t = int(Y[i])
            xi = xr[i] / xr[i].norm() if normalize else xr[i]
            cs = [p["centers"][j] / p["centers"][j].norm() if normalize else p["centers"][j] for j in range(C)]
            d = [(xi - c).square().sum() for c in cs]
            if reduce == "nearest":
                term = torch.clamp(d[t] - min((d[j] for j in range(C) if j != t), key=float) + m, min=0)
            else:
                v = [torch.clamp(d[t] - d[j] + m, min=0) for j in range(C) if j != t]
                hard = sum(1 for vj in v if float(vj) > 0)
                term = sum(v) / (max(1, hard) if reduce == "hard_mean" else C - 1)
            out.append(_ce(p["weight"] @ xr[i] + p["bias"], t) + lam * term)
        return torch.stack(out).mean()

    _check(head, ref, x, Y)


# ---------------------------------------------------------------- options, labels, precision
@pytest.mark.parametrize("make, match", [
    (lambda: NPTLoss(D, C, k=C), rf"head.k={C} is out of range: expected 1 <= k <= num_classes - 1 = {C - 1}"),
    (lambda: NPTLoss(D, C, delta=-0.1), "head.delta=-0.1"),
    (lambda: NPTLoss(D, C, radius=0.0), "head.radius=0.0"),
    (lambda: UNPG(D, C, r=-1.0), "head.r=-1.0"),
    (lambda: UNPG(D, C, base="arcface"), r"head.base='arcface': base is now a margin object"),
    (lambda: UNPG(D, C, base=ArcMargin(-0.5)), "head.base.margin_rad=-0.5"),
    (lambda: UNPG(D, C, base=CosMargin(-0.5)), "head.base.margin_cos=-0.5"),
    (lambda: UNPG(D, C, scale=-64.0), "head.scale=-64.0"),
    (lambda: IntraLoss(D, C, base=MagFaceMargin()), "head.base: IntraLoss takes ArcMargin or CosMargin, got MagFaceMargin"),
    (lambda: IntraLoss(D, C, lambda_intra=-1.0), "head.lambda_intra=-1.0"),
    (lambda: IELoss(D, C, tau=0.0), "head.tau=0.0"),
    (lambda: IELoss(D, C, alpha=-1.0), "head.alpha=-1.0"),
    (lambda: MarginLoss(D, C, margin_sqdist=-1.0), "head.margin_sqdist=-1.0"),
    (lambda: MarginLoss(D, C, reduce="max"), "head.reduce='max'"),
])
def test_out_of_range_options_fail_at_construction(make, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        make()


HEADS = {
    "npt": lambda: NPTLoss(D, C, k=2), "unpg": lambda: UNPG(D, C, scale=64.0), "intraloss": lambda: IntraLoss(D, C),
    "ie": lambda: IELoss(D, C), "marginloss": lambda: MarginLoss(D, C), "arcface": lambda: ArcFace(D, C),
    "cosface": lambda: CosFace(D, C), "magface": lambda: MagFace(D, C),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_labels_outside_range_are_named(name):
    with pytest.raises(ValueError, match=rf"label 7 is outside \[0, {C}\)"):
        HEADS[name]()(torch.randn(2, D), torch.tensor([1, 7]))


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_heads_compute_in_float32_under_autocast(name, dtype):
    torch.manual_seed(0)
    head = HEADS[name]()
    x = (torch.randn(B, D) * 4).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x.clone().requires_grad_(True), Y)
    ref = head(x.float(), Y)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert torch.allclose(low, ref, rtol=1e-6, atol=1e-6)
    # near-perfect embeddings (cos -> 1, where arccos is steep) keep finite gradients
    w = head.weight.detach()
    xs = (w[Y] / w[Y].norm(dim=1, keepdim=True) * 4).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head(xs, Y).backward()
    assert torch.isfinite(xs.grad).all()
