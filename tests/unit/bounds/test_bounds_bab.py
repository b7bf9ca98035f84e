"""verify() (harness/bounds/bab.py) against an exact MILP (tests/helpers/milp_ref.py, scipy.optimize.milp
big-M): never `verified` where the MILP finds a counterexample, every `falsified` checks in
float64, and the verdicts agree wherever both finish. The radii are put near each net's attack
radius so that the cheap steps of the cascade often fail and branch and bound has to decide."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.milp_ref import milp_robust_margin  # noqa: E402

from harness.bounds.bab import Budget, check_counterexample, robustness_spec, verify
from harness.core.errors import HarnessError


def _attack_radius(net, x, t):
    """A rough upper estimate of the robust radius by bisection with random sampling (not
    verify's own attack, to stay independent of it): enough to place eps near the boundary."""
    lo_e, hi_e = 0.0, 0.5
    for _ in range(10):
        e = (lo_e + hi_e) / 2
        xs = (x - e + 2 * e * torch.rand(512, *x.shape[1:]))
        with torch.no_grad():
            bad = bool((net(xs).argmax(1) != t).any())
        lo_e, hi_e = (lo_e, e) if bad else (e, hi_e)
    return hi_e


def _instances(n_nets, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for i in range(n_nets):
        act = nn.ReLU() if i % 2 == 0 else nn.LeakyReLU(0.1)
        net = nn.Sequential(nn.Linear(4, 12), act, nn.Linear(12, 12), act, nn.Linear(12, 3)).eval()
        x = torch.rand(1, 4, generator=g)
        t = int(net(x).argmax())
        r = _attack_radius(net, x, t)
        for f in (0.6, 0.9, 1.1):
            yield net, x, t, r * f


def _check(instances, full_milp=True):
    counts = {"agree": 0, "unknown": 0, "bab": 0, "skipped": 0, "falsified": 0}
    for net, x, t, eps in instances:
        lo, hi = x - eps, x + eps
        spec = robustness_spec(3, t)
        v = verify(net, lo, hi, spec, Budget(timeout_s=3, seed=0))
        if not full_milp and v.status == "falsified":  # a float64-checked counterexample decides it
            assert check_counterexample(net, v.counterexample, lo, hi, spec)
            counts["falsified"] += 1
            continue
        m = milp_robust_margin(net, lo.double().numpy(), hi.double().numpy(), t, 3)
        counts["bab"] += v.decided_by == "bab"
        if v.status == "verified":
            assert m is None or m >= -1e-6, f"verified, but the MILP finds margin {m}"
            assert v.lower_bound is not None and v.lower_bound > 0
        if v.status == "falsified":
            assert check_counterexample(net, v.counterexample, lo, hi, spec)
            assert m is None or m <= 1e-5, f"falsified, but the MILP proves margin {m}"
        if m is None:
            counts["skipped"] += 1
        elif v.status == "unknown":
            counts["unknown"] += 1
        elif abs(m) > 1e-6:  # both decided: the verdicts agree
            assert (v.status == "verified") == (m > 0), (v, m)
            counts["agree"] += 1
    return counts


def test_verify_agrees_with_milp_small():
    # 12 instances (more in the slow test below); the MILP runs where verify does not return a checked counterexample
    c = _check(_instances(4, seed=0), full_milp=False)
    assert c["agree"] >= 6 and c["bab"] >= 1 and c["falsified"] >= 1, c


@pytest.mark.slow
def test_verify_agrees_with_milp_many():
    c = _check(_instances(70, seed=1))
    print(c)
    assert c["agree"] >= 200 and c["unknown"] <= 5, c


def test_disjunction_and_counterexample_check():
    """Hand-computed: y = (x, -x) on x in [0, 1]. Unsafe {y0 + 0.5 <= 0} or {-y1 + 0.5 <= 0}, i.e.
    x <= -0.5 or x <= -0.5: empty, verified. With {y1 + 0.9 <= 0} (x >= 0.9) instead of the second:
    falsified, with x >= 0.9."""
    net = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.zero_()
    lo, hi = torch.zeros(1, 1), torch.ones(1, 1)
    safe = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])), (torch.tensor([[0.0, -1.0]]), torch.tensor([0.5]))]
    v = verify(net, lo, hi, safe, Budget(timeout_s=5))
    assert v.status == "verified"
    unsafe = safe[:1] + [(torch.tensor([[0.0, 1.0]]), torch.tensor([0.9]))]
    v = verify(net, lo, hi, unsafe, Budget(timeout_s=5))
    assert v.status == "falsified" and float(v.counterexample) >= 0.9 - 1e-6
    assert check_counterexample(net, v.counterexample, lo, hi, unsafe)
    assert not check_counterexample(net, torch.tensor([[0.5]]), lo, hi, unsafe)   # not violating
    assert not check_counterexample(net, torch.tensor([[1.5]]), lo, hi, unsafe)   # outside the box
    with pytest.raises(HarnessError):
        verify(net, hi, lo + 0.5, unsafe, Budget(timeout_s=1))  # lo > hi
    with pytest.raises(HarnessError):
        robustness_spec(3, 5)
