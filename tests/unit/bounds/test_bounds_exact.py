"""Exactness and tightness: closed forms for affine models, CROWN vs IBP, epsilon -> 0."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.nets import DT, METHODS, Normalized, leaky_pool_cnn, overlap_pool_cnn, resnet_tiny, tiny_cnn

from harness.bounds import BoundedModel, margin_spec, other_classes
from harness.models.architectures import mnist_small_cnn


def _linear_model(seed: int, normalized: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A Flatten+Linear model on (2, 2, 2) inputs and its effective (W, b) on the raw input."""
    torch.manual_seed(seed)
    lin = nn.Linear(8, 4).to(DT)
    inner = nn.Sequential(nn.Flatten(), lin)
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    if not normalized:
        return inner.eval(), W, b
    mean, std = [0.3, 0.7], [0.5, 0.25]
    model = Normalized(inner, mean, std).eval()
    # f(x) = W ((x - m) / s) + b, with m, s per channel (4 pixels each)
    m = torch.tensor(mean, dtype=DT).repeat_interleave(4)
    s = torch.tensor(std, dtype=DT).repeat_interleave(4)
    return model, W / s, b - (W / s) @ m


def _closed_form_linf(W, b, x, eps):
    """Exact min/max of W x' + b over [x-eps, x+eps] ∩ [0,1], coordinate by coordinate."""
    B, d = x.shape
    lo_all, hi_all = [], []
    for k in range(B):
        lo_k, hi_k = [], []
        for i in range(W.shape[0]):
            mn = mx = float(b[i])
            for j in range(d):
                a = max(0.0, float(x[k, j]) - eps)
                c = min(1.0, float(x[k, j]) + eps)
                w = float(W[i, j])
                mn += min(w * a, w * c)
                mx += max(w * a, w * c)
            lo_k.append(mn)
            hi_k.append(mx)
        lo_all.append(lo_k)
        hi_all.append(hi_k)
    return torch.tensor(lo_all, dtype=DT), torch.tensor(hi_all, dtype=DT)


def _closed_form_l2(W, b, x, eps):
    """Exact min/max of W x' + b over the L2 ball: W x + b -+ eps ||W_i||_2."""
    c = x @ W.T + b
    r = eps * torch.sqrt((W * W).sum(1))
    return c - r, c + r


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_single_linear_layer_is_exact(normalized, norm):
    model, W, b = _linear_model(0, normalized)
    bm = BoundedModel(model, (2, 2, 2))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 2, 2, generator=gen, dtype=DT)
    x[0, 0, 0, 0] = 0.01  # the Linf box is clipped at 0 here
    eps = 0.05
    xf = x.reshape(3, -1)
    y = torch.tensor([0, 2, 3])
    C = margin_spec(y, 4, dtype=DT)
    exact = _closed_form_linf if norm == "Linf" else _closed_form_l2
    want_lo, want_hi = exact(W, b, xf, eps)
    # margins f_y - f_j are the linear functions with rows W_y - W_j
    m_lo, m_hi = [], []
    for k in range(3):
        Wm = W[y[k]].unsqueeze(0) - W[other_classes(y, 4)[k]]
        bm_ = b[y[k]] - b[other_classes(y, 4)[k]]
        lo, hi = exact(Wm, bm_, xf[k:k + 1], eps)
        m_lo.append(lo[0])
        m_hi.append(hi[0])
    m_lo, m_hi = torch.stack(m_lo), torch.stack(m_hi)
    for method in METHODS:
        lo, hi = bm.bounds(x, eps, norm, method)
        torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-10)
        torch.testing.assert_close(hi, want_hi, rtol=0, atol=1e-10)
        lo, hi = bm.bounds(x, eps, norm, method, C=C)
        torch.testing.assert_close(lo, m_lo, rtol=0, atol=1e-10)
        torch.testing.assert_close(hi, m_hi, rtol=0, atol=1e-10)


