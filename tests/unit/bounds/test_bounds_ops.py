"""The operator table: relaxations checked point by point, LeakyReLU and MaxPool2d (closed forms,
radius search, unsupported forms, cost figures), and toy operators added by one registration
and run through IBP, CROWN, CROWN-IBP, the radius search and the certify stage.

The brute-force soundness tests on nets with LeakyReLU and max pooling are in
test_bounds_soundness.py (``leaky_maxpool``, ``overlap_maxpool``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.nets import DT, METHODS, _check_contains, _points_l2, _points_linf, leaky_pool_cnn, overlap_pool_cnn
from helpers.toy_ops import CubeOp, ShiftOp, ToyNet

from harness.bounds import BoundedModel, certified_radius, check_affordable, estimate_cost
from harness.bounds.ops import (
    LeakyReLUOp,
    MaxPool2dOp,
    Op,
    ReLUOp,
    op_for_function,
    op_for_method,
    op_for_module,
    register_op,
    registered_ops,
    unregister_op,
)
from harness.core.errors import HarnessError

# ---------------------------------------------------------------------------------------------
# the relaxations, point by point
# ---------------------------------------------------------------------------------------------


def _shaped(op: Op, in_shape) -> Op:
    op.name = "test"
    op.in_shapes = [tuple(in_shape)]
    op.out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=DT)).shape[1:])
    return op


def _random_box(shape, gen):
    lo = torch.randn(3, *shape, generator=gen, dtype=DT)
    hi = lo + 1.5 * torch.rand(3, *shape, generator=gen, dtype=DT)
    hi.view(-1)[:3] = 0.0   # some bounds exactly at the kink
    lo.view(-1)[:3] = torch.minimum(lo.view(-1)[:3], hi.view(-1)[:3])
    return lo, hi


def _check_relaxation(op: Op, lo, hi, gen, n=3000):
    """For each example and random coefficients A of mixed sign (plus the identity rows):
    la.x + lb <= A.f(x) <= ua.x + ub and the IBP box holds f(x), at random points and random
    vertices of the box [lo, hi]."""
    B = lo.shape[0]
    out_numel = int(np.prod(op.out_shape))
    eye = torch.eye(out_numel, dtype=DT).reshape(1, out_numel, *op.out_shape).expand(B, -1, *op.out_shape)
    A = torch.cat([torch.randn(B, 6, *op.out_shape, generator=gen, dtype=DT), eye], 1)
    relax = op.relax([(lo, hi)])
    [(la, ua)], lb, ub = op.backward(A, A.clone(), relax)
    lb = torch.zeros(A.shape[:2], dtype=DT) if lb is None else lb
    ub = torch.zeros(A.shape[:2], dtype=DT) if ub is None else ub
    ilo, ihi = op.ibp((lo, hi))
    for b in range(B):
        u = torch.rand(n, *lo.shape[1:], generator=gen, dtype=DT)
        u[: n // 2] = (u[: n // 2] < 0.5).to(DT)  # vertices
        x = lo[b] + (hi[b] - lo[b]) * u
        fx = op.forward(x)
        val = fx.reshape(n, -1) @ A[b].reshape(A.shape[1], -1).T
        low = x.reshape(n, -1) @ la[b].reshape(A.shape[1], -1).T + lb[b]
        up = x.reshape(n, -1) @ ua[b].reshape(A.shape[1], -1).T + ub[b]
        assert torch.all(low <= val + 1e-9), (low - val).max()
        assert torch.all(val <= up + 1e-9), (val - up).max()
        assert torch.all(fx >= ilo[b] - 1e-12) and torch.all(fx <= ihi[b] + 1e-12)


@pytest.mark.parametrize("op", [ReLUOp(), LeakyReLUOp(0.0), LeakyReLUOp(0.01), LeakyReLUOp(0.3),
                                LeakyReLUOp(1.0)], ids=lambda o: f"{o.kind}")
def test_activation_relaxations_are_sound_pointwise(op):
    gen = torch.Generator().manual_seed(0)
    op = _shaped(op, (2, 3, 3))
    lo, hi = _random_box((2, 3, 3), gen)
    assert bool(((lo < 0) & (hi > 0)).any()) and bool((lo >= 0).any()) and bool((hi <= 0).any())
    _check_relaxation(op, lo, hi, gen)


MAXPOOLS = {
    "k2": (2, 2, 0, 1, False),
    "k3s2p1": (3, 2, 1, 1, False),   # overlapping windows, padding
    "k3s2ceil": (3, 2, 0, 1, True),  # the last window passes the edge
    "k2s1d2": (2, 1, 0, 2, False),   # dilated
    "k2x3": ((2, 3), (1, 2), (1, 0), 1, False),
}


@pytest.mark.parametrize("cfg", list(MAXPOOLS))
def test_maxpool_relaxation_is_sound_pointwise(cfg):
    k, s, p, d, ceil = MAXPOOLS[cfg]
    op = _shaped(MaxPool2dOp(_pair(k), _pair(s), _pair(p), _pair(d), ceil), (2, 6, 6))
    gen = torch.Generator().manual_seed(1)
    lo, hi = _random_box((2, 6, 6), gen)
    # make some windows decided: a few inputs far above the rest
    lo.view(3, -1)[:, ::7] += 4.0
    hi.view(3, -1)[:, ::7] += 4.0
    decided = op.relax([(lo, hi)])[1]
    assert bool(decided.any()) and bool((~decided).any())  # both relaxation branches are tested
    _check_relaxation(op, lo, hi, gen)


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def test_maxpool_loose_marks_exactly_what_the_relaxation_reads():
    """Tightening the bounds of an input outside ``loose`` (decided windows, dominated inputs)
    leaves the relaxation unchanged."""
    op = _shaped(MaxPool2dOp((3, 3), (2, 2), (1, 1), (1, 1), False), (1, 5, 5))
    gen = torch.Generator().manual_seed(2)
    lo, hi = _random_box((1, 5, 5), gen)
    lo[:, :, 0, 0] += 5.0
    hi[:, :, 0, 0] += 5.0  # decides the top-left window
    loose = op.loose(0, lo, hi)
    assert bool(loose.any()) and bool((~loose).any())
    mid = (lo + hi) / 2
    lo2, hi2 = torch.where(loose, lo, mid - 1e-3), torch.where(loose, hi, mid + 1e-3)
    lo2, hi2 = torch.maximum(lo2, lo), torch.minimum(hi2, hi)
    (k1, dec1, u1), (k2, dec2, u2) = op.relax([(lo, hi)]), op.relax([(lo2, hi2)])
    assert torch.equal(k1, k2) and torch.equal(dec1, dec2) and bool(dec1.any())
    assert torch.equal(u1[~dec1], u2[~dec1])  # U is read only where the window is undecided


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------


def _jacobian_bounds(model, x, eps, norm):
    """Exact range of an affine-on-the-set model: f(x) + sum_j min/max(J_ij d_j) (Linf box
    clipped to [0, 1]) or f(x) -+ eps ||J_i|| (L2 ball)."""
    out = []
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0))[0], x[b])
        J = J.reshape(J.shape[0], -1)
        f = model(x[b:b + 1])[0].detach()
        if norm == "Linf":
            dlo = ((x[b] - eps).clamp(0, 1) - x[b]).reshape(-1)
            dhi = ((x[b] + eps).clamp(0, 1) - x[b]).reshape(-1)
            out.append((f + torch.minimum(J * dlo, J * dhi).sum(1),
                        f + torch.maximum(J * dlo, J * dhi).sum(1)))
        else:
            out.append((f - eps * J.norm(dim=1), f + eps * J.norm(dim=1)))
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


class StableLeaky(nn.Module):
    """LeakyReLUs whose pre-activations keep their sign on all of [0, 1]^8 (|W x| < |bias|), or
    LeakyReLU(1) (the identity): the network is affine on the input set."""

    def __init__(self, identity: bool):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 6), nn.Linear(6, 4), nn.Linear(4, 3)
        self.slopes = (1.0, 1.0) if identity else (0.2, 0.1)
        if not identity:
            with torch.no_grad():
                self.fc1.weight.uniform_(-0.3, 0.3)   # |fc1 x| <= 2.4 < 3
                self.fc1.bias.copy_(torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0, -3.0]))
                self.fc2.weight.uniform_(-0.05, 0.05)  # |h1| <= 5.4, |fc2 h1| <= 1.62 < 3
                self.fc2.bias.copy_(torch.tensor([3.0, -3.0, -3.0, 3.0]))
        self.act = nn.LeakyReLU(self.slopes[0])

    def forward(self, x):
        h = self.act(self.fc1(x.flatten(1)))
        return self.fc3(F.leaky_relu(self.fc2(h), negative_slope=self.slopes[1]))


@pytest.mark.parametrize("identity", [False, True], ids=["stable", "slope1"])
@pytest.mark.parametrize("norm,eps", [("Linf", 0.07), ("L2", 0.2)])
def test_leaky_relu_on_an_affine_region_is_exact(identity, norm, eps):
    model = StableLeaky(identity).to(DT).eval()
    bm = BoundedModel(model, (2, 2, 2))
    x = torch.rand(3, 2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    x[0, 0, 0, 0] = 0.01  # the Linf box is clipped here
    want_lo, want_hi = _jacobian_bounds(model, x, eps, norm)
    for method in METHODS:
        with torch.no_grad():
            lo, hi = bm.bounds(x, eps, norm, method)
        if method == "ibp":  # IBP is sound, not exact, through several layers
            assert torch.all(lo <= want_lo + 1e-10) and torch.all(hi >= want_hi - 1e-10)
            continue
        torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-10)
        torch.testing.assert_close(hi, want_hi, rtol=0, atol=1e-10)


def test_leaky_relu_with_slope_zero_gives_the_relu_bounds():
    torch.manual_seed(0)
    relu = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3)).to(DT).eval()
    leaky = nn.Sequential(*[nn.LeakyReLU(0.0) if isinstance(m, nn.ReLU) else m for m in relu]).eval()
    a, b = BoundedModel(relu, (1, 4, 4)), BoundedModel(leaky, (1, 4, 4))
    assert {n.op.kind for n in b.graph.nodes[1:]} >= {"LeakyReLU"}
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=DT)
    for method in METHODS:
        for norm, eps in (("Linf", 0.08), ("L2", 0.25)):
            torch.testing.assert_close(a.bounds(x, eps, norm, method),
                                       b.bounds(x, eps, norm, method), rtol=0, atol=1e-12)


def test_maxpool_with_decided_windows_is_exact():
    """Each 2x2 window has one input that stays the largest over the whole set, so max pooling
    is a selection (linear) there: every method is exact for Linf (disjoint windows keep the
    IBP box a product box), CROWN and CROWN-IBP for L2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).to(DT).eval()
    bm = BoundedModel(model, (2, 4, 4))
    gen = torch.Generator().manual_seed(3)
    x = 0.3 * torch.rand(3, 2, 4, 4, generator=gen, dtype=DT)
    for i in range(2):
        for j in range(2):
            pos = torch.randint(0, 4, (3, 2), generator=gen)
            win = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(3, 2, 4)
            win.scatter_(2, pos.unsqueeze(2), 0.8 + 0.2 * torch.rand(3, 2, 1, generator=gen, dtype=DT))
            x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = win.reshape(3, 2, 2, 2)
    eps = 0.1
    pool = bm.graph.nodes[1].op
    assert bool(pool.relax([((x - eps), (x + eps))])[1].all())  # every window decided
    for norm in ("Linf", "L2"):
        want_lo, want_hi = _jacobian_bounds(model, x, eps, norm)
        for method in METHODS:
            with torch.no_grad():
                lo, hi = bm.bounds(x, eps, norm, method)
            if method == "ibp" and norm == "L2":
                assert torch.all(lo <= want_lo + 1e-10) and torch.all(hi >= want_hi - 1e-10)
                continue
            torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-10)
            torch.testing.assert_close(hi, want_hi, rtol=0, atol=1e-10)


