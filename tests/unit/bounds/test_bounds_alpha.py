"""alpha-CROWN (harness/bounds/alpha.py): never looser than CROWN, and no sampled or PGD input
gets a margin below its bound, on nets with ReLU, LeakyReLU, conv, residual add, BatchNorm and
MaxPool; every slope stays in the op's declared range."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness.bounds import crown as CR
from harness.bounds import ibp as I
from harness.bounds.alpha import AlphaCrown, BoxSet
from harness.bounds.bounded import margin_spec
from harness.bounds.graph import build_graph


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = h + nn.functional.leaky_relu(self.c2(h), 0.2)
        h = self.pool(h).flatten(1)
        return self.fc2(torch.relu(self.fc(h)))


def _nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 24), nn.LeakyReLU(0.1),
                        nn.Linear(24, 4))
    res = _Res()
    with torch.no_grad():  # a non-trivial BatchNorm (eval mode: running statistics)
        res.bn.running_mean.uniform_(-0.2, 0.2)
        res.bn.running_var.uniform_(0.5, 2.0)
        res.bn.weight.uniform_(0.5, 1.5)
    # the conv net takes seconds on a loaded 2-core machine: slow
    return [("mlp", mlp), pytest.param("conv-res-bn-maxpool", res.eval(), marks=pytest.mark.slow)]


def _pgd_min(net, lo, hi, C, steps=60, restarts=16):
    """The least margin PGD finds per row (signed steps on each row separately)."""
    S = C.shape[1]
    x = lo + (hi - lo) * torch.rand(restarts * S, *lo.shape[1:])
    rows = torch.arange(S).repeat_interleave(restarts)
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        m = (net(x) * C[0][rows]).sum(1)
        g, = torch.autograd.grad(m.sum(), x)
        x = torch.min(torch.max(x - (hi - lo) * 0.1 * (1 - t / steps) * g.sign(), lo), hi)
    with torch.no_grad():
        m = (net(x) * C[0][rows]).sum(1)
    return torch.stack([m[rows == s].min() for s in range(S)])


@pytest.mark.parametrize("name,net", _nets())
def test_alpha_crown_sound_and_never_looser_than_crown(name, net):
    torch.manual_seed(1)
    x = torch.rand(1, 1, 6, 6)
    y = net(x).argmax(1)
    C = margin_spec(y, 4)
    g = build_graph(net, (1, 6, 6))
    gained = 0.0
    for eps in (0.02, 0.08):
        lo, hi = (x - eps), (x + eps)
        inp = BoxSet(lo, hi)
        with torch.no_grad():
            crown = CR.crown_bounds(g, inp, C, "crown", True, False, 2 ** 24)[0]
        eng = AlphaCrown(g, inp, C)
        alpha, _ = eng.run(iters=15)
        # every slope stays in the op's declared sound range
        for p, (a, b) in eng.params():
            assert float(p.detach().min()) >= a - 1e-7 and float(p.detach().max()) <= b + 1e-7
        assert (alpha >= crown - 1e-5).all(), (name, eps, alpha, crown)
        gained = max(gained, float((alpha - crown).max()))
        with torch.no_grad():
            xs = lo + (hi - lo) * torch.rand(4000, *x.shape[1:])
            sampled = (net(xs) @ C[0].T).min(0).values
        pgd = _pgd_min(net, lo, hi, C)
        assert (alpha <= sampled + 1e-5).all(), (name, eps, alpha, sampled)
        assert (alpha <= pgd + 1e-5).all(), (name, eps, alpha, pgd)
    assert gained > 1e-4, f"{name}: alpha-CROWN never tighter than CROWN ({gained})"


def test_ibp_margin_folds_the_spec_into_the_last_layer():
    """Folding ``C`` into the last Linear (``(C W) h + C b``) is never looser than ``C`` times the
    output box, and strictly tighter on a random net (hand check: the naive product below)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    g = build_graph(net, (5,))
    x = torch.rand(1, 5)
    C = margin_spec(net(x).argmax(1), 3)
    inp = BoxSet(x - 0.1, x + 0.1)
    with torch.no_grad():
        states, _ = I.propagate(g, inp)
        folded = I.spec_bounds(g, states, C, True, False)[0]
        box = I.to_box(states[g.output])
        naive = (C.clamp(min=0) @ box.lower.unsqueeze(-1) + C.clamp(max=0) @ box.upper.unsqueeze(-1)).squeeze(-1)
        xs = x - 0.1 + 0.2 * torch.rand(5000, 5)
        true = (net(xs) @ C[0].T).min(0).values
    assert (folded >= naive - 1e-6).all() and float((folded - naive).max()) > 1e-3
    assert (folded <= true + 1e-6).all()
