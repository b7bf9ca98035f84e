"""Local linearity: Lanczos against numpy.linalg.eigvalsh, the finite-difference input-Hessian
curvature of known quadratic losses, and gradient alignment on linear and wiggly losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.diagnostics.linearity import gradient_alignment, input_hessian_top_eigenvalue, lanczos


def _sym(n, seed, top=None):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = rng.uniform(-3, 3, n)
    if top is not None:
        ev[0] = top
    return (q * ev) @ q.T


def test_lanczos_top_eigenvalue_batched():
    # two well-separated top eigenvalues, and one inside a crowded spectrum (slower convergence)
    mats = [_sym(40, 0, top=9.0), _sym(40, 2, top=4.5), _sym(40, 1)]
    A = torch.tensor(np.stack(mats))

    def matvec(v):
        return torch.einsum("bij,bj->bi", A, v)

    v0 = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ritz = lanczos(matvec, v0, k=20)
    want = np.array([np.linalg.eigvalsh(m)[-1] for m in mats])
    np.testing.assert_allclose(ritz[:2, -1].numpy(), want[:2], rtol=1e-9)
    np.testing.assert_allclose(ritz[2, -1].item(), want[2], rtol=1e-3)
    # Ritz values interlace the spectrum: all inside [λmin, λmax]
    lo = np.array([np.linalg.eigvalsh(m)[0] for m in mats])
    assert np.all(ritz.numpy() >= lo[:, None] - 1e-9) and np.all(ritz.numpy() <= want[:, None] + 1e-9)


def test_lanczos_full_space_recovers_whole_spectrum_and_survives_breakdown():
    # k = D: the Ritz values are the eigenvalues; a rank-2 matrix forces breakdowns (invariant
    # subspaces of size 2), after which the iteration restarts orthogonally
    m = _sym(12, 3)
    u = np.random.default_rng(4).standard_normal((12, 2))
    r2 = u @ np.diag([5.0, -2.0]) @ u.T
    for mat in (m, r2):
        A = torch.tensor(mat)
        ritz = lanczos(lambda v, A=A: v @ A.T, torch.ones(1, 12, dtype=torch.float64), k=12)
        np.testing.assert_allclose(np.sort(ritz[0].numpy()), np.linalg.eigvalsh(mat), atol=1e-8)


class Quadratic(nn.Module):
    """out_b = ½ (y_b + 1) xᵀ A x: with loss = out, the input Hessian is (y + 1) A."""

    def __init__(self, A: np.ndarray):
        super().__init__()
        self.register_buffer("A", torch.tensor(A, dtype=torch.float32))

    def forward(self, x):
        f = x.flatten(1)
        return 0.5 * torch.einsum("bi,ij,bj->b", f, self.A, f)[:, None]


def quad_loss(out, y):
    return out[:, 0] * (y.float() + 1)


@pytest.mark.parametrize("top", [6.0, 0.7])
def test_fd_hessian_top_eigenvalue_of_quadratic_loss(top):
    A = _sym(48, 5, top=top)  # input (3, 4, 4): 48 dims
    model = Quadratic(A).eval()
    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0])
    res = input_hessian_top_eigenvalue(model, x, y, k=20, loss_fn=quad_loss, batch_size=3, seed=0)
    want = np.linalg.eigvalsh(A)[-1] * (y.numpy() + 1)
    np.testing.assert_allclose(res["per_example"], want, rtol=2e-3)
    assert res["mean"] == pytest.approx(want.mean(), rel=2e-3)


def test_curvature_of_cross_entropy_is_positive_and_zero_for_a_linear_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1])
    res = input_hessian_top_eigenvalue(net, x, y, k=10)
    assert np.all(res["per_example"] > 0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 1)).eval()
    flat = input_hessian_top_eigenvalue(lin, x, y, k=10, loss_fn=lambda o, _: o[:, 0])
    assert np.all(np.abs(flat["per_example"]) < 1e-3)


class Wiggly(nn.Module):
    """loss = Σ sin(freq · x): gradient freq·cos(freq·x) turns around within a distance π/freq."""

    def __init__(self, freq):
        super().__init__()
        self.freq = freq

    def forward(self, x):
        return torch.sin(self.freq * x).flatten(1).sum(1, keepdim=True)


def _loss0(out, y):
    return out[:, 0]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_gradient_alignment(norm):
    x = 0.2 + 0.6 * torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(20, dtype=torch.long)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(36, 1)).eval()
    res = gradient_alignment(lin, x, y, 0.3, norm, loss_fn=_loss0, n_samples=2)
    np.testing.assert_allclose(res["per_example"], 1.0, atol=1e-6)
    # a wiggly loss: aligned for a tiny ball, not for a ball much wider than its period
    eps_big = 0.3 if norm == "Linf" else 0.3 * 6  # an L2 ball of radius 1.8 ~ Linf 0.3 per pixel
    wig = Wiggly(60.0)
    small = gradient_alignment(wig, x, y, 1e-4, norm, loss_fn=_loss0, seed=1)
    big = gradient_alignment(wig, x, y, eps_big, norm, loss_fn=_loss0, seed=1)
    assert small["mean"] > 0.99
    assert abs(big["mean"]) < 0.3
    assert big["zero_gradient_fraction"] == 0.0
    # same seed, same draws
    again = gradient_alignment(wig, x, y, eps_big, norm, loss_fn=_loss0, seed=1)
    np.testing.assert_array_equal(big["per_example"], again["per_example"])


def test_gradient_alignment_is_nan_where_the_gradient_vanishes():
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(6, dtype=torch.long)

    class Rounded(nn.Module):
        def forward(self, x):
            return torch.round(x * 4).flatten(1).sum(1, keepdim=True)

    res = gradient_alignment(Rounded(), x, y, 0.1, loss_fn=_loss0)
    assert np.all(np.isnan(res["per_example"])) and res["zero_gradient_fraction"] == 1.0
    assert np.isnan(res["mean"]) and res["n_finite"] == 0
