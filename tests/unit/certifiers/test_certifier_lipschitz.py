"""The Lipschitz-margin certifier never certifies a radius larger than the exact one.

- closed forms on affine networks: for ``f(x) = J x + f(0)`` the exact L2 radius of the
  predicted class ``c`` is ``min_j (f_c - f_j)(x) / ||J_c - J_j||_2`` (distance to the nearest
  decision hyperplane); ``J`` is built column by column from the network itself;
- brute force on tiny ReLU networks: a dense polar grid of the 2-D disc of the certified
  radius (and rays beyond it for the exact radius), random points and an L2 attack inside the
  ball in 9-D for a LeakyReLU/max-pooling net;
- each layer's constant is at least the exact spectral norm of the layer's dense matrix.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import certifiers
from harness.bounds import ops as O
from harness.bounds.graph import build_graph
from harness.certifiers import Skip
from harness.certifiers import lipschitz as LZ
from harness.certifiers.results import summarize
from harness.core.errors import HarnessError
from harness.models.load import NormalizedModel
from harness.record.schema import CertifiedRecord

DT = torch.float64
CPU = torch.device("cpu")


def _lip():
    return certifiers.get("lipschitz")


def _run(model, shape, x, y=None, *, eps=0.05, eps_max=10.0, **opts):
    c = _lip()
    p = c.prepare(model, shape, "cpu", norm="L2", options=opts)
    if y is None:
        with torch.no_grad():
            y = model(x).argmax(1)
    res = c.run(p, x, y, index=np.arange(len(x)), eps=eps, norm="L2", eps_max=eps_max, tol=0.0)
    return p, res, y


def _jacobian(model, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(J (K, n), f(0)) of an affine network, from the network's own outputs."""
    n = math.prod(shape)
    with torch.no_grad():
        f0 = model(torch.zeros(1, *shape, dtype=DT))[0]
        cols = model(torch.eye(n, dtype=DT).reshape(n, *shape)) - f0
    return cols.T, f0


def _exact_affine_radius(J, logits, c):
    """min over j != c of (f_c - f_j) / ||J_c - J_j||, per example."""
    out = []
    for k in range(logits.shape[0]):
        ck = int(c[k])
        r = math.inf
        for j in range(logits.shape[1]):
            if j != ck:
                r = min(r, float(logits[k, ck] - logits[k, j]) / float((J[ck] - J[j]).norm()))
        out.append(r)
    return np.array(out)


def _affine_nets():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.2, 2.0)
    bn.weight.data.uniform_(-2, 2)
    return {
        "linear": (nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (1, 3, 4)),
        "normalized-linear": (NormalizedModel(nn.Sequential(nn.Flatten(), nn.Linear(18, 4)), [0.4, 0.6],
                                              [0.3, 0.3], 2), (2, 3, 3)),
        "normalized-per-channel": (NormalizedModel(nn.Sequential(nn.Flatten(), nn.Linear(18, 4)), [0.4, 0.6],
                                                   [0.2, 0.5], 2), (2, 3, 3)),
        "deep-linear": (nn.Sequential(nn.Flatten(), nn.Linear(10, 8), nn.Linear(8, 8), nn.Linear(8, 4)), (10,)),
        "conv-stride2": (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(),
                                       nn.Linear(3 * 4 * 4, 5)), (2, 7, 8)),
        "conv-bn-avgpool": (nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), bn, nn.AvgPool2d(3, stride=1),
                                          nn.Flatten(), nn.Linear(3 * 6 * 6, 4)), (1, 8, 8)),
        "conv-dilated-grouped-mean": (_MeanHead(), (4, 9, 9)),
    }


