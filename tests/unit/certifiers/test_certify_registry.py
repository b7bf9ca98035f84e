"""The certify stage runs the certifier registry (issue 11): a toy certifier registered by one line
goes through the whole pipeline, the Lipschitz certifier runs on an L2 MNIST submission and never
reports a radius above the exact one, skips hold for the whole job, and certify-first reads
soundness from the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from helpers.toy_certifier import ExactLinear

from harness import certifiers
from harness.core.stats import clopper_pearson
from harness.data.loaders import load_test_data
from harness.models import architectures
from harness.models.load import load_model
from harness.record.read import read_record
from harness.runner.evaluate import evaluate
from harness.stages import EvalContext, EvalOptions
from harness.stages.autoattack import certified_mask
from harness.stages.base import concat_blocks
from harness.stages.blocks import make_block
from harness.stages.certify import CertifyStage
from harness.submission.load import load_submission

MEAN, STD = 0.1307, 0.3081  # the submission's preprocessing: the model sees (x - MEAN) / STD
N, BATCH, EPS = 16, 10, 1.0  # two blocks, [0, 10) and [10, 16); block 0 runs 8 + 2


def _centroids() -> tuple[torch.Tensor, torch.Tensor]:
    """A nearest-centroid linear classifier in input space, from test points 1000..1999 (not
    among the N evaluated): ``argmax_c  mu_c . x - |mu_c|^2 / 2``."""
    data = load_test_data("mnist", 2000)
    x, y = data.floats()[1000:].reshape(1000, -1).double(), data.labels()[1000:]
    mu = torch.stack([x[y == c].mean(0) for c in range(10)])
    return mu, -0.5 * (mu * mu).sum(1)


def _linear_module(W: torch.Tensor, b: torch.Tensor) -> nn.Module:
    """``Flatten -> Linear`` on normalised inputs ``z = (x - MEAN) / STD`` computing ``W x + b``."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.copy_((W * STD).float())
        net[1].bias.copy_((b + W.sum(1) * MEAN).float())
    return net


@pytest.fixture
def linear_submission(make_submission, monkeypatch):
    """make(sub_id, certify): an L2 MNIST submission of the centroid classifier, architecture
    ``toy_linear`` (added for the test; the evaluation runs in process)."""
    W, b = _centroids()
    monkeypatch.setitem(architectures.BUILTIN, "toy_linear", lambda num_classes=10: nn.Sequential(
        nn.Flatten(), nn.Linear(784, num_classes)))

    def make(sub_id: str, certify: list[str]):
        path = make_submission(sub_id, _linear_module(W, b), threat_model={"norm": "L2", "eps": EPS},
                               evaluation={"n_examples": N, "batch_size": BATCH, "seed": 0, "certify": certify})
        spec = yaml.safe_load(path.read_text())
        spec["model"]["architecture"] = "toy_linear"
        spec["model"]["preprocessing"] = {"mean": [MEAN], "std": [STD]}
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return make, W, b


