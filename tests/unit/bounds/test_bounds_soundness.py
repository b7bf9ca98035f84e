"""Soundness of IBP / CROWN / CROWN-IBP against brute force on tiny random networks (ReLU,
LeakyReLU and max pooling among them).

Every bound must contain the network's value at every point of the input set we can reach:
dense random samples, the box's vertices (all of them where the dimension allows, else a random
subset), points on the L2 sphere, and PGD adversarial points. A certified point must never be
broken by PGD.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.nets import DT, METHODS, NETS, _check_contains, _points_l2, _points_linf, pgd

from harness.bounds import BoundedModel, margin_spec

# ---------------------------------------------------------------------------------------------
# tiny networks
# ---------------------------------------------------------------------------------------------


























# ---------------------------------------------------------------------------------------------
# brute force
# ---------------------------------------------------------------------------------------------










# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_bounds_contain_brute_force(net, norm):
    build, shape, eps_inf, eps_2 = NETS[net]
    eps = eps_inf if norm == "Linf" else eps_2
    model = build(0)
    bm = BoundedModel(model, shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, *shape, generator=gen, dtype=DT)
    # one example on the image border, where the Linf box is clipped
    x[0].view(-1)[0] = 0.0
    with torch.no_grad():
        y = model(x).argmax(1)
    K = model(x).shape[1]
    C = margin_spec(y, K, dtype=DT)
    found = {}
    for method in METHODS:
        with torch.no_grad():
            lb, ub = bm.bounds(x, eps, norm=norm, method=method)            # logits
            mlb, mub = bm.bounds(x, eps, norm=norm, method=method, C=C)     # margins
        assert lb.shape == (3, K) and mlb.shape == (3, K - 1)
        assert torch.all(lb <= ub) and torch.all(mlb <= mub)
        found[method] = (lb, ub, mlb, mub)
    for b in range(3):
        pts = (_points_linf if norm == "Linf" else _points_l2)(x[b], eps, 3000, gen)
        with torch.no_grad():
            f = model(pts)
        for _method, (lb, ub, mlb, mub) in found.items():
            _check_contains(f, lb[b], ub[b])
            _check_contains(f @ C[b].T, mlb[b], mub[b])
    assert all(torch.isfinite(t).all() for v in found.values() for t in v)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_never_breaks_certified_points(net, norm):
    build, shape, eps_inf, eps_2 = NETS[net]
    model = build(1)
    bm = BoundedModel(model, shape)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(24, *shape, generator=gen, dtype=DT)
    with torch.no_grad():
        y = model(x).argmax(1)
    n_cert = 0
    for scale in (0.25, 1.0):
        eps = scale * (eps_inf if norm == "Linf" else eps_2)
        adv = pgd(model, x, y, eps, norm)
        with torch.no_grad():
            robust = model(adv).argmax(1) == y
        for method in METHODS:
            cert = bm.certify(x, y, eps, norm=norm, method=method)
            assert not torch.any(cert & ~robust), f"{method}: PGD broke a certified point"
            n_cert += int(cert.sum())
    assert n_cert > 0  # the check above is not vacuous


def test_float32_cnn_contains_samples():
    """The library in float32 (the usual case), on a stride-2 CNN with odd sizes."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 5)).eval()
    bm = BoundedModel(model, (1, 9, 9))
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 9, 9, generator=gen)
    for method in METHODS:
        with torch.no_grad():
            lb, ub = bm.bounds(x, 0.03, "Linf", method)
        for b in range(2):
            pts = _points_linf(x[b].double(), 0.03, 3000, gen).float()
            with torch.no_grad():
                f = model(pts)
            _check_contains(f, lb[b], ub[b], tol=1e-4)