class _Pool(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        if self.form == "module":
            y = self.pool(x)
        elif self.form == "functional":
            y = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        elif self.form == "dilated":
            y = F.max_pool2d(x, 2, 1, 0, 2)
        else:
            y = torch.max_pool2d(x, [2, 2])
        return y.flatten(1)


@pytest.mark.parametrize("form", ["module", "functional", "dilated", "torch"])
def test_maxpool_of_the_input_box_is_exact(form):
    """On the input box the range of each max is [max of lower corners, max of upper corners]:
    IBP, CROWN and CROWN-IBP all give it (the upper relaxation is the window's largest upper
    bound, or the chosen input when it dominates)."""
    model = _Pool(form).eval()
    bm = BoundedModel(model, (2, 5, 5))
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    eps = 0.1
    want_lo, want_hi = model((x - eps).clamp(0, 1)), model((x + eps).clamp(0, 1))
    for method in METHODS:
        lo, hi = bm.bounds(x, eps, "Linf", method)
        torch.testing.assert_close(lo, want_lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(hi, want_hi, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# radius search, forms, costs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("build,shape", [(leaky_pool_cnn, (1, 4, 4)), (overlap_pool_cnn, (2, 5, 5))],
                         ids=["leaky_maxpool", "overlap_maxpool"])
def test_radius_on_leaky_relu_and_maxpool_nets(build, shape, method):
    """Certified at r, not at r + tol (unless r = eps_max), as for ReLU nets."""
    model = build(0)
    bm = BoundedModel(model, shape)
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(4), dtype=DT)
    y = model(x).argmax(1)
    tol = 2e-3
    for norm, eps_max in (("Linf", 0.3), ("L2", 0.8)):
        r, calls = certified_radius(bm, x, y, eps_max, norm, method, tol)
        assert calls >= 1 and torch.all((r >= 0) & (r <= eps_max))
        pos = r > 0
        assert bool(pos.any())
        assert bool(bm.certify(x[pos], y[pos], r[pos], norm, method).all())
        below = r < eps_max
        assert bool(below.any())
        probe = torch.clamp(r[below] + tol, max=eps_max)
        assert not bool(bm.certify(x[below], y[below], probe, norm, method).any())
        # soundness at the radius: no sampled point of the set at r changes the prediction
        gen = torch.Generator().manual_seed(5)
        for b in pos.nonzero().flatten().tolist()[:1]:
            pts = (_points_linf if norm == "Linf" else _points_l2)(x[b], float(r[b]), 500, gen)
            with torch.no_grad():
                assert bool((model(pts).argmax(1) == y[b]).all())


class _Form(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).flatten(1)


@pytest.mark.parametrize("body,pattern", [
    (nn.LeakyReLU(-0.1), r"unsupported operator LeakyReLU at node \S+ .*negative_slope=-0\.1"),
    (nn.LeakyReLU(1.5), r"unsupported operator LeakyReLU at node \S+ .*outside \[0, 1\]"),
    (lambda x: F.leaky_relu(x, negative_slope=-2.0), r"leaky_relu at node \S+ .*negative_slope"),
    (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], r"unsupported operator .* at node"),
    (nn.Sequential(nn.Flatten(2), nn.MaxPool1d(2)), r"unsupported operator MaxPool1d at node"),
])
def test_unsupported_forms_of_the_new_operators(body, pattern):
    with pytest.raises(HarnessError, match=pattern):
        BoundedModel(_Form(body if isinstance(body, nn.Module) else _Lambda(body)).eval(), (1, 4, 4))


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_cost_counts_every_relaxed_operator():
    bm = BoundedModel(leaky_pool_cnn(0), (1, 4, 4))
    c = estimate_cost(bm)
    # LeakyReLU 3x4x4, MaxPool 3x2x2, F.leaky_relu 8
    assert c["relaxed_neurons"] == c["relu_neurons"] == 48 + 12 + 8
    assert c["relaxed_layers"] == c["relu_layers"] == 3
    assert c["relaxed_kinds"] == "LeakyReLU/MaxPool2d"
    # nodes: input 16, conv 48, leaky 48, pool 12, flatten 12, fc1 8, leaky 8, fc2 3; bounds are
    # needed on conv (LeakyReLU), leaky (MaxPool2d) and fc1 (leaky_relu); 2 margin rows
    crown = 48 * (16 + 48) + 48 * (16 + 48 + 48) + 8 * (16 + 48 + 48 + 12 + 12 + 8)
    assert c["crown_elements"] == crown + 2 * (16 + 48 + 48 + 12 + 12 + 8 + 8 + 3)
    ok, why = check_affordable(bm, "crown", max_relu_neurons=10)
    assert not ok and why == "68 LeakyReLU/MaxPool2d neurons > 10"
    assert check_affordable(bm, "crown") == (True, "")


