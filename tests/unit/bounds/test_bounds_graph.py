"""Tracing: supported operator forms, unsupported ones, eval-mode checks, IBP gradients."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.bounds import BoundedModel, check_affordable, estimate_cost, margin_spec
from harness.core.errors import HarnessError
from harness.models.architectures import mnist_small_cnn

METHODS = ("ibp", "crown-ibp", "crown")


def _sample_check(model, bm, shape, eps=0.05, n=2000, seed=0):
    """Bounds of every method contain the model's values at random box points."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    for method in METHODS:
        with torch.no_grad():
            lo, hi = bm.bounds(x, eps, "Linf", method)
        for b in range(2):
            lo_b, hi_b = (x[b] - eps).clamp(0, 1), (x[b] + eps).clamp(0, 1)
            pts = lo_b + (hi_b - lo_b) * torch.rand(n, *shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                f = model(pts)
            assert torch.all(f >= lo[b] - 1e-9) and torch.all(f <= hi[b] + 1e-9), method


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3) * 0.5)
        self.b = nn.Parameter(torch.randn(4) * 0.1)
        self.fc = nn.Linear(16, 3)
        self.fc2 = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.register_buffer("scale", torch.tensor([[[[2.0]], [[0.5]]]]))

    def forward(self, x):
        x = 1.0 - x * self.scale                   # rsub, mul by a buffer
        x = 2 + x / 3                              # radd, div by a scalar
        h = F.conv2d(x, self.w, self.b, stride=1, padding=1)
        h = self.ident(self.drop(torch.relu(h)))
        g = h.mean(dim=(2, 3))                     # mean over spatial dims
        p = F.adaptive_avg_pool2d(h, 2) - self.pool(-h).neg() * 0.5  # sub of two traced
        p = torch.flatten(p, 1)
        out = torch.reshape(torch.relu(p), (p.shape[0], -1))
        out = F.dropout(out, 0.3, training=False)
        return F.linear(out, self.fc.weight, self.fc.bias) + self.fc2(F.relu(g))


def test_functional_forms_are_supported_and_sound():
    model = FunctionalNet().double().eval()
    bm = BoundedModel(model, (2, 4, 4))
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(bm.forward(x), model(x))
    _sample_check(model, bm, (2, 4, 4))


@pytest.mark.parametrize("layer,name", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Sigmoid(), nn.Linear(4, 2)), "Sigmoid"),
    # (MaxPool2d, the example here before it got its operator, is tested in test_bounds_ops.py)
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.LPPool2d(2, 2), nn.Flatten(), nn.Linear(2, 2)),
     "LPPool2d"),
])
def test_unsupported_module_names_operator_and_node(layer, name):
    with pytest.raises(HarnessError, match=rf"unsupported operator {name} at node \S+"):
        BoundedModel(layer().eval(), (1, 4, 4))


class SigmoidFn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(x.flatten(1)))


class Square(nn.Module):
    def forward(self, x):
        x = x.flatten(1)
        return x * x


class Cat(nn.Module):
    def forward(self, x):
        x = x.flatten(1)
        return torch.cat([x, x], 1)


class DivByInput(nn.Module):
    def forward(self, x):
        x = x.flatten(1)
        return 1.0 / (x + 1.0)


@pytest.mark.parametrize("cls,pattern", [
    (SigmoidFn, r"unsupported operator torch\.sigmoid at node sigmoid"),
    (Square, r"unsupported operator operator\.mul at node mul .*two input-dependent"),
    (Cat, r"unsupported operator torch\.cat at node cat"),
    (DivByInput, r"unsupported operator operator\.truediv at node truediv"),
])
def test_unsupported_functions(cls, pattern):
    with pytest.raises(HarnessError, match=pattern):
        BoundedModel(cls().eval(), (1, 2, 2))


def test_batchnorm_must_be_in_eval_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 2))
    with pytest.raises(HarnessError, match="training mode"):
        BoundedModel(model.train(), (1, 4, 4))
    bm = BoundedModel(model.eval(), (1, 4, 4))
    model.train()  # switched after tracing: refused at bound time, not silently wrong
    with pytest.raises(HarnessError, match="training mode"):
        bm.bounds(torch.rand(1, 1, 4, 4), 0.1, "Linf", "ibp")


def test_bad_inputs_are_reported():
    bm = BoundedModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval(), (1, 2, 2))
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(HarnessError, match="unknown bound method"):
        bm.bounds(x, 0.1, "Linf", "deeppoly")
    with pytest.raises(HarnessError, match="unknown norm"):
        bm.bounds(x, 0.1, "L1", "ibp")
    with pytest.raises(HarnessError, match="eps"):
        bm.bounds(x, -0.1, "Linf", "ibp")
    with pytest.raises(HarnessError, match=r"\[0, 1\]"):
        bm.bounds(x * 3 - 1, 0.1, "Linf", "ibp")
    with pytest.raises(HarnessError, match="shape"):
        bm.bounds(torch.rand(2, 4), 0.1, "Linf", "ibp")
    with pytest.raises(HarnessError, match="spec C"):
        bm.bounds(x, 0.1, "Linf", "ibp", C=torch.ones(2, 1, 5))


