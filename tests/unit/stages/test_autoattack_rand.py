"""AutoAttack's own advice, applied: on a toy model whose forward pass is random, the pipeline runs
AutoAttack's ``rand`` version (APGD-CE and APGD-DLR with EOT), records that version and why, and the
diagnostics mark the entry ``randomized-defense`` because it is still random after that (RobustBench
keeps randomized defenses apart). A deterministic model keeps the standard version and no mark; a
random model evaluated with another version is flagged ``autoattack-not-rand`` (error).

The toy model is a nearest-class-mean classifier on MNIST pixels (one 784 x 10 matrix: the cheapest
model for AutoAttack's 2 x 100 x 20 EOT passes, still about 20 s of APGD's own work on a CPU) with
Gaussian noise on its logits."""
from __future__ import annotations

import pytest
import torch
from helpers.spec import REPO
from torch import nn

import harness.runner.evaluate as ev
from harness.data.loaders import load_test_data
from harness.diagnostics import detect_randomized, randomized_evaluation_flag
from harness.stages import EvalOptions

N = 8


class NearestMean(nn.Module):
    """logits_c = x . mu_c - |mu_c|^2 / 2 (+ noise of std ``sigma``): the nearest class mean."""

    def __init__(self, sigma: float):
        super().__init__()
        data = load_test_data("mnist", 200)
        x, y = data.floats(slice(0, 200)).flatten(1), data.labels(slice(0, 200))
        mu = torch.stack([x[y == c].mean(0) for c in range(10)])
        self.w, self.b, self.sigma = nn.Parameter(mu), nn.Parameter(-0.5 * (mu * mu).sum(1)), sigma

    def forward(self, x):
        out = x.flatten(1) @ self.w.T + self.b
        return out + self.sigma * torch.randn_like(out) if self.sigma else out


def _evaluate(monkeypatch, tmp_path, sigma: float):
    real = ev.load_model

    def toy(*a, **k):
        lm = real(*a, **k)
        lm.module = NearestMean(sigma).eval()
        return lm

    monkeypatch.setattr(ev, "load_model", toy)
    sub = REPO / "submissions" / "mnist-pgd" / "submission.yaml"
    return ev.evaluate(sub, EvalOptions(device="cpu", n_examples=N, batch_size=N, progress=False, sandbox="none"),
                       stages=["clean", "autoattack", "diagnostics"], out=tmp_path / "rec.json",
                       echo=lambda s: None).record


def _flags(rec) -> dict:
    return {f["name"]: f for f in rec.diagnostics["flags"]}


@pytest.mark.slow  # APGD-CE with 20 EOT draws per step: 2,000 passes, about 20 s on a busy 2-core machine
def test_a_random_forward_pass_is_evaluated_with_the_rand_version_and_marked(monkeypatch, tmp_path):
    rec = _evaluate(monkeypatch, tmp_path, sigma=0.5)
    assert rec.clean_accuracy > 0.5  # the toy classifies most of the points right, so they are attacked
    assert rec.autoattack.version == "rand" and rec.autoattack.attacks == ["apgd-ce", "apgd-dlr"]
    assert any("switched from the standard to the rand version" in m for m in rec.autoattack.checks)
    assert rec.autoattack.n_attacked > 0
    flags = _flags(rec)
    assert flags["randomized-model"]["severity"] == "warning"
    mark = flags["randomized-defense"]
    assert mark["severity"] == "warning" and mark["details"]["autoattack_version"] == "rand"
    assert "still random after AutoAttack's 'rand' version" in mark["message"]
    assert "autoattack-not-rand" not in flags and "aa-randomized" not in flags


@pytest.mark.slow  # the standard version (FAB, Square) on the toy: 3-7 s on a busy machine
def test_a_deterministic_model_keeps_the_standard_version_and_no_mark(monkeypatch, tmp_path):
    rec = _evaluate(monkeypatch, tmp_path, sigma=0.0)
    assert rec.autoattack.version == "standard" and rec.autoattack.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert not {"randomized-model", "randomized-defense", "autoattack-not-rand"} & set(_flags(rec))


def test_the_rule_against_the_probe():
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    still = detect_randomized(NearestMean(0.5), x)
    fixed = detect_randomized(NearestMean(0.0), x)
    assert still["randomized"] and not fixed["randomized"]
    assert randomized_evaluation_flag(fixed, "rand") is None
    assert randomized_evaluation_flag(still, None) is None  # no AutoAttack: the randomized-model flag only
    mark = randomized_evaluation_flag(still, "rand")
    assert (mark.name, mark.severity, mark.value) == ("randomized-defense", "warning", still["max_diff"])
    wrong = randomized_evaluation_flag(still, "standard")
    assert (wrong.name, wrong.severity) == ("autoattack-not-rand", "error")
    assert "version='rand'" in wrong.message and "'standard'" in wrong.message