def _exact(W: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Hand computation, float64: (correct, exact L2 radius ignoring clipping) of ``W x + b`` on the
    first N test points: ``min_j (f_c - f_j)(x) / ||w_c - w_j||_2`` for the predicted class c."""
    data = load_test_data("mnist", N)
    x, y = data.floats().reshape(N, -1).double().numpy(), data.labels().numpy()
    Wn, bn = W.numpy(), b.numpy()
    logits = x @ Wn.T + bn
    radius = np.zeros(N)
    pred = logits.argmax(1)
    for i in range(N):
        c = pred[i]
        radius[i] = min((logits[i, c] - logits[i, j]) / np.linalg.norm(Wn[c] - Wn[j]) for j in range(10) if j != c)
    return pred == y, radius


@pytest.fixture
def toy():
    certifiers.register(ExactLinear())  # the one registration line
    yield
    certifiers.unregister("toy-exact-linear")


def test_toy_certifier_registered_by_one_line_runs_through_the_pipeline(toy, linear_submission, tmp_path):
    make, W, b = linear_submission
    out = tmp_path / "rec.json"
    res = evaluate(make("toy-pipe", ["toy-exact-linear"]),
                   EvalOptions(device="cpu", progress=False, sandbox="none"), stages=["clean", "certify"], out=out,
                   echo=lambda s: None)
    rec, arrays = res.record, res.arrays
    assert set(rec.certified) == {"toy-exact-linear"} and rec.certify_skipped is None
    read_record(out)  # the strict reader accepts the record and its arrays (the toy is registered)

    # the record entry against a hand computation
    correct, exact = _exact(W, b)
    assert np.array_equal(arrays["clean_correct"], correct)
    eps_max = 2 * EPS  # the default: twice the threat model's eps
    want_radius = np.where(correct, np.minimum(exact, eps_max), 0.0)
    want_cert = correct & (exact > EPS)
    assert 0 < want_cert.sum() < correct.sum()  # some points certified, some not: the test can fail
    assert np.abs(np.abs(exact[correct] - EPS)).min() > 1e-3  # no point on the fence
    radius, cert = arrays["radius_toy-exact-linear"], arrays["certified_toy-exact-linear"]
    assert np.array_equal(cert, want_cert)
    assert radius == pytest.approx(want_radius, abs=1e-5)
    e = rec.certified["toy-exact-linear"]
    k = int(want_cert.sum())
    assert e.method == "toy-exact-linear" and not e.probabilistic and e.eps == EPS
    assert e.certified_accuracy == k / N
    assert tuple(e.certified_accuracy_ci95) == pytest.approx(clopper_pearson(k, N))
    assert e.acr == pytest.approx(want_radius.mean(), abs=1e-5)
    assert e.acr_percent == pytest.approx(100 * want_radius.mean() / eps_max, abs=1e-3)
    assert e.eps_max == eps_max and e.tolerance == 0.0  # the toy's closed form fixes its tolerance
    grid = np.linspace(0, eps_max, 21)
    assert [g for g, _ in e.curve] == pytest.approx(grid.tolist())
    assert [a for _, a in e.curve] == pytest.approx([float(np.mean(correct & (want_radius >= g - 1e-5)))
                                                      for g in grid])
    # details: the norm, the preparation's info, the counts summed over batches and blocks, the batch
    assert e.details == {"norm": "L2", "classes": 10, "examples": N, "batch_size": BATCH}
    assert e.bound_calls_per_example is None  # the toy counts no bound calls


def test_lipschitz_and_crown_through_the_pipeline_on_an_l2_linear_model(linear_submission, tmp_path):
    make, W, b = linear_submission
    res = evaluate(make("lip-pipe", ["lipschitz", "crown"]),
                   EvalOptions(device="cpu", progress=False, sandbox="none"), stages=["clean", "certify", "autoattack"],
                   out=tmp_path / "rec.json", echo=lambda s: None)
    rec, arrays = res.record, res.arrays
    assert set(rec.certified) == {"lipschitz", "crown"} and rec.certify_skipped is None
    correct, exact = _exact(W, b)
    eps_max = 2 * EPS
    cap = np.where(correct, np.minimum(exact, eps_max), 0.0)
    lip, crown = arrays["radius_lipschitz"].astype(np.float64), arrays["radius_crown"].astype(np.float64)
    # sound: never above the exact radius (float32 logits: 1e-6 of slack)
    assert np.all(lip <= cap + 1e-6) and np.all(crown <= cap + 1e-6)
    # and, on a linear model, tight: Lipschitz's pairwise last-layer margin is exact up to its
    # safety factor (1 + 1e-5 per layer); CROWN's margin bound is exact, found to the tolerance
    assert np.all(lip >= cap * (1 - 1e-4) - 1e-6)
    assert np.all(crown >= cap - rec.certified["crown"].tolerance - 1e-6)
    lrec = rec.certified["lipschitz"]
    assert lrec.tolerance == 0.0 and not lrec.probabilistic and lrec.details["norm"] == "L2"
    # the constants: features (x -> (x - MEAN) / STD) 1/STD; the whole map x -> W x + b, ||W||_2
    assert lrec.details["feature_lipschitz"] == pytest.approx(1 / STD, rel=1e-4)
    assert lrec.details["lipschitz_constant"] == pytest.approx(float(torch.linalg.matrix_norm(W, 2)), rel=1e-4)
    assert np.array_equal(arrays["certified_lipschitz"], correct & (exact > EPS))
    # certify-first reads soundness from the registry: Lipschitz certificates skip AutoAttack too
    cert = arrays["certified_lipschitz"] | arrays["certified_crown"]
    assert rec.autoattack.n_skipped_certified == int(cert.sum()) > 0
    assert rec.autoattack.n_attacked == int((correct & ~cert).sum())


def _ctx(path, tmp_path) -> EvalContext:
    sub = load_submission(path)
    data = load_test_data("mnist", sub.spec.evaluation.n_examples)
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    return EvalContext(sub, model, data, EvalOptions(device="cpu", progress=False), tmp_path)


def test_a_skip_decided_midway_drops_the_method_for_every_block(make_submission, tmp_path):
    path = make_submission("cert-midway", threat_model={"norm": "Linf", "eps": 0.01},
                           evaluation={"n_examples": 12, "batch_size": 4, "seed": 0,
                                       "certify": ["ibp", "crown-ibp", "lipschitz"]})
    ctx = _ctx(path, tmp_path)
    stage = CertifyStage()
    prep = stage.prepare(ctx)
    # lipschitz is L2 only: skipped once for the whole job, at prepare
    assert set(prep["methods"]) == {"ibp", "crown-ibp"}
    parts, extras = [], []
    for b in range(3):
        if b == 1:  # another worker decides, after block 0 was done, that ibp is over budget
            ctx.store("certify").share("skip-ibp", "projected 9999 s exceeds the budget")
        res = stage.map(ctx, make_block(12, 4, b, 0), prep)
        parts.append(res.arrays)
        extras.append(res.extras)
    assert "certified_ibp" in parts[0] and "certified_ibp" not in parts[2]
    out = stage.reduce(ctx, concat_blocks(parts), extras)
    assert set(out.summary["certified"]) == {"crown-ibp"}
    assert out.summary["certify_skipped"] == ("ibp: projected 9999 s exceeds the budget; "
                                              "lipschitz: lipschitz certifies L2 balls; the threat model is Linf")
    assert not any(k.endswith("_ibp") for k in out.arrays)
    # a later worker's prepare reads the shared decisions and prepares neither
    assert set(stage.prepare(ctx)["methods"]) == {"crown-ibp"}


def test_certify_first_mask_reads_soundness_from_the_registry(toy):
    block = make_block(4, 4, 0, 0)
    block.inputs["certify"] = {
        "certified_lipschitz": np.array([1, 0, 0, 0], bool),
        "certified_smoothing": np.array([0, 1, 0, 0], bool),  # probabilistic: never skips an attack
        "certified_toy-exact-linear": np.array([0, 0, 1, 0], bool),  # a registered sound plug-in does
        "certified_unknown": np.array([0, 0, 0, 1], bool),  # not a registered certifier
    }
    assert certified_mask(block, 4).tolist() == [True, False, True, False]