def test_ibp_is_differentiable_and_follows_live_parameters():
    torch.manual_seed(0)
    model = mnist_small_cnn()  # stays in train mode, as in a training loop
    bm = BoundedModel(model, (1, 28, 28))
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    spec = margin_spec(y, 10)
    for norm, eps in (("Linf", 0.05), ("L2", 0.5)):
        lb, ub = bm.bounds(x, eps, norm=norm, method="ibp", C=spec)
        loss = F.cross_entropy(torch.cat([torch.zeros(4, 1), -lb], 1), torch.zeros(4, dtype=torch.long))
        model.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)
    # a parameter update changes the bounds (no stale copies of the weights)
    before = bm.bounds(x, 0.05, "Linf", "ibp", C=spec)[0].detach()
    with torch.no_grad():
        model[-1].bias[0] += 1.0
    after = bm.bounds(x, 0.05, "Linf", "ibp", C=spec)[0].detach()
    assert torch.allclose(after[y == 0], before[y == 0] + 1.0, atol=1e-5)


def test_zero_weight_rows_give_finite_l2_gradients():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight[0].zero_()
    bm = BoundedModel(model, (1, 2, 2))
    lb, ub = bm.bounds(torch.rand(2, 1, 2, 2), 0.3, "L2", "ibp")
    (lb.sum() - ub.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_onnx2torch_graph_module_is_supported():
    onnx = pytest.importorskip("onnx")
    convert = pytest.importorskip("onnx2torch").convert
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
            self.register_buffer("mean", torch.full((1, 1, 1, 1), 0.5))
            self.register_buffer("std", torch.full((1, 1, 1, 1), 0.25))

        def forward(self, x):
            return self.m((x - self.mean) / self.std)

    net = Net().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.rand(1, 1, 4, 4), buf, dynamo=False, opset_version=17)
    gm = convert(onnx.load_from_string(buf.getvalue())).eval()
    bm_onnx = BoundedModel(gm, (1, 4, 4))
    bm_ref = BoundedModel(net, (1, 4, 4))
    x = torch.rand(2, 1, 4, 4)
    for method in METHODS:
        a = bm_onnx.bounds(x, 0.05, "Linf", method)
        b = bm_ref.bounds(x, 0.05, "Linf", method)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_robustbench_resnet_traces_and_ibp_runs():
    from harness.models.architectures import build_architecture

    model = build_architecture("robustbench.ResNet18", {}).eval()
    bm = BoundedModel(model, (3, 32, 32))
    x = torch.rand(1, 3, 32, 32)
    y = model(x).argmax(1)
    lb = bm.margin_lower_bounds(x, y, 1 / 255, "Linf", "ibp")
    assert lb.shape == (1, 9) and torch.isfinite(lb).all()
    c = estimate_cost(bm)
    assert c["relu_layers"] == 17
    ok, reason = check_affordable(bm, "crown")
    assert not ok and "ReLU neurons" in reason
    assert check_affordable(bm, "ibp") == (True, "") and check_affordable(bm, "crown-ibp")[0]
    # a float64 input is cast to the model's dtype
    lb64 = bm.margin_lower_bounds(x.double(), y, 1 / 255, "Linf", "ibp")
    torch.testing.assert_close(lb64, lb)


def test_cost_estimate_of_mnist_small_cnn():
    bm = BoundedModel(mnist_small_cnn().eval(), (1, 28, 28))
    c = estimate_cost(bm)
    assert c["relu_layers"] == 3
    assert c["relu_neurons"] == 16 * 14 * 14 + 32 * 7 * 7 + 100
    assert c["input_dim"] == 784
    # worst case full-CROWN coefficients: conv2 (1568) and fc1 (100) rows over their ancestors,
    # conv1's rows over the input, plus the 9 margin rows over everything
    sizes = [784, 3136, 3136, 1568, 1568, 1568, 100, 100, 10]
    pre = {1: 3136, 3: 1568, 6: 100}
    want = sum(n * sum(sizes[:i + 1]) for i, n in pre.items()) + 9 * sum(sizes)
    assert c["crown_elements"] == want
    assert check_affordable(bm, "crown")[0]


class ReluOnInput(nn.Module):
    """A ReLU applied to the (shifted) input, and a tensor used twice in one sum."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(x)
        z = torch.flatten(h - 0.5, 1)
        return self.fc(torch.relu(z) + z + z)


@pytest.mark.parametrize("model", [ReluOnInput, lambda: nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))])
def test_relu_on_the_input_and_repeated_operands(model):
    torch.manual_seed(0)
    m = model().double().eval()
    bm = BoundedModel(m, (1, 4, 4))
    _sample_check(m, bm, (1, 4, 4), eps=0.2)
