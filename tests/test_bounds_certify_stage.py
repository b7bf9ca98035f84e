"""The certify stage: record fields, arrays, consistency with direct bound calls, skips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.bounds import BoundedModel
from harness.data import load_test_data
from harness.models import load_model
from harness.pipeline import evaluate
from harness.stages import EvalContext, EvalOptions
from harness.stages.certify import CertifyStage
from harness.stats import clopper_pearson
from harness.submission import load_submission

EVAL = {"n_examples": 6, "batch_size": 4, "seed": 0}


def test_certify_stage_record_and_arrays(make_submission, tmp_path):
    path = make_submission("cert-small", threat_model={"norm": "Linf", "eps": 0.002},
                           evaluation={**EVAL, "certify": ["ibp", "crown-ibp", "crown"],
                                       "radius_tol": 0.0005})
    out = tmp_path / "rec.json"
    res = evaluate(path, EvalOptions(device="cpu", progress=False), stages=["clean", "certify"],
                   out=out, echo=lambda s: None)
    rec, arrays = res.record, res.arrays
    assert set(rec.certified) == {"ibp", "crown-ibp", "crown"}
    assert rec.certify_skipped is None
    correct = arrays["clean_correct"]
    # an independent recomputation with the library on the same data and model
    sub = load_submission(path)
    data = load_test_data("mnist", 6)
    model = load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    bm = BoundedModel(model.module, (1, 28, 28))
    x, y = data.floats(), data.labels()
    for m, c in rec.certified.items():
        cert, rad = arrays[f"certified_{m}"], arrays[f"radius_{m}"]
        assert cert.shape == rad.shape == (6,)
        assert not np.any(cert & ~correct)
        assert np.array_equal(cert, bm.certify(x, y, 0.002, "Linf", m).numpy())
        assert np.all(rad[cert] >= 0.002 - 1e-9) and np.all(rad[~correct] == 0)
        k = int(cert.sum())
        assert c.certified_accuracy == k / 6
        assert tuple(c.certified_accuracy_ci95) == pytest.approx(clopper_pearson(k, 6))
        assert c.acr == pytest.approx(float(rad.astype(np.float64).mean()))
        assert c.acr_percent == pytest.approx(100 * c.acr / c.eps_max)
        assert c.eps_max == pytest.approx(0.004) and c.tolerance == pytest.approx(0.0005)
        assert c.curve[0] == (0.0, pytest.approx(correct.mean()))
        assert c.bound_calls_per_example >= 1 and not c.probabilistic
        # the radius guarantees hold for the stage's radii: certified at r, not at r + tol
        r = torch.tensor(rad)
        assert bool(bm.certify(x[r > 0], y[r > 0], r[r > 0], "Linf", m).all())
        below = torch.tensor(correct) & (r < 0.004)
        probe = torch.clamp(r[below] + 0.0005, max=0.004)
        assert not bool(bm.certify(x[below], y[below], probe, "Linf", m).any())
    assert rec.certified["crown"].certified_accuracy >= rec.certified["ibp"].certified_accuracy


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
