"""Classic heads: loss and gradients against an independent per-sample computation (float64), and the
same head in float32 within 1e-5 relative of that reference."""

from __future__ import annotations

import math

import pytest
import torch

from frtrain.errors import ConfigError
from frtrain.heads import ArcFace, CenterLoss, CombinedMargin, CosFace, MagFace, NormFace, Softmax, SphereFace

B, D, C = 7, 6, 5


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * 3.0
    y = torch.tensor([0, 1, 2, 3, 4, 1, 0])
    return x, y


def _ce(logits_row: torch.Tensor, target: int) -> torch.Tensor:
    return torch.logsumexp(logits_row, 0) - logits_row[target]


def reference_margin_loss(x, w, y, s, psi):
    """Mean over samples of CE(s*cos_i with target s*psi(theta_i)), one sample at a time."""
    losses = []
    for i in range(x.shape[0]):
        xi = x[i] / x[i].norm()
        cos = torch.stack([xi @ (w[j] / w[j].norm()) for j in range(w.shape[0])])
        t = int(y[i])
        theta = torch.acos(cos[t].clamp(-1 + 1e-7, 1 - 1e-7))
        logits = torch.cat([s * cos[:t], (s * psi(theta, cos[t], x[i].norm())).reshape(1), s * cos[t + 1 :]])
        losses.append(_ce(logits, t))
    return torch.stack(losses).mean()


def _check(head, ref_fn, x, y, atol=1e-10, float32=True):
    """Loss and gradients of ``head`` (float64) equal ``ref_fn``'s; a float32 copy's loss within 1e-5 relative."""
    import copy

    single = copy.deepcopy(head).float() if float32 else None
    head = head.double()
    xh = x.clone().requires_grad_(True)
    loss = head(xh, y)
    params = {n: p for n, p in head.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, [xh, *params.values()])
    xr = x.clone().requires_grad_(True)
    copies = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    ref = ref_fn(xr, copies)
    ref_grads = torch.autograd.grad(ref, [xr, *copies.values()])
    assert torch.allclose(loss, ref, atol=atol, rtol=0), (float(loss), float(ref))
    for name, g, r in zip(["embeddings", *params], grads, ref_grads):
        assert torch.allclose(g, r, atol=atol, rtol=1e-8), f"gradient of {name} differs by {(g - r).abs().max():.3g}"
    if single is not None:
        if hasattr(single, "iteration"):
            single.iteration.fill_(int(head.iteration))
        loss32 = single(x.float(), y).detach()
        assert loss32.dtype == torch.float32
        expected = float(ref.detach())
        assert abs(float(loss32) - expected) <= 1e-5 * abs(expected), (float(loss32), expected)
    return float(loss.detach())


def arcface_psi(m):
    def psi(theta, cos, norm):
        if float(theta) + m <= math.pi:
            return torch.cos(theta + m)
        return cos - m * math.sin(m)  # insightface's fallback beyond pi

    return psi


def test_softmax_is_cross_entropy_of_a_linear_layer():
    x, y = _inputs()
    head = Softmax(D, C)
    with torch.no_grad():
        head.bias.normal_()

    def ref(xr, p):
        return torch.stack([_ce(p["weight"] @ xr[i] + p["bias"], int(y[i])) for i in range(B)]).mean()

    _check(head, ref, x, y)


def test_normface():
    x, y = _inputs(1)
    _check(NormFace(D, C, scale=30.0), lambda xr, p: reference_margin_loss(xr, p["weight"], y, 30.0, lambda t, c, n: c), x, y)


def test_cosface():
    x, y = _inputs(2)
    _check(CosFace(D, C, scale=64.0, margin_cos=0.35),
           lambda xr, p: reference_margin_loss(xr, p["weight"], y, 64.0, lambda t, c, n: c - 0.35), x, y)