class _MeanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("name", list(_affine_nets()))
def test_radius_never_exceeds_the_exact_radius_of_an_affine_network(name):
    model, shape = _affine_nets()[name]
    model = model.to(DT).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, *shape, generator=gen, dtype=DT)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    y = pred.clone()
    y[::4] = (y[::4] + 1) % logits.shape[1]  # a quarter misclassified
    p, res, _ = _run(model, shape, x, y, eps=0.01, eps_max=100.0)
    J, _ = _jacobian(model, shape)
    exact = _exact_affine_radius(J, logits, pred)
    correct = (pred == y).numpy()
    assert np.array_equal(res.correct, correct)
    assert np.all(res.radius[~correct] == 0) and not res.certified[~correct].any()
    r = res.radius[correct]
    assert np.all(r <= exact[correct] * (1 + 1e-9)), (r / exact[correct]).max()
    assert np.all(r > 0)
    # certified at eps exactly when the certified radius exceeds eps
    assert np.array_equal(res.certified, correct & (res.radius > 0.01))
    if name in ("linear", "normalized-linear"):
        # one layer with uniform scaling: the pairwise form is the exact radius (up to SAFETY)
        assert np.all(r >= exact[correct] / (1 + 1e-4))
    # not vacuous: products of layer norms lose a factor, not orders of magnitude, on these nets
    assert np.median(r / exact[correct]) > 0.1


def test_certified_flag_refuses_eps_at_or_beyond_the_radius():
    model, shape = _affine_nets()["linear"]
    model = model.to(DT).eval()
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    _, res, y = _run(model, shape, x, eps_max=100.0)
    c = _lip()
    p = c.prepare(model, shape, "cpu", norm="L2")
    for k in range(8):
        one = c.run(p, x[k:k + 1], y[k:k + 1], index=[k], eps=0.0, norm="L2", eps_max=100.0, tol=0.0)
        r = float(one.radius[0])
        assert r == pytest.approx(float(res.radius[k]), rel=1e-12)
        at = c.run(p, x[k:k + 1], y[k:k + 1], index=[k], eps=r, norm="L2", eps_max=100.0, tol=0.0)
        below = c.run(p, x[k:k + 1], y[k:k + 1], index=[k], eps=r * 0.999, norm="L2", eps_max=100.0, tol=0.0)
        assert not at.certified[0] and below.certified[0]
    # radii are capped at eps_max
    _, capped, _ = _run(model, shape, x, eps_max=1e-3)
    assert np.all(capped.radius <= 1e-3) and np.all(capped.radius == np.minimum(res.radius, 1e-3))


def _relu_net_2d(seed, act=nn.ReLU):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 3)).to(DT)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
    return net.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brute_force_no_adversarial_point_inside_the_radius_2d(seed):
    net = _relu_net_2d(seed, nn.ReLU if seed != 2 else (lambda: nn.LeakyReLU(0.2)))
    xs = torch.rand(12, 2, generator=torch.Generator().manual_seed(seed), dtype=DT) * 0.6 + 0.2
    _, res, y = _run(net, (2,), xs, eps_max=10.0)
    angles = torch.linspace(0, 2 * math.pi, 361, dtype=DT)[:-1]
    dirs = torch.stack([angles.cos(), angles.sin()], 1)
    certified_any = False
    for k in range(len(xs)):
        r = float(res.radius[k])
        c = int(y[k])
        # the closed disc of the certified radius: every grid point keeps the prediction
        radii = torch.linspace(0, r, 41, dtype=DT)
        pts = xs[k] + (radii[:, None, None] * dirs[None]).reshape(-1, 2)
        with torch.no_grad():
            assert bool((net(pts).argmax(1) == c).all()), f"example {k}: adversarial point within r={r}"
            # the exact radius along the rays (first change of prediction up to 8 r + 0.5)
            far = torch.linspace(0, 8 * r + 0.5, 401, dtype=DT)
            ray = xs[k] + (far[:, None, None] * dirs[None])
            changed = net(ray.reshape(-1, 2)).argmax(1).reshape(len(far), len(dirs)) != c
        hit = changed.any(0)
        if bool(hit.any()):
            first = far[changed.float().argmax(0)][hit]
            assert r <= float(first.min()) + 1e-12
        certified_any |= r > 0
    assert certified_any


