"""Certified radius search: certified at r, not at r + tol; exact for a linear model."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.nets import DT, resnet_tiny, tiny_cnn

from harness.bounds import BoundedModel, certified_radius


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("norm,eps_max", [("Linf", 0.5), ("L2", 1.0)])
def test_certified_at_r_and_not_at_r_plus_tol(method, norm, eps_max):
    model = tiny_cnn(0)
    bm = BoundedModel(model, (1, 4, 4))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 4, 4, generator=gen, dtype=DT)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one misclassified point
    tol = 1e-3
    r, calls = certified_radius(bm, x, y, eps_max, norm, method, tol)
    assert r.shape == (10,) and calls >= 1
    assert float(r[0]) == 0.0
    assert torch.all((r >= 0) & (r <= eps_max))
    correct = model(x).argmax(1) == y
    pos = correct & (r > 0)
    assert bool(pos.any())
    # certified at exactly r (for r > 0; r = 0 is the clean prediction)
    assert torch.all(bm.certify(x[pos], y[pos], r[pos], norm, method))
    # not certified at r + tol, unless r == eps_max
    below = correct & (r < eps_max)
    assert bool(below.any())
    probe = torch.clamp(r[below] + tol, max=eps_max)
    assert not torch.any(bm.certify(x[below], y[below], probe, norm, method))
    # the number of bound calls is that of a bisection, not a scan
    assert calls <= 3 + 2 * int(torch.log2(torch.tensor(eps_max / tol)).ceil())


def test_linear_model_l2_radius_is_the_distance_to_the_boundary():
    # For f(x) = W x + b the smallest L2 perturbation changing the decision from y is
    # min_j (f_y - f_j)(x) / ||w_y - w_j||; CROWN is exact on affine models, so the radius
    # must be within tol below it (L2 balls are not clipped to [0, 1]).
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).to(DT)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    bm = BoundedModel(model, (1, 2, 3))
    x = torch.rand(8, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    y = model(x).argmax(1)
    W, b = lin.weight.detach(), lin.bias.detach()
    f = x.flatten(1) @ W.T + b
    want = torch.full((8,), float("inf"), dtype=DT)
    for j in range(3):
        d = (f.gather(1, y[:, None]).squeeze(1) - f[:, j]) / (W[y] - W[j]).norm(dim=1)
        want = torch.where(y == j, want, torch.minimum(want, d))
    tol = 1e-4
    for method in ("ibp", "crown"):
        r, _ = certified_radius(bm, x, y, 10.0, "L2", method, tol)
        assert torch.all(r <= want) and torch.all(r >= want - tol - 1e-12)


def test_radius_reaches_eps_max_and_per_example_eps():
    model = resnet_tiny(0)
    bm = BoundedModel(model, (2, 4, 4))
    x = torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    y = model(x).argmax(1)
    r_big, _ = certified_radius(bm, x, y, 1e-4, "Linf", "crown", 1e-5)
    assert torch.all(r_big == 1e-4)  # tiny eps_max: everything certified at eps_max
    r, calls = certified_radius(bm, x, y, 0.1, "Linf", "crown", 1e-3)
    assert torch.all(bm.certify(x, y, r, "Linf", "crown"))


@pytest.mark.parametrize("eps0", [0.05, 0.3])
def test_known_certification_starts_the_bracket(eps0):
    model = tiny_cnn(1)
    bm = BoundedModel(model, (1, 4, 4))
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=DT)
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 4
    c0 = bm.certify(x, y, eps0, "Linf", "crown")
    tol, eps_max = 2e-3, 0.5
    r, calls = certified_radius(bm, x, y, eps_max, "Linf", "crown", tol, known=(eps0, c0))
    correct = model(x).argmax(1) == y
    assert torch.all(r[~correct] == 0)
    pos = correct & (r > 0)
    assert torch.all(bm.certify(x[pos], y[pos], r[pos], "Linf", "crown"))
    below = correct & (r < eps_max)
    probe = torch.clamp(r[below] + tol, max=eps_max)
    assert not torch.any(bm.certify(x[below], y[below], probe, "Linf", "crown"))
    # consistent with the hint: certified at eps0 -> r >= eps0
    assert torch.all(r[c0] >= eps0)