def test_arcface_including_the_fallback_beyond_pi():
    x, y = _inputs(3)
    head = ArcFace(D, C, scale=64.0, margin_rad=0.5).double()
    with torch.no_grad():  # sample 0 points almost opposite its class vector: theta + m > pi
        x[0] = -head.weight[y[0]] / head.weight[y[0]].norm() * 4 + 0.01 * torch.randn(D, dtype=torch.float64)
    cos0 = torch.nn.functional.cosine_similarity(x[0], head.weight[y[0]].detach(), dim=0)
    assert math.acos(float(cos0)) + 0.5 > math.pi  # the test does exercise the fallback branch
    assert any(math.acos(float(torch.nn.functional.cosine_similarity(x[i], head.weight[y[i]].detach(), dim=0))) + 0.5
               <= math.pi for i in range(B))  # and the ordinary one
    _check(head, lambda xr, p: reference_margin_loss(xr, p["weight"], y, 64.0, arcface_psi(0.5)), x, y)


def test_combined_margin():
    x, y = _inputs(4)
    m1, m2, m3 = 1.0, 0.3, 0.2

    def psi(theta, cos, norm):
        if float(theta) + m2 <= math.pi:
            return torch.cos(theta + m2) - m3
        return cos - m2 * math.sin(m2) - m3

    _check(CombinedMargin(D, C, scale=32.0, m1=m1, m2=m2, m3=m3),
           lambda xr, p: reference_margin_loss(xr, p["weight"], y, 32.0, psi), x, y)


def test_combined_with_arcface_margins_is_arcface():
    x, y = _inputs(5)
    a, b = ArcFace(D, C, margin_rad=0.5).double(), CombinedMargin(D, C, m1=1.0, m2=0.5, m3=0.0).double()
    with torch.no_grad():
        b.weight.copy_(a.weight)
    assert torch.allclose(a(x, y), b(x, y), atol=1e-12)


def sphere_psi(m):
    def psi(theta, cos, norm):
        k = math.floor(float(m * theta) / math.pi)
        return (-1) ** k * torch.cos(m * theta) - 2 * k

    return psi


def test_sphereface_pure_psi_monotone_form():
    x, y = _inputs(6)
    head = SphereFace(D, C, scale=16.0, margin_mult=4.0, lambda_base=0.0, lambda_min=0.0)
    _check(head, lambda xr, p: reference_margin_loss(xr, p["weight"], y, 16.0, sphere_psi(4.0)), x, y, atol=1e-9)


def test_sphereface_lambda_mix_and_annealing():
    x, y = _inputs(7)
    head = SphereFace(D, C, scale=16.0, margin_mult=4.0, lambda_base=1000.0, lambda_gamma=0.12, lambda_power=1.0,
                      lambda_min=5.0).double()
    with torch.no_grad():
        head.iteration.fill_(10)
    lam = max(5.0, 1000.0 * (1 + 0.12 * 10) ** -1.0)
    assert head.current_lambda() == pytest.approx(lam)

    def psi(theta, cos, norm):
        return (lam * cos + sphere_psi(4.0)(theta, cos, norm)) / (1 + lam)

    _check(head, lambda xr, p: reference_margin_loss(xr, p["weight"], y, 16.0, psi), x, y, atol=1e-9)
    assert int(head.iteration) == 10  # forward passes (micro-batches) do not advance the annealing
    head.after_optimizer_step()  # optimiser steps do
    assert int(head.iteration) == 11 and head.current_lambda() == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * 11)))