class _PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 2, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2, stride=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_brute_force_random_points_and_attack_inside_the_radius_leaky_maxpool():
    torch.manual_seed(3)
    net = _PoolNet().to(DT).eval()
    shape = (1, 3, 3)
    xs = torch.rand(12, *shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    p, res, y = _run(net, shape, xs, eps_max=10.0)
    assert any(line["kind"] == "MaxPool2d" and line["bound"] == 2.0 for line in p.info["layers"])
    gen = torch.Generator().manual_seed(4)
    d = math.prod(shape)
    for k in range(len(xs)):
        r = float(res.radius[k])
        c = int(y[k])
        # uniform points in the ball and on its sphere
        u = torch.randn(4000, d, generator=gen, dtype=DT)
        u = u / u.norm(dim=1, keepdim=True)
        scale = r * torch.rand(4000, 1, generator=gen, dtype=DT) ** (1 / d)
        scale[:1000] = r
        pts = xs[k].reshape(1, d) + u * scale
        with torch.no_grad():
            assert bool((net(pts.reshape(-1, *shape)).argmax(1) == c).all())
        # an L2 attack on the worst margin, projected onto the ball
        delta = torch.zeros(1, d, dtype=DT)
        for _ in range(60):
            delta.requires_grad_(True)
            out = net((xs[k].reshape(1, d) + delta).reshape(1, *shape))[0]
            other = torch.cat([out[:c], out[c + 1:]]).max()
            loss = other - out[c]
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + 0.25 * r * g / g.norm().clamp_min(1e-30)
                delta = delta * min(1.0, r / float(delta.norm().clamp_min(1e-30)))
        with torch.no_grad():
            assert int(net((xs[k].reshape(1, d) + delta).reshape(1, *shape)).argmax(1)) == c


# ---- per-layer constants against exact spectral norms ------------------------------------------

def _dense(op, shape_in):
    n = math.prod(shape_in)
    eye = torch.eye(n, dtype=DT).reshape(n, *shape_in)
    return torch.linalg.matrix_norm(op.apply(eye, bias=False).reshape(n, -1), 2).item()


def _op_of(module, shape, kind):
    g = build_graph(nn.Sequential(module, nn.Flatten()).to(DT), shape)
    return next(n.op for n in g.nodes[1:] if isinstance(n.op, kind))


@pytest.mark.parametrize("cfg", [
    dict(k=3, s=1, p=1, d=1, g=1), dict(k=3, s=2, p=1, d=1, g=1), dict(k=5, s=1, p=2, d=1, g=1),
    dict(k=3, s=1, p=2, d=2, g=1), dict(k=3, s=1, p=1, d=1, g=2), dict(k=4, s=2, p=0, d=1, g=1),
    dict(k=1, s=2, p=0, d=1, g=1), dict(k=5, s=3, p=2, d=1, g=1), dict(k=3, s=2, p=1, d=2, g=2),
])
@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 5, 7)])
def test_conv_bounds_are_upper_bounds_of_the_exact_operator_norm(cfg, shape):
    torch.manual_seed(sum(cfg.values()) + shape[1])
    conv = nn.Conv2d(4, 6, cfg["k"], stride=cfg["s"], padding=cfg["p"], dilation=cfg["d"], groups=cfg["g"])
    op = _op_of(conv, shape, O.Conv2dOp)
    exact = _dense(op, shape)
    circ, how = LZ.conv_norm(op, fft_max_flops=1e12)
    patch, how_p = LZ.conv_norm(op, fft_max_flops=0)
    assert how_p == "patch"
    assert circ >= exact * (1 - 1e-9) and patch >= exact * (1 - 1e-9)
    assert circ <= 1.7 * exact  # the circular bound is close on these sizes
    assert LZ.power_iteration(op, DT, CPU, 50) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=1), dict(kernel_size=3, stride=2,
                                padding=1, count_include_pad=False), dict(kernel_size=2, stride=2, ceil_mode=True)])
def test_average_pooling_schur_bound_is_an_upper_bound(kw):
    shape = (2, 7, 7)
    op = _op_of(nn.AvgPool2d(**kw), shape, O.AvgPool2dOp)
    exact = _dense(op, shape)
    bound = LZ.schur_norm(op, DT, CPU)
    assert exact * (1 - 1e-9) <= bound <= exact * 1.5
    if kw.get("stride", kw["kernel_size"]) == kw["kernel_size"] and not kw.get("ceil_mode"):
        assert bound == pytest.approx(1 / kw["kernel_size"])  # non-overlapping: exact


