"""The hand-written FGSM/PGD ladder: feasibility, closed forms on linear models, determinism."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness.core.errors import HarnessError
from harness.diagnostics.attacks import attack_ladder, fgsm, pgd, robust_flags


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).eval()


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[: n // 2] = (x[: n // 2] > 0.7).float()  # half of them on the box's faces, as MNIST pixels are
    return x, torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.3), ("L2", 1.5)])
def test_iterates_stay_in_the_ball_and_the_box(norm, eps):
    model, (x, y) = _cnn(), _data()
    for x_adv in (fgsm(model, x, y, eps, norm), pgd(model, x, y, eps, norm, steps=5, seed=1, batch_size=5)):
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
        assert torch.all(size <= eps * (1 + 1e-5) + 1e-6)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert size.max() > 0.5 * eps  # and they do move


class TwoClassLinear(nn.Module):
    def __init__(self, w0, w1, margin):
        super().__init__()
        self.w = nn.Parameter(torch.stack([w0, w1]))
        self.b = nn.Parameter(torch.tensor([margin, -margin]))

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_fgsm_and_pgd_closed_forms_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    w0, w1 = torch.randn(2, 16, generator=g)
    model = TwoClassLinear(w0, w1, margin=100.0).eval()  # label 0 is never lost: no early stop
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4, generator=g)
    y = torch.zeros(4, dtype=torch.long)
    direction = (w1 - w0).reshape(1, 1, 4, 4)

    def margin(out, y):  # the logit margin: its gradient is exactly w1 - w0 (no softmax rounding)
        return out[:, 1] - out[:, 0]

    # Linf: the loss increases along sign(w1 - w0); the optimum is that vertex of the ball
    want = (x + 0.2 * direction.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, 0.2, "Linf", loss_fn=margin), want)
    torch.testing.assert_close(pgd(model, x, y, 0.2, "Linf", steps=20, seed=3, loss_fn=margin), want)
    # L2: the normalised gradient step
    want2 = x + 0.25 * direction / direction.norm()
    torch.testing.assert_close(fgsm(model, x, y, 0.25, "L2", loss_fn=margin), want2)
    torch.testing.assert_close(pgd(model, x, y, 0.25, "L2", random_start=False, loss_fn=margin), want2)
    # from a random start the orthogonal part of the start decays geometrically
    delta = (pgd(model, x, y, 0.25, "L2", seed=3, loss_fn=margin) - x).flatten(1)
    torch.testing.assert_close(delta.norm(dim=1), torch.full((4,), 0.25))
    assert torch.all(delta @ direction.flatten() / (0.25 * direction.norm()) > 0.85)
    # the cross-entropy saturates here (p1 ~ e^-200 underflows): its gradient is exactly zero, so
    # FGSM does not move
    torch.testing.assert_close(fgsm(model, x, y, 0.2, "Linf"), x)


def test_pgd_returns_the_first_misclassified_iterate_and_is_deterministic():
    g = torch.Generator().manual_seed(1)
    w0, w1 = torch.randn(2, 16, generator=g)
    x = 0.3 + 0.4 * torch.rand(6, 1, 4, 4, generator=g)
    y = torch.zeros(6, dtype=torch.long)
    # a bias that classifies every point as 0 but lets the 0.2-ball cross the boundary
    d = w1 - w0
    s_x = x.flatten(1) @ d
    reach = 0.2 * d.abs().sum()
    assert reach > s_x.max() - s_x.min()
    c = (-s_x.max() - s_x.min() - reach) / 2  # s + c < 0 at x, s + reach + c > 0 at the vertex
    model = TwoClassLinear(w0, w1, margin=0.0).eval()
    model.b.data = torch.stack([-c / 2, c / 2])
    assert robust_flags(model, x, y).all()
    x1 = pgd(model, x, y, 0.2, "Linf", seed=5)
    x2 = pgd(model, x, y, 0.2, "Linf", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    flags = robust_flags(model, x1, y)
    assert flags.dtype == torch.bool and not flags.any()
    # the random start depends on the seed (a small step keeps it visible)
    x3 = pgd(model, x, y, 0.2, "Linf", seed=6, steps=1, step_size=0.01)
    assert not torch.equal(x3, pgd(model, x, y, 0.2, "Linf", seed=7, steps=1, step_size=0.01))


def test_ladder_counts_only_clean_correct_points_and_bad_args_raise():
    model, (x, y) = _cnn(), _data()
    lad = attack_ladder(model, x, y, 0.3, batch_size=5)
    clean = lad["flags"]["clean"]
    assert lad["n"] == 12 and lad["clean"] == clean.mean()
    for k in ("fgsm", "pgd"):
        assert not (lad["flags"][k] & ~clean).any()
        assert lad[k] == lad["flags"][k].mean() <= lad["clean"]
    with pytest.raises(HarnessError):
        fgsm(model, x, y, 0.3, "L1")
    with pytest.raises(HarnessError):
        pgd(model, x, y, -0.1)
    with pytest.raises(HarnessError):
        pgd(model, x, y, 0.1, steps=0)
