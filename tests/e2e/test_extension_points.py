"""Each extension point is one registration (issue 11). A toy dataset (``harness.data.registry.register``),
a toy bound operator (``harness.bounds.ops.register_op``) and a toy certifier
(``harness.certifiers.register``) are added with one line each, and one submission that needs all
three runs through the pipeline: its data come from the toy dataset, IBP bounds its model through
the toy operator, and the toy certifier gives the exact radius, checked against a hand computation.
The evaluation runs in this process (``sandbox="none"``): a sandboxed worker is a fresh process
that knows only the built-in registries."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from helpers.toy_ops import Shift, ShiftOp

from harness import certifiers
from harness.bounds.ops import register_op, unregister_op
from harness.certifiers import Certifier, CertResult, Prepared, Skip
from harness.core.files import sha256_file
from harness.data import registry as datasets
from harness.data.loaders import ArrayImages, Loaded
from harness.models import architectures
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions

N, K, SHAPE, EPS = 24, 10, (1, 4, 4), 0.1  # 10 classes: AutoAttack's APGD-T needs 9 targets


class ExactAffine(Certifier):
    """Exact certificate of an affine classifier, whatever its modules: its matrix is its Jacobian
    (read by autograd, and the model is checked to be affine at random points); the radius is the
    distance to the nearest decision hyperplane, ``min_j (f_c - f_j)(x) / ||w_c - w_j||_*``."""

    name, sound, norms = "toy-exact-affine", True, ("Linf", "L2")

    def prepare(self, model, input_shape, device, *, norm, options=None):
        self.check_norm(norm)
        d = int(np.prod(input_shape))

        def f(z):
            return model(z.reshape(1, *input_shape)).squeeze(0)

        zero = torch.zeros(d, device=device)
        J = torch.autograd.functional.jacobian(f, zero).double()
        probe = torch.rand(4, d, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            affine = torch.allclose(model(probe.reshape(4, *input_shape)).double(),
                                    probe.double() @ J.T + f(zero).double(), atol=1e-5)
        if not affine:
            raise Skip("not an affine model")
        dual = (J[:, None, :] - J[None, :, :]).norm(p=1 if norm == "Linf" else 2, dim=2)
        return Prepared(norm=norm, state=(model, dual), tolerance=0.0)

    @torch.no_grad()
    def run(self, prepared, x, y, *, index=None, eps, norm, eps_max, tol, seed=0):
        model, dual = prepared.state
        logits = model(x).double()
        pred = logits.argmax(1)
        ratio = (logits.gather(1, pred[:, None]) - logits) / dual[pred]
        ratio.scatter_(1, pred[:, None], float("inf"))
        r = ratio.min(1).values.cpu().numpy()
        correct = (pred.cpu() == torch.as_tensor(y).cpu()).numpy()
        return CertResult(certified=correct & (r > eps), radius=np.where(correct, np.minimum(r, eps_max), 0.0),
                          correct=correct, counts={"examples": int(x.shape[0])})


def _toy_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), K), Shift(K))


@pytest.fixture
def toy_world(monkeypatch, make_submission):
    torch.manual_seed(3)
    net = _toy_net().eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(N, *SHAPE), dtype=np.uint8))
    with torch.no_grad():
        y = net(x.float() / 255).argmax(1).numpy()
    y[::6] = (y[::6] + 1) % K  # some points misclassified

    # the three registrations (and the architecture that uses the toy operator's module)
    datasets.register(datasets.DatasetSpec(
        name="toy-grid", title="Toy grid", num_classes=K, input_shape=SHAPE, n_test=N, train_size=100,
        loader=lambda spec, req: Loaded(ArrayImages(x), y, "toy-grid:generated", N)))
    register_op(ShiftOp)
    certifiers.register(ExactAffine())
    monkeypatch.setitem(architectures.BUILTIN, "toy_affine_shift", lambda num_classes=K: _toy_net())

    path = make_submission("toy-world", module=net, dataset="toy-grid", threat_model={"norm": "Linf", "eps": EPS},
                           evaluation={"n_examples": N, "batch_size": 10, "seed": 0,
                                       "certify": ["ibp", "toy-exact-affine"]})
    spec = yaml.safe_load(path.read_text())
    spec["model"]["architecture"] = "toy_affine_shift"
    spec["model"].pop("architecture_kwargs", None)
    spec["model"]["checkpoint"]["sha256"] = sha256_file(path.parent / "model.pt")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        yield path, net, x, y
    finally:
        certifiers.unregister("toy-exact-affine")
        unregister_op(ShiftOp)
        datasets.unregister("toy-grid")


@pytest.mark.slow
def test_a_toy_dataset_operator_and_certifier_run_through_the_pipeline(toy_world, tmp_path, monkeypatch):
    path, net, x, y = toy_world
    built = []
    real = ShiftOp.from_node.__func__
    monkeypatch.setattr(ShiftOp, "from_node", classmethod(lambda cls, b, n: built.append(n) or real(cls, b, n)))
    res = evaluate(path, EvalOptions(device="cpu", progress=False, sandbox="none"),
                   stages=["clean", "certify", "autoattack"], out=tmp_path / "rec.json", echo=lambda s: None)
    rec, arrays = res.record, res.arrays
    assert rec.dataset == "toy-grid" and rec.n_examples == N and rec.provenance.data_source == "toy-grid:generated"
    assert rec.certify_skipped is None and set(rec.certified) == {"ibp", "toy-exact-affine"}

    # the hand computation: f(x) = W x + b + c, Linf radius = min_j (f_c - f_j) / ||w_c - w_j||_1
    W = net[1].weight.detach().double().numpy()
    b = (net[1].bias.detach() + net[2].c).double().numpy()
    xs = x.reshape(N, -1).double().numpy() / 255
    logits = xs @ W.T + b
    pred = logits.argmax(1)
    eps_max = rec.certified["toy-exact-affine"].eps_max
    want = np.zeros(N)
    for i in range(N):
        c = pred[i]
        if c == y[i]:
            want[i] = min(min((logits[i, c] - logits[i, j]) / np.abs(W[c] - W[j]).sum() for j in range(K) if j != c),
                          eps_max)
    np.testing.assert_allclose(arrays["radius_toy-exact-affine"], want, rtol=1e-5, atol=1e-6)
    exact = arrays["certified_toy-exact-affine"].astype(bool)
    assert exact.tolist() == ((pred == y) & (want > EPS)).tolist()
    assert 0 < exact.sum() < (pred == y).sum()  # neither vacuous nor everything

    # IBP bounded the model through the toy operator, and is sound: it certifies no point the exact
    # certificate does not; and the sandwich holds against AutoAttack
    assert built, "the bound graph never used the registered operator"
    ibp = arrays["certified_ibp"].astype(bool)
    assert not (ibp & ~exact).any()
    assert not (exact & ~arrays["autoattack_robust"].astype(bool)).any()
    assert rec.clean_accuracy == pytest.approx(float((pred == y).mean()))
