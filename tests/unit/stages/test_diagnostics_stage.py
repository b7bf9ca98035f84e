"""The diagnostics stage through the pipeline, and the precomputed MNIST separation table."""
from __future__ import annotations

import numpy as np
import pytest

from harness.diagnostics.separation import mnist_table
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions

N = 30


def _eval(repo, out, stages):
    return evaluate(repo / "submissions" / "mnist-standard" / "submission.yaml",
                    EvalOptions(device="cpu", n_examples=N, batch_size=N, progress=False),
                    stages=stages, out=out, echo=lambda s: None)


def test_stage_on_the_standard_model(repo, tmp_path):
    run = _eval(repo, tmp_path / "rec.json", ["clean", "autoattack", "diagnostics"])
    diag = run.record.diagnostics
    assert diag is not None and "diagnostics" in run.record.stages
    lad = diag["ladder"]
    assert lad["n"] == N and lad["clean"] == run.record.clean_accuracy
    assert lad["autoattack"] == run.record.robust_accuracy
    assert lad["pgd20"] <= lad["clean"] and lad["pgd20"] <= 0.05  # an undefended model
    assert diag["flags"] == []
    assert 0 < diag["gradient_alignment"]["mean"] <= 1
    assert diag["curvature"]["n_finite"] == N and diag["lipschitz"]["test"] > 0
    # separation of the evaluated points, from the exact table
    table = mnist_table()
    want = table["distance_255"][:N] / 255
    sep = diag["separation"]
    assert sep["min"] == pytest.approx(want.min()) and sep["half_min"] == pytest.approx(want.min() / 2)
    assert sep["full_test_set"]["min"] == pytest.approx(207 / 255)  # Yang et al. report 0.812
    arr = run.arrays
    np.testing.assert_allclose(arr["diagnostics_separation"], want, rtol=1e-6)
    for k in ("fgsm", "pgd"):
        rob = arr[f"diagnostics_{k}_robust"]
        assert rob.dtype == bool and rob.shape == (N,) and not (rob & ~arr["clean_correct"]).any()
    assert arr["diagnostics_curvature"].shape == (N,)


def test_stage_without_autoattack(repo, tmp_path):
    run = _eval(repo, tmp_path / "rec.json", ["clean", "diagnostics"])
    diag = run.record.diagnostics
    assert diag["ladder"]["autoattack"] is None
    assert not any(f["name"] == "weak-attack-gap" for f in diag["flags"])


def test_mnist_table_is_aligned_with_the_bundled_test_set(repo):
    table = mnist_table()
    with np.load(repo / "harness" / "data" / "mnist_test.npz") as d:
        y = d["y"]
    assert table["distance_255"].shape == (10000,) and table["nearest_train"].shape == (10000,)
    np.testing.assert_array_equal(table["labels"], y)
    assert table["distance_255"].min() == 207 and np.median(table["distance_255"]) == 253
    assert str(table["train_sha256"]) == "11bf48d67d8e90b9d940549ce9565b4921ad2ec150e4491e0c670aeb165169a9"
    assert str(table["test_sha256"]) == "3ba302235efdc3e7e4e84db9ce6a6d6cbc9dd1162d4e79dd0b6a606afc745423"
    assert table["nearest_train"].min() >= 0 and table["nearest_train"].max() < 60000
