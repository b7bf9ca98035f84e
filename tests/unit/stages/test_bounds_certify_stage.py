"""The certify stage: record fields, arrays, consistency with direct bound calls, skips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.bounds import BoundedModel
from harness.core.stats import clopper_pearson
from harness.data.loaders import load_test_data
from harness.models.architectures import mnist_mlp
from harness.models.load import LoadedModel, NormalizedModel, load_model
from harness.record.schema import CertifiedRecord
from harness.runner.evaluate import evaluate
from harness.stages import EvalContext, EvalOptions
from harness.stages.certify import CertifyStage
from harness.submission.load import load_submission

EVAL = {"n_examples": 4, "batch_size": 4, "seed": 0}


def _check_method(c, cert, rad, correct, bm, x, y, eps, eps_max, tol, m, n):
    assert cert.shape == rad.shape == (n,)
    assert not np.any(cert & ~correct)
    assert np.array_equal(cert, bm.certify(x, y, eps, "Linf", m).numpy())
    assert np.all(rad[cert] >= eps - 1e-9) and np.all(rad[~correct] == 0)
    k = int(cert.sum())
    assert c.certified_accuracy == k / n
    assert tuple(c.certified_accuracy_ci95) == pytest.approx(clopper_pearson(k, n))
    assert c.acr == pytest.approx(float(rad.astype(np.float64).mean()))
    assert c.acr_percent == pytest.approx(100 * c.acr / c.eps_max)
    assert c.eps_max == pytest.approx(eps_max) and c.tolerance == pytest.approx(tol)
    assert c.curve[0] == (0.0, pytest.approx(correct.mean()))
    assert c.bound_calls_per_example >= 1 and not c.probabilistic
    # the radius guarantees hold for the stage's radii: certified at r, not at r + tol
    r = torch.tensor(rad)
    assert bool(bm.certify(x[r > 0], y[r > 0], r[r > 0], "Linf", m).all())
    below = torch.tensor(correct) & (r < eps_max)
    probe = torch.clamp(r[below] + tol, max=eps_max)
    assert not bool(bm.certify(x[below], y[below], probe, "Linf", m).any())


def test_certify_stage_in_the_pipeline(make_submission, tmp_path):
    path = make_submission("cert-small", threat_model={"norm": "Linf", "eps": 0.001},
                           evaluation={**EVAL, "certify": ["ibp", "crown-ibp"],
                                       "radius_tol": 0.0005})
    res = evaluate(path, EvalOptions(device="cpu", progress=False), stages=["clean", "certify"],
                   out=tmp_path / "rec.json", echo=lambda s: None)
    rec, arrays = res.record, res.arrays
    assert set(rec.certified) == {"ibp", "crown-ibp"} and rec.certify_skipped is None
    sub = load_submission(path)
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    bm = BoundedModel(model.module, (1, 28, 28))
    data = load_test_data("mnist", 4)
    for m, c in rec.certified.items():
        _check_method(c, arrays[f"certified_{m}"], arrays[f"radius_{m}"], arrays["clean_correct"],
                      bm, data.floats(), data.labels(), 0.001, 0.002, 0.0005, m, 4)


def test_certify_stage_all_exact_methods_on_an_mlp(make_submission, tmp_path):
    path = make_submission("cert-mlp", threat_model={"norm": "Linf", "eps": 0.01},
                           evaluation={**EVAL, "n_examples": 6, "certify": ["ibp", "crown-ibp", "crown"]})
    ctx = _ctx(path, tmp_path)
    torch.manual_seed(0)
    module = NormalizedModel(mnist_mlp(), [0.1307], [0.3081], 1).eval()
    ctx.model = LoadedModel(module, torch.device("cpu"), (1, 28, 28), 10, "0" * 64, "state_dict")
    res = CertifyStage().run(ctx)
    assert res.summary["certify_skipped"] is None
    bm = BoundedModel(module, (1, 28, 28))
    x, y = ctx.data.floats(), ctx.data.labels()
    correct = (module(x).argmax(1) == y).numpy()
    recs = {m: CertifiedRecord.model_validate(r) for m, r in res.summary["certified"].items()}
    assert set(recs) == {"ibp", "crown-ibp", "crown"}
    for m, c in recs.items():
        _check_method(c, res.arrays[f"certified_{m}"], res.arrays[f"radius_{m}"], correct, bm,
                      x, y, 0.01, 0.02, 0.0005, m, 6)


def _ctx(path, tmp_path) -> EvalContext:
    sub = load_submission(path)
    data = load_test_data("mnist", sub.spec.evaluation.n_examples)
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    return EvalContext(sub, model, data, EvalOptions(device="cpu", progress=False), tmp_path)


def test_budget_and_size_skips_are_recorded(make_submission, tmp_path):
    path = make_submission("cert-skip", threat_model={"norm": "Linf", "eps": 0.01},
                           evaluation={**EVAL, "n_examples": 20, "certify": ["ibp"]})
    res = CertifyStage(budget_s=0.0).run(_ctx(path, tmp_path))
    assert res.summary["certified"] is None
    assert "ibp: projected" in res.summary["certify_skipped"] and "budget" in res.summary["certify_skipped"]
    assert res.arrays == {}


def test_smoothing_runs_for_l2_and_is_marked_probabilistic(make_submission, tmp_path):
    path = make_submission("cert-smooth", threat_model={"norm": "L2", "eps": 0.1},
                           evaluation={**EVAL, "n_examples": 3, "batch_size": 200, "certify": []},
                           smoothing={"sigma": 0.25, "n0": 20, "n": 200, "alpha": 0.001})
    res = CertifyStage().run(_ctx(path, tmp_path))
    rec = res.summary["certified"]["smoothing"]
    assert rec["probabilistic"] is True and rec["method"] == "smoothing"
    rad, cert = res.arrays["radius_smoothing"], res.arrays["certified_smoothing"]
    assert rad.shape == cert.shape == (3,)
    assert np.all(cert == ((res.arrays["pred_smoothing"] == load_test_data("mnist", 3).y.numpy())
                           & (rad >= 0.1)))
    # n = 200 draws cannot certify beyond sigma * Phi^-1(alpha^(1/n))
    assert np.all(rad <= rec["eps_max"] + 1e-6)
