"""Flag rules, and AutoAttack's own check messages (produced by pyautoattack itself) turned into
named flags."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn as nn

from harness.diagnostics import (
    Flag,
    autoattack_version_for,
    capture_autoattack_messages,
    catastrophic_overfitting_flag,
    classify_autoattack_messages,
    detect_randomized,
    gap_threshold,
    ladder_flags,
    weak_attack_gap_flags,
    zero_gradient_flag,
    zero_gradient_fraction,
)


def test_gap_threshold_is_tau_plus_two_binomial_standard_errors():
    assert gap_threshold(0.05, 100) == pytest.approx(0.05 + 2 * math.sqrt(0.05 * 0.95 / 100))
    assert gap_threshold(0.05, 10_000) == pytest.approx(0.05436, abs=1e-5)
    assert gap_threshold(0.05, 100) > gap_threshold(0.05, 1000) > 0.05


def test_weak_attack_gap():
    # honest: PGD-20 4 points above AutoAttack at n=1000 -> no flag
    assert weak_attack_gap_flags(autoattack=0.86, pgd=0.90, fgsm=0.95, n=1000) == []
    # masked: PGD 30 points above -> error; FGSM 40 points above -> warning
    flags = weak_attack_gap_flags(autoattack=0.60, pgd=0.90, fgsm=1.0, n=1000)
    assert [(f.name, f.severity, f.details["attack"]) for f in flags] == [
        ("weak-attack-gap", "error", "pgd"), ("weak-attack-gap", "warning", "fgsm")]
    assert flags[0].value == pytest.approx(0.30) and flags[0].threshold == pytest.approx(gap_threshold(0.05, 1000))
    # the same 8-point gap is noise at n=50 but not at n=5000
    assert weak_attack_gap_flags(autoattack=0.50, pgd=0.58, n=50) == []
    assert len(weak_attack_gap_flags(autoattack=0.50, pgd=0.58, n=5000)) == 1
    # dict form, for records
    d = flags[0].to_dict()
    assert set(d) >= {"name", "severity", "message", "value", "threshold"} and flags[0].name == d["name"]
    with pytest.raises(ValueError):
        Flag("x", "fatal", "m")


def test_catastrophic_overfitting_rule():
    co = catastrophic_overfitting_flag(clean=0.95, fgsm=0.80, pgd=0.01)
    assert co is not None and co.name == "catastrophic-overfitting" and co.severity == "error"
    assert co.value == 0.01 and co.threshold == 0.05 and co.details["pgd_broken"]
    # FGSM and PGD both fail, only AutoAttack breaks it: flagged, and the message says masking
    masked = catastrophic_overfitting_flag(clean=0.95, fgsm=0.95, pgd=0.95, autoattack=0.0)
    assert masked is not None and not masked.details["pgd_broken"] and "masking" in masked.message
    # AutoAttack counts as multi-step: PGD 0.10 but AutoAttack 0.02
    assert catastrophic_overfitting_flag(clean=0.95, fgsm=0.8, pgd=0.10, autoattack=0.02) is not None
    # a PGD-trained model
    assert catastrophic_overfitting_flag(clean=0.98, fgsm=0.95, pgd=0.91, autoattack=0.89) is None
    # a standard model: every attack breaks it (FGSM low too)
    assert catastrophic_overfitting_flag(clean=0.99, fgsm=0.05, pgd=0.0, autoattack=0.0) is None
    # FGSM must be >= 0.3 and >= half of clean
    assert catastrophic_overfitting_flag(clean=0.99, fgsm=0.45, pgd=0.0) is None
    assert catastrophic_overfitting_flag(clean=0.50, fgsm=0.30, pgd=0.0) is not None
    assert catastrophic_overfitting_flag(clean=0.50, fgsm=0.29, pgd=0.0) is None
    lad = {"n": 200, "clean": 0.95, "fgsm": 0.8, "pgd": 0.0}
    assert [f.name for f in ladder_flags(lad, autoattack=0.0)] == [
        "weak-attack-gap", "catastrophic-overfitting"]  # FGSM vs AutoAttack gap, and CO


class Softmaxed(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class Dynamic(nn.Module):
    """Computes a gradient inside the forward pass (as some 'dynamic' defenses do)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.net(z).sum(), z)
        return self.net(x + 0 * g)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()


