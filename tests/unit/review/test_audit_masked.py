"""A gradient-masked model whose record claims AutoAttack robustness it does not have is caught.

The model is ``submissions/mnist-standard``'s CNN (0% robust at Linf 0.3) behind a straight
``Round(x * 255) / 255``, exported as ONNX: its input gradient is exactly zero everywhere, so
APGD cannot move and a re-attack with APGD alone (the audit as it was) breaks almost nothing. The
forger runs the honest pipeline for the clean and FLOPs stages (so every hash, FLOP and clean flag
is genuine) and adds an AutoAttack part by hand that calls every correctly classified point robust,
with every interval recomputed. The audit's re-attack now includes the black-box Square attack,
which breaks the points; and its gradient-masking probe contradicts a forged diagnostics claim.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.spec import REPO
from safetensors.torch import load_file

from harness.core.files import sha256_file
from harness.core.stats import clopper_pearson
from harness.models.architectures import mnist_small_cnn
from harness.review.audit import audit_record
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions

pytestmark = pytest.mark.slow  # an ONNX export, an evaluation and three audits: about 20 s on 2 cores

N = 40
EID = "mnist-masked"


class Masked(torch.nn.Module):
    """Round(x * 255) / 255, then the standard CNN: the rounding's gradient is zero."""

    def __init__(self):
        super().__init__()
        self.net = mnist_small_cnn()
        self.net.load_state_dict(load_file(str(REPO / "submissions" / "mnist-standard" / "model.safetensors")))

    def forward(self, x):
        return self.net(torch.round(x * 255) / 255)


@pytest.fixture(scope="module")
def honest_part(tmp_path_factory) -> Path:
    """The masked submission, and the record of its clean and FLOPs stages (honest, N points)."""
    root = tmp_path_factory.mktemp("masked")
    folder = root / "submissions" / EID
    folder.mkdir(parents=True)
    torch.onnx.export(Masked().eval(), torch.rand(1, 1, 28, 28), str(folder / "model.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    spec = {"id": EID, "name": "standard CNN behind Round(x*255)/255", "authors": ["forger"], "license": "MIT",
            "dataset": "mnist", "threat_model": {"norm": "Linf", "eps": 0.3},
            "model": {"format": "onnx", "checkpoint": {"path": "model.onnx",
                                                       "sha256": sha256_file(folder / "model.onnx")}},
            "training": {"method": "standard", "epochs": 1},
            "evaluation": {"n_examples": N, "batch_size": N, "seed": 0}}
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    results = root / "leaderboard" / "results"
    evaluate(folder / "submission.yaml", EvalOptions(device="cpu", n_examples=N, progress=False),
             stages=["clean", "flops"], out=results / f"{EID}.json", echo=lambda s: None)
    return results / f"{EID}.json"


def forge(honest: Path, tmp_path: Path, diagnostics: bool = False) -> Path:
    """A copy of the honest record with an AutoAttack part claiming every correct point robust."""
    results = tmp_path / "leaderboard" / "results"
    results.mkdir(parents=True)
    rec = json.loads(honest.read_text())
    with np.load(honest.with_name(f"{EID}.examples.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["autoattack_robust"] = arrays["clean_correct"].copy()
    k = int(arrays["clean_correct"].sum())
    acc = k / N
    rec["stages"] = [*rec["stages"], "autoattack"]
    rec["robust_accuracy"], rec["robust_accuracy_ci95"] = acc, list(clopper_pearson(k, N))
    rec["autoattack"] = {"version": "standard", "seed": 0, "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
                         "accuracy_after": {a: acc for a in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")},
                         "checks": [], "n_attacked": k, "n_skipped_misclassified": N - k, "n_skipped_certified": 0,
                         "batch_size": N}
    if diagnostics:  # ... and the diagnostics stage's verdict that nothing is masked
        rec["stages"].append("diagnostics")
        rec["diagnostics"] = {"flags": [], "zero_gradient_fraction": 0.0,
                              "randomized": {"randomized": False, "max_diff": 0.0, "prediction_changes": 0}}
    (results / f"{EID}.json").write_text(json.dumps(rec))
    np.savez_compressed(results / f"{EID}.examples.npz", **arrays)
    return results / f"{EID}.json"


def submission_of(honest: Path) -> Path:
    return honest.parents[2] / "submissions" / EID / "submission.yaml"


def test_square_breaks_what_the_record_claims_robust(honest_part, tmp_path):
    """Default sample sizes (the whole pool of ~39 claimed-robust points): Square breaks most of them."""
    record = forge(honest_part, tmp_path)
    res = audit_record(record, submission=submission_of(honest_part), seed=1, sandbox="none", square_queries=300)
    pool = len(res.attack_checked)
    assert pool >= 35
    by_square = [i for i, a in res.broken.items() if a == "square"]
    assert len(by_square) >= pool // 2 and len(res.broken) - len(by_square) <= 2  # APGD is blind here
    assert res.zero_gradient == pool  # the probe: every re-attacked point has a zero input gradient
    assert res.catch["re-attack"] < 0.95  # 40 points cannot reach the 1% guarantee; the forgery is 100%
    problems = [p for p in res.problems if p.startswith("autoattack_robust:")]
    assert len(problems) == 1 and "square" in problems[0].split("(by ", 1)[1].split(";", 1)[0]
    assert len(res.problems) == 1  # clean, FLOPs and provenance are genuine
    assert any(n.startswith(f"{pool} of {pool} re-attacked points have an exactly zero input gradient")
               for n in res.notes)


def test_apgd_alone_is_fooled_by_the_mask(honest_part, tmp_path):
    """Without Square (the re-attack as it was: APGD-CE and APGD-T) the forged record passes."""
    record = forge(honest_part, tmp_path)
    res = audit_record(record, submission=submission_of(honest_part), seed=1, sandbox="none", square_queries=0)
    assert len(res.broken) < res.broken_threshold and res.ok


def test_the_probe_contradicts_a_forged_diagnostics_claim(honest_part, tmp_path):
    """The record also says its diagnostics found no zero gradients: the probe alone fails it."""
    record = forge(honest_part, tmp_path, diagnostics=True)
    res = audit_record(record, submission=submission_of(honest_part), seed=1, sandbox="none", square_queries=0)
    pool = len(res.attack_checked)
    assert res.problems == [
        f"diagnostics.zero_gradient_fraction: the record says 0.0% of its points have a zero input gradient, but "
        f"{pool} of {pool} re-attacked points have an exactly zero input gradient (gradient masking: APGD cannot "
        "move there; the black-box Square attack can)"]