@pytest.mark.parametrize("k, s, p, d, m", [(2, 2, 0, 1, 1), (3, 1, 1, 1, 9), (3, 2, 1, 1, 4), (3, 1, 0, 2, 4),
                                           (2, 1, 0, 1, 4)])
def test_max_pooling_constant_counts_overlapping_windows(k, s, p, d, m):
    shape = (1, 8, 8)
    op = _op_of(nn.MaxPool2d(k, stride=s, padding=p, dilation=d), shape, O.MaxPool2dOp)
    consts, _ = LZ.op_constants(op, DT, CPU, LZ.FFT_MAX_FLOPS)
    assert consts == [pytest.approx(math.sqrt(m))]
    # brute force: window counts per pixel, and sampled difference ratios below sqrt(m)
    idx = torch.arange(64, dtype=DT).reshape(1, 1, 8, 8) + 1
    unf = F.unfold(F.pad(idx, (p,) * 4), k, dilation=d, stride=s)
    counts = torch.bincount(unf[unf > 0].long(), minlength=65)
    assert int(counts.max()) == m
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 500, *shape, generator=gen, dtype=DT)
    ratio = (op.forward(a) - op.forward(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= math.sqrt(m) + 1e-12


def test_linear_constant_is_the_exact_spectral_norm():
    W = torch.randn(7, 11, generator=torch.Generator().manual_seed(0), dtype=DT)
    c, how = LZ.linear_norm(W)
    assert how == "exact" and c == pytest.approx(torch.linalg.matrix_norm(W, 2).item(), rel=1e-12)


# ---- refusals, the self-check, the record -------------------------------------------------------

def test_refuses_linf_and_unsupported_operators():
    c = _lip()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(Skip, match="L2"):
        c.prepare(model, (4,), "cpu", norm="Linf")
    with pytest.raises(Skip, match="unsupported operator"):
        c.prepare(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), (4,), "cpu", norm="L2")


class _Square(nn.Module):
    def forward(self, x):
        return x * x


def test_an_operator_without_a_lipschitz_rule_is_refused():
    @O.register_op
    class SquareOp(O.Op):
        kind = "Square"
        modules = (_Square,)

        def forward(self, x):
            return x * x

    try:
        with pytest.raises(Skip, match="no L2 Lipschitz rule for operator Square"):
            _lip().prepare(nn.Sequential(nn.Linear(4, 4), _Square(), nn.Linear(4, 3)), (4,), "cpu", norm="L2")
    finally:
        O.unregister_op(SquareOp)


def test_power_iteration_catches_a_bound_below_the_true_norm(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    real = LZ.conv_norm
    monkeypatch.setattr(LZ, "conv_norm", lambda op, f: (real(op, f)[0] / 2, "broken"))
    monkeypatch.setattr(LZ, "DENSE_MAX_INPUTS", 0)
    with pytest.raises(HarnessError, match="power iteration"):
        _lip().prepare(model, (1, 6, 6), "cpu", norm="L2")


def test_lipschitz_record_entry_is_valid_and_sound_in_the_registry():
    model, shape = _affine_nets()["conv-stride2"]
    model = model.eval()
    x = torch.rand(10, *shape, generator=torch.Generator().manual_seed(5))
    c = _lip()
    p = c.prepare(model, shape, "cpu", norm="L2")
    with torch.no_grad():
        y = model(x).argmax(1)
    res = c.run(p, x, y, index=np.arange(10), eps=0.01, norm="L2", eps_max=0.5, tol=0.025)
    rec, arrays = summarize(c, p, res, eps=0.01, eps_max=0.5, tol=0.025, seconds=0.1)
    cr = CertifiedRecord.model_validate(rec)
    assert cr.method == "lipschitz" and not cr.probabilistic and cr.tolerance == 0.0
    assert cr.bound_calls_per_example is None and cr.details["lipschitz_constant"] > 0
    assert set(arrays) == {"certified_lipschitz", "radius_lipschitz"}
    assert certifiers.is_sound("lipschitz") and c.norms == ("L2",)
