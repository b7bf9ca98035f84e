"""Randomized smoothing against closed forms for linear classifiers under Gaussian noise."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from scipy.stats import norm

from harness.bounds import smoothing as S

SIGMA = 0.5
N = 20000
ALPHA = 0.001


def _linear(W, b) -> nn.Module:
    lin = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _max_gap(p_a: float) -> float:
    """Largest expected shortfall of the certified radius below sigma * Phi^-1(p_a).

    The Clopper-Pearson bound sits about z_alpha standard errors below the empirical p_hat
    (plus O(1/n)), and p_hat is within z = 4 standard errors of p_a except with probability
    ~3e-5; so p_lower >= p_a - dp with dp = (z_alpha + 4) se + 2/n. Phi^-1 is convex on
    [1/2, 1], so the radius moves by at most sigma * dp / phi(Phi^-1(p_a)).
    """
    se = math.sqrt(p_a * (1 - p_a) / N)
    dp = (norm.ppf(1 - ALPHA) + 4.0) * se + 2.0 / N
    return SIGMA * dp / norm.pdf(norm.ppf(p_a))


def test_binary_linear_radius_matches_closed_form():
    # f(x) = W x + b on 4 inputs; class A = 0 wins iff (w0 - w1).(x + d) + (b0 - b1) > 0, and
    # (w0 - w1).d ~ N(0, sigma^2 ||w0 - w1||^2), so p_A = Phi(m / (sigma ||w0 - w1||)) with
    # m = (w0 - w1).x + b0 - b1; the certified radius with the exact p_A is
    # sigma Phi^-1(p_A) = m / ||w0 - w1||, the distance to the decision boundary.
    W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 0.0, 0.5, 2.0]], dtype=torch.float64)
    dw = W[0] - W[1]
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    target = 1.0 * SIGMA * float(dw.norm())  # m such that p_A = Phi(1)
    b = torch.tensor([target - float(dw @ x.flatten()), 0.0], dtype=torch.float64)
    model = _linear(W, b)
    m = float(dw @ x.flatten() + b[0] - b[1])
    p_a = norm.cdf(m / (SIGMA * float(dw.norm())))
    r_true = SIGMA * norm.ppf(p_a)
    assert r_true == pytest.approx(m / float(dw.norm()))
    pred, radius = S.certify(model, x, SIGMA, n0=100, n=N, alpha=ALPHA, batch_size=5000,
                             generator=torch.Generator().manual_seed(0))
    assert int(pred[0]) == 0
    assert float(radius[0]) <= r_true
    assert float(radius[0]) >= r_true - _max_gap(p_a)


def test_three_class_linear_radius_matches_closed_form():
    # w0 = 0, w1 = a e1, w2 = a e2: class 0 wins iff a (x1 + d1) + b1 < b0 and
    # a (x2 + d2) + b2 < b0; d1, d2 are independent, so
    # p_0 = Phi((b0 - b1 - a x1) / (sigma a)) * Phi((b0 - b2 - a x2) / (sigma a)).
    a = 2.0
    W = torch.zeros(3, 4, dtype=torch.float64)
    W[1, 0] = a
    W[2, 1] = a
    x = torch.tensor([0.2, 0.7, 0.1, 0.9], dtype=torch.float64).view(1, 1, 2, 2)
    b = torch.tensor([0.0, -a * 0.2 - 2.0 * SIGMA * a, -a * 0.7 - 1.5 * SIGMA * a],
                     dtype=torch.float64)
    model = _linear(W, b)
    z1 = (b[0] - b[1] - a * x.flatten()[0]) / (SIGMA * a)
    z2 = (b[0] - b[2] - a * x.flatten()[1]) / (SIGMA * a)
    p_a = float(norm.cdf(float(z1)) * norm.cdf(float(z2)))
    assert p_a == pytest.approx(norm.cdf(2.0) * norm.cdf(1.5))
    r_true = SIGMA * norm.ppf(p_a)
    pred, radius = S.certify(model, x, SIGMA, n0=100, n=N, alpha=ALPHA, batch_size=5000,
                             generator=torch.Generator().manual_seed(1))
    assert int(pred[0]) == 0
    assert r_true - _max_gap(p_a) <= float(radius[0]) <= r_true


def test_predict_and_abstain_and_determinism():
    W = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # first example: margin 2*0.5 = 1 -> p_A = Phi(1 / (0.5 * 2)) = 0.84; second: on the boundary
    x = torch.tensor([[0.5, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64).view(2, 1, 2, 2)
    model = _linear(W, torch.zeros(2, dtype=torch.float64))
    pred = S.predict(model, x, SIGMA, n=2000, alpha=ALPHA, batch_size=1000,
                     generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [0, S.ABSTAIN]
    c1 = S.certify(model, x, SIGMA, n0=50, n=1000, alpha=ALPHA, batch_size=300,
                   generator=torch.Generator().manual_seed(7))
    c2 = S.certify(model, x, SIGMA, n0=50, n=1000, alpha=ALPHA, batch_size=300,
                   generator=torch.Generator().manual_seed(7))
    assert torch.equal(c1[0], c2[0]) and torch.equal(c1[1], c2[1])
    assert int(c1[0][1]) == S.ABSTAIN and float(c1[1][1]) == 0.0


def test_lower_confidence_bound_is_clopper_pearson():
    # closed form when n_a = n: the bound solves p^n = alpha
    assert S.lower_confidence_bound(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100))
    assert S.lower_confidence_bound(0, 100, 0.01) == 0.0


def test_acr_macer_counts_wrong_and_abstained_as_zero():
    radius = torch.tensor([1.0, 2.0, 3.0, 0.5])
    pred = torch.tensor([1, 0, 2, S.ABSTAIN])
    labels = torch.tensor([1, 1, 2, 3])
    assert S.acr_macer(radius, pred == labels) == pytest.approx((1.0 + 3.0) / 4)
    assert S.acr_macer([], []) == 0.0