def test_per_example_eps_matches_separate_calls():
    model = tiny_cnn(0)
    bm = BoundedModel(model, (1, 4, 4))
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    eps = torch.tensor([0.0, 0.03, 0.1], dtype=DT)
    for method in METHODS:
        lo, hi = bm.bounds(x, eps, "Linf", method)
        for k in range(3):
            l1, h1 = bm.bounds(x[k:k + 1], float(eps[k]), "Linf", method)
            torch.testing.assert_close(lo[k:k + 1], l1, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(hi[k:k + 1], h1, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("build,shape,eps_inf,eps_2", [
    (tiny_cnn, (1, 4, 4), 0.08, 0.25),
    (resnet_tiny, (2, 4, 4), 0.05, 0.12),
    (leaky_pool_cnn, (1, 4, 4), 0.08, 0.25),
    (overlap_pool_cnn, (2, 5, 5), 0.05, 0.15),
])
def test_crown_not_looser_than_ibp(build, shape, eps_inf, eps_2):
    """On these (image-like, >= 16 input dims) networks CROWN's margin bounds are at least as
    tight as IBP's. This is not a theorem: with the adaptive lower slope a CROWN bound can lose
    to IBP on very low-dimensional inputs (e.g. 2-d MLPs), so the check is on image nets."""
    gen = torch.Generator().manual_seed(5)
    for seed in range(3):
        model = build(seed)
        bm = BoundedModel(model, shape)
        x = torch.rand(6, *shape, generator=gen, dtype=DT)
        y = model(x).argmax(1)
        C = margin_spec(y, model(x).shape[1], dtype=DT)
        for norm, eps in (("Linf", eps_inf), ("L2", eps_2)):
            for scale in (0.5, 2.0):
                with torch.no_grad():
                    il, iu = bm.bounds(x, scale * eps, norm, "ibp", C=C)
                    cl, cu = bm.bounds(x, scale * eps, norm, "crown", C=C)
                assert torch.all(cl >= il - 1e-9), (seed, norm, scale, (il - cl).max())
                assert torch.all(cu <= iu + 1e-9), (seed, norm, scale, (cu - iu).max())


def test_crown_tighter_than_ibp_on_mnist_cnn():
    torch.manual_seed(0)
    model = mnist_small_cnn().eval()
    bm = BoundedModel(model, (1, 28, 28))
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    with torch.no_grad():
        ibp = bm.margin_lower_bounds(x, y, 0.003, "Linf", "ibp")
        cibp = bm.margin_lower_bounds(x, y, 0.003, "Linf", "crown-ibp")
        crown = bm.margin_lower_bounds(x, y, 0.003, "Linf", "crown")
    assert torch.all(crown >= ibp) and torch.all(cibp >= ibp) and torch.all(crown >= cibp - 1e-6)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_bounds_shrink_to_the_point_value(norm):
    model = resnet_tiny(2)
    bm = BoundedModel(model, (2, 4, 4))
    x = torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    with torch.no_grad():
        f = model(x)
    for method in METHODS:
        widths = []
        for eps in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0):
            with torch.no_grad():
                lo, hi = bm.bounds(x, eps, norm, method)
            assert torch.all(lo <= f + 1e-12) and torch.all(f <= hi + 1e-12)
            widths.append(float((hi - lo).max()))
            # distance to the point value is at most linear in eps for small eps
            if 0 < eps <= 1e-3:
                assert float((f - lo).abs().max()) < 1e4 * eps
        assert widths[-1] == pytest.approx(0.0, abs=1e-12)
        assert all(w1 >= w2 - 1e-12 for w1, w2 in zip(widths, widths[1:], strict=False))
        assert widths[-2] < 1e-3 * max(widths[0], 1e-12) or widths[-2] < 1e-8


class _Pool(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)

    def forward(self, x):
        if self.kind == "mean":
            return x.mean(dim=(2, 3))
        return self.pool(x).flatten(1)


@pytest.mark.parametrize("kind", ["avgpool", "mean"])
def test_ibp_of_pooling_on_the_input_box_is_exact(kind):
    """Pooling has non-negative weights, so each output's range over the box is the pooling of
    the box's corners."""
    model = _Pool(kind).eval()
    bm = BoundedModel(model, (2, 5, 5))
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    eps = 0.1
    want_lo, want_hi = model((x - eps).clamp(0, 1)), model((x + eps).clamp(0, 1))
    for method in METHODS:
        lo, hi = bm.bounds(x, eps, "Linf", method)
        torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(hi, want_hi, rtol=0, atol=1e-12)


def test_crown_is_exact_on_an_affine_chain():
    """conv (stride 2, padding) -> BN -> avg pool (ceil mode, no pad counting) -> flatten ->
    linear, behind sub/div normalisation: affine, so CROWN must give the exact range
    f(x) + sum_j min/max(J_ij (lo_j - x_j), J_ij (hi_j - x_j)), with J the Jacobian computed
    by autograd."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.copy_(torch.randn(3))
    bn.running_var.copy_(torch.rand(3) + 0.5)
    inner = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), bn,
                          nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False,
                                       ceil_mode=True),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).to(DT)
    model = Normalized(inner, [0.5, 0.2], [0.3, 0.6]).eval()
    bm = BoundedModel(model, (2, 6, 6))
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    for norm, eps in (("Linf", 0.07), ("L2", 0.3)):
        lo, hi = bm.bounds(x, eps, norm, "crown")
        for b in range(2):
            J = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0))[0], x[b])
            J = J.reshape(4, -1)
            f = model(x[b:b + 1])[0].detach()
            if norm == "Linf":
                dlo = ((x[b] - eps).clamp(0, 1) - x[b]).reshape(-1)
                dhi = ((x[b] + eps).clamp(0, 1) - x[b]).reshape(-1)
                want_lo = f + torch.minimum(J * dlo, J * dhi).sum(1)
                want_hi = f + torch.maximum(J * dlo, J * dhi).sum(1)
            else:
                want_lo, want_hi = f - eps * J.norm(dim=1), f + eps * J.norm(dim=1)
            torch.testing.assert_close(lo[b].detach(), want_lo, rtol=0, atol=1e-10)
            torch.testing.assert_close(hi[b].detach(), want_hi, rtol=0, atol=1e-10)
