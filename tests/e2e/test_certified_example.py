"""The IBP-trained example submission is certifiably robust, through the real pipeline, and its
radii keep their promise on the real model (certified at r, not at r + tol)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.bounds import BoundedModel
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions


@pytest.mark.slow
def test_ibp_example_certified_accuracy_well_above_zero(repo, tmp_path):
    sub = repo / "submissions" / "mnist-ibp" / "submission.yaml"
    res = evaluate(sub, EvalOptions(device="cpu", n_examples=100, progress=False),
                   stages=["clean", "certify"], out=tmp_path / "rec.json", echo=lambda s: None)
    rec, arr = res.record, res.arrays
    ibp = rec.certified["ibp"]
    assert ibp.certified_accuracy >= 0.7, ibp.certified_accuracy
    assert ibp.certified_accuracy <= rec.clean_accuracy
    assert ibp.acr > 0.2 and abs(ibp.acr_percent - 100 * ibp.acr / ibp.eps_max) < 1e-6
    # ACR is the mean radius with misclassified points at 0 (ACERT / MACER convention)
    assert np.isclose(ibp.acr, arr["radius_ibp"].mean())
    assert (arr["radius_ibp"][~arr["clean_correct"]] == 0).all()
    # certified at eps <=> radius >= eps (the radius search starts from the certification at eps)
    assert ((arr["radius_ibp"] >= rec.threat_model.eps) == arr["certified_ibp"]).all()

    # radius promise on the real model, for a few certified points
    from harness.data.loaders import load_test_data
    from harness.models.load import load_model
    from harness.submission.load import load_submission

    model = load_model(load_submission(sub), input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    data = load_test_data("mnist", 100)
    bm = BoundedModel(model.module, (1, 28, 28))
    idx = np.nonzero((arr["radius_ibp"] > 0) & (arr["radius_ibp"] < ibp.eps_max))[0][:20]
    assert idx.size > 0
    x, y = data.floats(idx), data.labels(idx)
    r = torch.tensor(arr["radius_ibp"][idx], dtype=torch.float32)
    assert bm.certify(x, y, r, "Linf", "ibp").all()
    assert not bm.certify(x, y, r + ibp.tolerance, "Linf", "ibp").any()