def test_autoattack_checks_become_named_flags():
    from pyautoattack import checks

    net = _net()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    logger = logging.getLogger("auto-attack")
    noisy = nn.Sequential(nn.Dropout(0.5), net).train()
    saved_counts = dict(checks.funcs)  # check_dynamic's call counters are global, never reset
    with capture_autoattack_messages() as msgs:
        checks.check_randomized(noisy, x, y, logger=logger)
        checks.check_range_output(Softmaxed(net), x, logger=logger)
        checks.check_zero_gradients(torch.zeros(8, 16), logger=logger)
        checks.check_zero_gradients(torch.zeros(8, 16), logger=None)  # through warnings.warn
        checks.check_square_sr({"clean": 0.9, "apgd-ce": 0.5, "square": 0.1}, logger=logger)
        try:
            checks.check_dynamic(Dynamic(net), x, False, logger=logger)
        finally:
            checks.funcs.update(saved_counts)  # do not leak "dynamic" into later AutoAttack runs
        checks.check_n_classes(2, ["apgd-dlr"], 9, 9, logger=logger)
        logger.warning("something else entirely")
        logger.info("not a warning")
    flags = classify_autoattack_messages(msgs)
    names = [f.name for f in flags]
    assert names == ["aa-randomized", "aa-softmax-output", "aa-zero-gradients", "aa-square-beats-whitebox",
                     "aa-dynamic", "aa-n-classes", "aa-other"]
    by = {f.name: f for f in flags}
    assert by["aa-zero-gradients"].value == 8 and len(by["aa-zero-gradients"].details["messages"]) == 1
    assert by["aa-square-beats-whitebox"].value == pytest.approx(0.40)
    assert by["aa-square-beats-whitebox"].severity == "error"  # a 40-point drop
    assert by["aa-randomized"].severity == "error" and by["aa-other"].severity == "warning"
    assert classify_autoattack_messages([]) == []
    # a 3-point drop by Square (as on our PGD-trained MNIST model) is a warning
    small = classify_autoattack_messages(["Square Attack has decreased the robust accuracy of 3.00%. This "
                                          "might indicate that the robustness evaluation ..."])
    assert [(f.name, f.severity, f.value) for f in small] == [("aa-square-beats-whitebox", "warning", 0.03)]
    # after the block the logger is as before
    assert logger.propagate and not [h for h in logger.handlers if type(h).__name__ == "AutoAttackCapture"]


def test_randomized_detector_and_version_choice():
    net = _net()
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert detect_randomized(net, x)["randomized"] is False
    assert autoattack_version_for(net, x) == ("standard", [])
    noisy = nn.Sequential(nn.Dropout(0.3), net).train()
    res = detect_randomized(noisy, x)
    assert res["randomized"] and res["max_diff"] > 1e-4
    version, flags = autoattack_version_for(noisy, x)
    assert version == "rand" and [f.name for f in flags] == ["randomized-model"]
    # tiny noise below AutoAttack's tolerance that never flips a prediction is not "randomized"

    class Jitter(nn.Module):
        def forward(self, x):
            out = net(x)
            return out + 1e-9 * torch.randn_like(out)

    assert detect_randomized(Jitter(), x)["randomized"] is False


def test_zero_gradient_fraction_and_flag():
    net = _net()
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(10, dtype=torch.long)

    class Quantised(nn.Module):
        def forward(self, x):
            return net(torch.round(x * 3) / 3)

    assert zero_gradient_fraction(net, x, y) == 0.0 and zero_gradient_flag(0.0) is None
    frac = zero_gradient_fraction(Quantised(), x, y, batch_size=3)
    assert frac == 1.0
    f = zero_gradient_flag(frac)
    assert f.name == "zero-gradients" and f.severity == "error"
    assert zero_gradient_flag(0.1).severity == "warning"