def test_the_table_maps_targets_to_their_classes():
    assert op_for_module(nn.LeakyReLU()) is LeakyReLUOp and op_for_function(F.leaky_relu) is LeakyReLUOp
    assert op_for_module(nn.MaxPool2d(2)) is MaxPool2dOp and op_for_function(F.max_pool2d) is MaxPool2dOp
    assert op_for_module(nn.ReLU()) is ReLUOp and op_for_method("relu") is ReLUOp
    assert op_for_module(nn.Sigmoid()) is None and op_for_function(torch.sigmoid) is None
    assert {ReLUOp, LeakyReLUOp, MaxPool2dOp} <= set(registered_ops())

    class AnotherReLU(ReLUOp):
        modules = (nn.ReLU,)

    with pytest.raises(ValueError, match="already handled by ReLUOp"):
        register_op(AnotherReLU)
    assert op_for_module(nn.ReLU()) is ReLUOp  # nothing half-registered

    class NoTargets(ReLUOp):  # targets are not inherited
        pass

    with pytest.raises(ValueError, match="declares no"):
        register_op(NoTargets)
    with pytest.raises(TypeError):
        register_op(nn.ReLU)


# ---------------------------------------------------------------------------------------------
# toy operators, each added by one registration
# ---------------------------------------------------------------------------------------------














