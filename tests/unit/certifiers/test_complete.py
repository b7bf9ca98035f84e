"""The ``complete`` certifier: verdicts against an exact MILP reference, sound radii, per-example arrays,
resume after a kill (only the undecided examples are redone), the record's verdict checks, the
falsified-vs-certified sandwich check, robust <= clean - |AA U falsified|, and the budget cap."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers.milp_ref import milp_robust_margin

from harness import certifiers
from harness.certifiers import complete as complete_mod
from harness.certifiers.results import falsified_bound
from harness.core.errors import HarnessError, SandwichViolation
from harness.core.settings import certify_budget, certify_budget_cap
from harness.record.checks import verdict_problems
from harness.runner.evaluate import check_sandwich
from harness.stages.base import EvalContext, StageResult

EPS = 0.12
K = 3


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, K)).eval()


def _data(net, n: int = 14, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 4), generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[0] = (y[0] + 1) % K  # a misclassified example: falsified by its own clean input
    return x, y


def _exact(net, x, y, eps: float) -> list:
    """MILP margin of every example on its clipped Linf ball (> 0: robust)."""
    out = []
    for i in range(x.shape[0]):
        lo = (x[i] - eps).clamp(0, 1).double().numpy()
        hi = (x[i] + eps).clamp(0, 1).double().numpy()
        out.append(milp_robust_margin(net, lo, hi, int(y[i]), K))
    return out


def _run(net, x, y, *, progress=None, eps_max=0.0, budget=5.0):
    c = certifiers.get("complete")
    p = c.prepare(net, (4,), "cpu", norm="Linf", options={"certify_budget_s": budget, "progress_dir": progress,
                                                          "num_classes": K})
    res = c.run(p, x, y, index=np.arange(100, 100 + x.shape[0]), eps=EPS, norm="Linf", eps_max=eps_max,
                tol=EPS / 8, seed=0)
    return c, p, res


def test_verdicts_agree_with_the_exact_milp_and_falsified_ones_carry_counterexamples():
    net = _net()
    x, y = _data(net)
    c, p, res = _run(net, x, y)
    margins = _exact(net, x, y, EPS)
    v = res.arrays["verdict"]
    assert v.dtype == np.int8 and set(v.tolist()) <= {0, 1, 2}
    assert v[0] == 2 and res.arrays["cex_linf"][0] == 0.0  # misclassified
    for i, m in enumerate(margins):
        if v[i] == 1:
            assert m > 0, f"example {i} verified but the MILP finds margin {m}"
        if v[i] == 2:
            assert i == 0 or m <= 1e-6, f"example {i} falsified but the MILP proves margin {m}"
            assert 0 <= res.arrays["cex_linf"][i] <= EPS + 1e-6
    assert (v == 0).sum() == 0  # tiny nets: everything is decided
    assert {int(t) for t in v} == {1, 2}, "the instance should have both outcomes"
    np.testing.assert_array_equal(res.certified, v == 1)
    np.testing.assert_array_equal(res.arrays["falsified"], v == 2)
    assert res.arrays["seconds"].dtype == np.float32 and res.arrays["domains"].dtype == np.int32
    d = c.details(p, res)
    assert (d["verified"], d["falsified"], d["unknown"]) == (int((v == 1).sum()), int((v == 2).sum()), 0)
    assert d["exact_robust_accuracy"] == pytest.approx(float((v == 1).mean()))
    assert sum(d[f"decided_by_{k}"] for k in complete_mod._DECIDERS) == x.shape[0]


@pytest.mark.slow  # a radius search (about 5 cascade runs) per example
def test_the_certified_radius_is_sound_and_the_search_is_bounded_by_the_counterexample():
    net = _net()
    x, y = _data(net, n=6)
    _, _, res = _run(net, x, y, eps_max=2 * EPS)
    v, r = res.arrays["verdict"], res.radius
    assert r[0] == 0.0
    for i in range(1, 6):
        if r[i] > 0:  # a proved radius: the MILP agrees there is no counterexample within it
            m = milp_robust_margin(net, (x[i] - r[i]).clamp(0, 1).double().numpy(),
                                   (x[i] + r[i]).clamp(0, 1).double().numpy(), int(y[i]), K)
            assert m > 0
        if v[i] == 1:
            assert r[i] >= EPS
        if v[i] == 2:
            assert r[i] <= res.arrays["cex_linf"][i]


def test_a_killed_run_keeps_its_decided_examples_and_the_rerun_redoes_only_the_rest(tmp_path, monkeypatch):
    net = _net()
    x, y = _data(net)
    _, _, full = _run(net, x, y)  # uninterrupted, no progress files
    real = complete_mod.verify
    calls = []

    def dies_on_the_fifth(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(complete_mod, "verify", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        _run(net, x, y, progress=str(tmp_path))
    (folder,) = tmp_path.iterdir()
    kept = sorted(int(p.stem) for p in folder.glob("*.json"))
    assert kept == list(range(100, 105))  # the misclassified one and four verify() calls
    (folder / "101.json").write_text('{"verdict": 1, "seconds": "x"}')  # tampered: computed again
    calls.clear()
    monkeypatch.setattr(complete_mod, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    c, p, res = _run(net, x, y, progress=str(tmp_path))
    assert len(calls) == x.shape[0] - 4  # 14 examples - 0 (no call) - 102, 103, 104 (kept)
    assert res.counts["resumed"] == 4
    np.testing.assert_array_equal(res.arrays["verdict"], full.arrays["verdict"])
    np.testing.assert_array_equal(res.certified, full.certified)
    assert json.loads((folder / "101.json").read_text())["verdict"] in (1, 2)
    # other settings (the budget) are another folder: nothing is reused
    calls.clear()
    _run(net, x, y, progress=str(tmp_path), budget=4.0)
    assert len(calls) == x.shape[0] - 1


def _entry(verified, falsified, unknown, acc, exact=None, upper=None):
    details = {"verified": verified, "falsified": falsified, "unknown": unknown, "exact_robust_accuracy": exact}
    if upper is not None:
        details["robust_upper_bound"] = upper
    return SimpleNamespace(details=details, certified_accuracy=acc)


def test_the_record_checks_the_verdicts():
    v = np.array([1, 1, 2, 0], np.int8)
    arrays = {"verdict_complete": v, "falsified_complete": v == 2, "certified_complete": v == 1,
              "clean_correct": np.array([1, 1, 1, 1], bool), "autoattack_robust": np.array([1, 1, 0, 0], bool)}
    good = _entry(2, 1, 1, 0.5, None, 0.5)
    assert verdict_problems("complete", good, 4, arrays) == []
    bad = [
        (_entry(2, 1, 0, 0.5), "not n_examples"),
        (_entry(3, 1, 0, 0.5, 0.5), "differs from certified_accuracy"),
        (_entry(2, 1, 1, 0.5, 0.5), "exactly when nothing is unknown"),
        (_entry(2, 1, 1, 0.5, None, 0.75), "robust_upper_bound"),
        (_entry(2, 2, 0, 0.5, 0.5), "the counts differ"),
    ]
    for entry, words in bad:
        msgs = " ".join(f"{f}: {m}" for f, m in verdict_problems("complete", entry, 4, arrays))
        assert words in msgs, (entry.details, msgs)
    wrong = {**arrays, "certified_complete": np.array([1, 0, 0, 0], bool)}
    assert "disagrees" in " ".join(m for _, m in verdict_problems("complete", good, 4, wrong))


def test_robust_upper_bound_is_clean_minus_aa_successes_union_falsified():
    arrays = {"clean_correct": np.array([1, 1, 1, 1, 1, 0], bool),
              "autoattack_robust": np.array([1, 1, 1, 0, 0, 0], bool),
              "falsified_complete": np.array([0, 0, 1, 1, 0, 1], bool)}
    rec = SimpleNamespace(details={"exact_robust_accuracy": None}, certified_accuracy=2 / 6)
    falsified_bound({"complete": rec}, arrays)
    # survivors: correct, not broken by AA, not falsified: examples 0 and 1 -> 2 / 6
    assert rec.details["robust_upper_bound"] == pytest.approx(2 / 6)
    assert rec.details["sandwich_closed"] is True  # certified 2/6 = the upper bound: robust accuracy is 2/6
    rec.certified_accuracy = 1 / 6
    falsified_bound({"complete": rec}, arrays)
    assert rec.details["sandwich_closed"] is False


def test_a_counterexample_on_a_certified_example_breaks_the_sandwich():
    ctx = EvalContext(submission=None, model=None, data=None, options=None, state_dir=None)  # type: ignore[arg-type]
    ctx.results["clean"] = StageResult({}, {"clean_correct": np.array([1, 1])})
    ctx.results["certify"] = StageResult({}, {"certified_ibp": np.array([1, 0]),
                                              "certified_complete": np.array([0, 0]),
                                              "falsified_complete": np.array([1, 0])})
    with pytest.raises(SandwichViolation, match="falsified_complete has counterexamples for examples \\[0\\]"):
        check_sandwich(ctx)
    ctx.results["certify"].arrays["certified_ibp"] = np.array([0, 0])
    check_sandwich(ctx)


def test_the_maintainer_caps_the_budget(monkeypatch):
    monkeypatch.delenv("ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S", raising=False)
    assert certify_budget(None, certify_budget_cap()[0]) == (60.0, "default")
    assert certify_budget(30.0, 600.0) == (30.0, "submission")
    assert certify_budget(900.0, certify_budget_cap("120")[0]) == (120.0, "maintainer")
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S", "10")
    assert certify_budget_cap() == (10.0, "ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S")
    monkeypatch.setenv("ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S", "nan")
    with pytest.raises(HarnessError):
        certify_budget_cap()


def test_a_model_the_bounds_cannot_trace_is_skipped():
    net = nn.Sequential(nn.Linear(4, 3), nn.Softplus()).eval()
    with pytest.raises(certifiers.Skip, match="unsupported"):
        certifiers.get("complete").prepare(net, (4,), "cpu", norm="Linf", options={})