def test_magface_margin_grows_with_norm_and_adds_the_regulariser():
    x, y = _inputs(8)
    x = x * torch.linspace(3.0, 40.0, B, dtype=torch.float64).unsqueeze(1) / x.norm(dim=1, keepdim=True)
    l_a, u_a, l_m, u_m, lam_g, s = 10.0, 110.0, 0.45, 0.8, 35.0, 64.0

    def ref(xr, p):
        losses = []
        for i in range(B):
            a = xr[i].norm().clamp(l_a, u_a)
            m = l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a)

            def psi(theta, cos, norm, m=m):
                return torch.cos(theta + m) if float(theta + m) <= math.pi else cos - m * torch.sin(m)

            ce = reference_margin_loss(xr[i : i + 1], p["weight"], y[i : i + 1], s, psi)
            losses.append(ce + lam_g * (1 / a + a / u_a**2))
        return torch.stack(losses).mean()

    _check(MagFace(D, C, scale=s, l_a=l_a, u_a=u_a, l_m=l_m, u_m=u_m, lambda_g=lam_g), ref, x, y)


def test_straight_through_margin_gradient_is_insightface_s_per_logit():
    x, y = _inputs(9)
    s, m = 64.0, 0.5
    exact = ArcFace(D, C, scale=s, margin_rad=m).double()
    st = ArcFace(D, C, scale=s, margin_rad=m, margin_grad="straight_through").double()
    with torch.no_grad():
        st.weight.copy_(exact.weight)
    assert torch.allclose(exact(x, y), st(x, y), atol=1e-12)  # same value

    def ref(xr, p):  # target logit s*cos + s*(psi - cos).detach(): d logit / d cos = s everywhere
        def psi(theta, cos, norm):
            return cos + (arcface_psi(m)(theta, cos, norm) - cos).detach()

        return reference_margin_loss(xr, p["weight"], y, s, psi)

    _check(st, ref, x, y)
    xe, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ge = torch.autograd.grad(exact(xe, y), xe)[0]
    gs = torch.autograd.grad(st(xs, y), xs)[0]
    assert not torch.allclose(ge, gs, atol=1e-6)  # the two gradients really differ for ArcFace


def test_center_loss_value_and_gradients_with_fixed_centres():
    x, y = _inputs(10)
    lam = 0.003
    head = CenterLoss(D, C, lambda_c=lam, alpha=0.5).eval()  # eval: the centres stay where they are

    def ref(xr, p):
        out = []
        for i in range(B):
            t = int(y[i])
            centre = head.centers[t].detach().double()
            out.append(_ce(p["weight"] @ xr[i] + p["bias"], t) + lam / 2 * (xr[i] - centre).square().sum())
        return torch.stack(out).mean()

    _check(head, ref, x, y)
    assert not head.centers.requires_grad  # moved by Wen et al.'s rule, not by the optimiser
    assert all(p is not head.centers for g in head.param_groups() for p in g["params"])


def test_center_loss_moves_each_centre_alpha_n_over_1_plus_n_of_the_way_to_its_class_mean():
    x, y = _inputs(11)
    alpha = 0.5
    head = CenterLoss(D, C, lambda_c=0.003, alpha=alpha).double().train()
    before = head.centers.detach().clone()
    head(x, y)
    for j in range(C):
        members = x[y == j]
        n = len(members)
        expected = before[j] + alpha * n / (1 + n) * (members.mean(0) - before[j])  # independent of lambda_c, B
        assert torch.allclose(head.centers[j], expected, atol=1e-12), j
    frozen = head.centers.detach().clone()
    head.eval()(x, y)
    assert torch.equal(head.centers, frozen)  # evaluation does not move the centres


def test_renamed_options_still_work_from_a_config_with_a_warning():
    from frtrain.engine.build import build

    with pytest.warns(FutureWarning, match=r"head.margin is deprecated: it is now head.margin_rad"):
        head = build("head", {"_target_": "frtrain.heads.ArcFace", "margin": 0.3}, embedding_size=D, num_classes=C)
    assert head.margin_fn.margin_rad == 0.3
    with pytest.warns(FutureWarning, match=r"head.center_lr is deprecated: it is now head.alpha"):
        assert build("head", {"_target_": "frtrain.heads.CenterLoss", "center_lr": 0.25}, embedding_size=D,
                     num_classes=C).alpha == 0.25
    with pytest.raises(ConfigError, match=r"head.margin is the old name of head.margin_cos; give only head.margin_cos"):
        build("head", {"_target_": "frtrain.heads.CosFace", "margin": 0.3, "margin_cos": 0.3}, embedding_size=D,
              num_classes=C)