@pytest.fixture
def toy_ops():
    register_op(ShiftOp)  # the one registration each operator needs
    register_op(CubeOp)
    yield
    unregister_op(ShiftOp)
    unregister_op(CubeOp)


def test_toy_operators_are_unsupported_until_registered():
    torch.manual_seed(0)
    with pytest.raises(HarnessError, match=r"unsupported operator operator\.pow"):
        BoundedModel(ToyNet().to(DT).eval(), (1, 4, 4))


@pytest.mark.parametrize("norm,eps", [("Linf", 0.08), ("L2", 0.25)])
def test_toy_operators_are_sound_under_every_method(toy_ops, norm, eps):
    torch.manual_seed(0)
    model = ToyNet().to(DT).eval()
    bm = BoundedModel(model, (1, 4, 4))
    kinds = [n.op.kind for n in bm.graph.nodes[1:]]
    assert "Shift" in kinds and "Cube" in kinds  # the registered ops, not a trace through them
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 4, 4, generator=gen, dtype=DT)
    with torch.no_grad():
        found = {m: bm.bounds(x, eps, norm, m) for m in METHODS}
    for b in range(3):
        pts = (_points_linf if norm == "Linf" else _points_l2)(x[b], eps, 3000, gen)
        with torch.no_grad():
            f = model(pts)
        for lo, hi in found.values():
            _check_contains(f, lo[b], hi[b])
    # the toy ops are used, not skipped: CROWN differs from IBP and is at least as tight here
    (il, iu), (cl, cu) = found["ibp"], found["crown"]
    assert not torch.equal(il, cl) and torch.all(cl >= il - 1e-9) and torch.all(cu <= iu + 1e-9)
    # live constants: changing the buffer moves the bounds
    with torch.no_grad():
        model.shift.c += 1.0
        assert not torch.allclose(bm.bounds(x, eps, norm, "ibp")[0], il)


def test_toy_operators_in_the_radius_search(toy_ops):
    torch.manual_seed(0)
    model = ToyNet().to(DT).eval()
    bm = BoundedModel(model, (1, 4, 4))
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    y = model(x).argmax(1)
    for method in METHODS:
        r, _ = certified_radius(bm, x, y, 0.5, "Linf", method, 1e-3)
        pos, below = r > 0, r < 0.5
        assert bool(pos.any()) and bool(bm.certify(x[pos], y[pos], r[pos], "Linf", method).all())
        probe = torch.clamp(r[below] + 1e-3, max=0.5)
        assert not bool(bm.certify(x[below], y[below], probe, "Linf", method).any())


class MnistToyNet(nn.Module):
    """MNIST-shaped: conv, LeakyReLU, MaxPool2d, and the toy ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)  # -> 4x14x14
        self.pool = nn.MaxPool2d(2)                          # -> 4x7x7
        self.body = ToyNet(4 * 7 * 7, 10)

    def forward(self, x):
        return self.body(self.pool(F.leaky_relu(self.conv(x), 0.1)))


def test_toy_and_new_operators_through_the_certify_stage(toy_ops, make_submission, tmp_path):
    from harness.models.load import LoadedModel, NormalizedModel
    from harness.record.schema import CertifiedRecord
    from harness.stages.certify import CertifyStage

    try:
        from test_bounds_certify_stage import EVAL, _check_method, _ctx
    except ImportError:  # tests/ imported as a package
        from tests.test_bounds_certify_stage import EVAL, _check_method, _ctx

    eps = 0.002
    path = make_submission("cert-toy", threat_model={"norm": "Linf", "eps": eps},
                           evaluation={**EVAL, "n_examples": 6, "certify": list(METHODS)})
    ctx = _ctx(path, tmp_path)
    torch.manual_seed(0)
    module = NormalizedModel(MnistToyNet(), [0.1307], [0.3081], 1).eval()
    ctx.model = LoadedModel(module, torch.device("cpu"), (1, 28, 28), 10, "0" * 64, "state_dict")
    x, y = ctx.data.floats(), ctx.data.labels()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(30):  # fit the 6 points, so that certification has something to decide
        opt.zero_grad()
        F.cross_entropy(module(x), y).backward()
        opt.step()
    module.eval()
    res = CertifyStage().run(ctx)
    assert res.summary["certify_skipped"] is None
    bm = BoundedModel(module, (1, 28, 28))
    assert {"Shift", "Cube", "LeakyReLU", "MaxPool2d"} <= {n.op.kind for n in bm.graph.nodes[1:]}
    correct = (module(x).argmax(1) == y).numpy()
    recs = {m: CertifiedRecord.model_validate(r) for m, r in res.summary["certified"].items()}
    assert set(recs) == set(METHODS)
    for m, c in recs.items():
        _check_method(c, res.arrays[f"certified_{m}"], res.arrays[f"radius_{m}"], correct, bm,
                      x, y, eps, 2 * eps, eps / 20, m, 6)
        assert c.details["cost"]["relaxed_kinds"] == "Cube/LeakyReLU/MaxPool2d/ReLU"
    assert recs["crown"].certified_accuracy > 0