def test_auto_scale_is_16_on_small_sets_and_the_papers_64_from_5000_classes():
    from frtrain.heads.classic import auto_scale

    assert ArcFace(D, 200).scale == 16.0 and ArcFace(D, 500).scale == 16.0
    assert ArcFace(D, 5000).scale == 64.0 and auto_scale(85_742) == 64.0
    assert auto_scale(1000) == pytest.approx(16.0 * 4.0 ** (math.log(2) / math.log(10)))  # geometric between
    assert [auto_scale(c) for c in (600, 1000, 2000, 4000)] == sorted(auto_scale(c) for c in (600, 1000, 2000, 4000))
    assert ArcFace(D, 200, scale=30.0).scale == 30.0 and "auto for 200 classes" in repr(ArcFace(D, 200))


@pytest.mark.parametrize("make, match", [
    (lambda: ArcFace(D, C, margin_rad=-0.1), "head.margin_rad=-0.1"),
    (lambda: ArcFace(D, C, scale=-1.0), "head.scale=-1.0"),
    (lambda: ArcFace(D, C, scale="big"), "head.scale='big'"),
    (lambda: CosFace(D, C, margin_cos=-0.2), "head.margin_cos=-0.2"),
    (lambda: CombinedMargin(D, C, m1=0.5), "head.m1=0.5"),
    (lambda: SphereFace(D, C, margin_mult=0.5), "head.margin_mult=0.5"),
    (lambda: CenterLoss(D, C, alpha=1.5), "head.alpha=1.5"),
    (lambda: CenterLoss(D, C, lambda_c=-1.0), "head.lambda_c=-1.0"),
    (lambda: ArcFace(D, C, margin_grad="nope"), "head.margin_grad='nope'"),
    (lambda: ArcFace(D, C, sample_rate=0.0), "head.sample_rate=0.0"),
])
def test_out_of_range_options_fail_at_construction_naming_the_option(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("label", [-1, C])
def test_label_outside_range_names_the_label_and_the_class_count(label):
    head = ArcFace(D, C)
    with pytest.raises(ValueError, match=rf"label {label} is outside \[0, {C}\)"):
        head(torch.randn(2, D), torch.tensor([0, label]))


def test_wrong_embedding_shape_is_named():
    with pytest.raises(ValueError, match=r"embeddings must have shape \(B, 6\), got \(2, 5\)"):
        ArcFace(D, C)(torch.randn(2, 5), torch.tensor([0, 1]))


def test_partial_fc_sampling_keeps_every_positive_class():
    torch.manual_seed(0)
    head = ArcFace(D, 100, sample_rate=0.1).train()
    labels = torch.tensor([3, 97, 50, 3, 12])
    index, local_target = head.select_classes(labels)
    assert index is not None and len(index) == 10
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[local_target], labels)  # targets point at their class among the sampled rows
    head.eval()
    assert head.select_classes(labels)[0] is None  # evaluation uses every class


def test_the_python_defaults_of_every_head_equal_its_config():
    """A head built in Python and the same head from configs/head/<name>.yaml have the same hyper-parameters."""
    import inspect

    from hydra.utils import get_object

    from frtrain.config import compose, group_options

    variants = {"elasticface_arc_plus": {"margin_std", "plus"}, "elasticface_cos_plus": {"margin_std", "plus"}}
    for name in group_options("head"):
        node = compose("train", [f"head={name}", "data=folder"]).head
        params = inspect.signature(get_object(node._target_)).parameters
        for key, value in node.items():
            if key.startswith("_") or isinstance(value, type(node)) or key not in params or key in variants.get(name, ()):
                continue
            assert params[key].default == value, f"{name}.{key}: Python {params[key].default!r}, config {value!r}"
