"""The certifier registry and interface: metadata without torch, one-line errors, the schema,
a toy certifier registered by one line and run end to end, the IBP/CROWN/CROWN-IBP wrappers
against harness.bounds, smoothing's per-example noise, and the record entry."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers.toy_certifier import ExactLinear
from scipy.stats import norm as normal

from harness import certifiers
from harness.bounds import BoundedModel, certified_radius
from harness.certifiers import Certifier, CertResult, Prepared, Skip
from harness.certifiers.results import check_result, concat, summarize
from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.stats import clopper_pearson
from harness.record.checks import record_problems
from harness.record.read import read_record
from harness.record.schema import CertifiedRecord
from harness.submission.load import parse_submission
from harness.submission.schema import json_schema

BUILTIN = ("ibp", "crown", "crown-ibp", "complete", "lipschitz", "smoothing")


# ---- the registry --------------------------------------------------------------------------------

def test_registry_and_schema_import_without_torch():
    code = ("import sys; from harness import certifiers; import harness.submission.load, harness.record.read; "
            "print(certifiers.names(), certifiers.sound_names(), certifiers.get('lipschitz').sound); "
            "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ}).stdout.splitlines()
    assert out[1] == "[]", out
    assert "lipschitz" in out[0]


def test_names_and_soundness():
    assert certifiers.names()[:6] == BUILTIN
    assert certifiers.sound_names()[:5] == ("ibp", "crown", "crown-ibp", "complete", "lipschitz")
    assert "smoothing" not in certifiers.sound_names()
    assert certifiers.is_sound("crown") and not certifiers.is_sound("smoothing")
    assert not certifiers.is_sound("magic")


def test_unknown_name_is_a_one_line_error_listing_the_known_ones():
    with pytest.raises(HarnessError) as e:
        certifiers.get("magic")
    msg = str(e.value)
    assert "\n" not in msg and "'magic'" in msg and "ibp, crown, crown-ibp, complete, lipschitz, smoothing" in msg
    with pytest.raises(HarnessError):
        certifiers.get(None)


def test_validate_names_the_field_in_one_line(make_submission, capsys):
    path = make_submission("bad-cert", evaluation={"certify": ["ibp", "magic"]})
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "magic" in ln]
    assert len(lines) == 1 and "evaluation.certify[1]" in lines[0] and "lipschitz" in lines[0]


def test_schema_lists_the_registry(capsys):
    items = json_schema()["$defs"]["Evaluation"]["properties"]["certify"]["anyOf"][0]["items"]
    assert items["enum"] == list(certifiers.names())
    assert main(["schema"]) == 0
    assert "lipschitz" in json.dumps(json.loads(capsys.readouterr().out))


def test_smoothing_in_certify_needs_the_smoothing_section(make_submission):
    path = make_submission("sm-cert", threat_model={"norm": "L2", "eps": 0.5},
                           evaluation={"certify": ["lipschitz", "smoothing"]})
    _, problems = parse_submission(path)
    assert [p.field for p in problems] == ["smoothing"]
    ok = make_submission("sm-cert2", threat_model={"norm": "L2", "eps": 0.5},
                         evaluation={"certify": ["lipschitz", "smoothing"]}, smoothing={"sigma": 0.25})
    sub, problems = parse_submission(ok)
    assert problems == [] and sub.spec.evaluation.certify == ["lipschitz", "smoothing"]


def test_register_refuses_bad_entries():
    class Bad(Certifier):
        name, sound, norms = "Bad Name", True, ("L2",)

    with pytest.raises(HarnessError, match="lower-case"):
        certifiers.register(Bad())
    Bad.name = "ibp"
    with pytest.raises(HarnessError, match="already registered"):
        certifiers.register(Bad())
    Bad.name, Bad.norms = "bad", ("L1",)
    with pytest.raises(HarnessError, match="norms"):
        certifiers.register(Bad())
    with pytest.raises(HarnessError, match="needs a Certifier"):
        certifiers.register("ibp")
    assert "bad" not in certifiers.names()


@pytest.mark.parametrize("name", BUILTIN)
def test_lazy_entries_agree_with_their_implementations(name):
    entry = certifiers.get(name)
    impl = entry.load()
    assert isinstance(impl, Certifier) and not isinstance(impl, certifiers.registry.LazyCertifier)
    assert (impl.name, impl.sound, impl.norms) == (entry.name, entry.sound, entry.norms)


def test_lazy_entry_refuses_an_implementation_that_disagrees():
    entry = certifiers.lazy("ibp-alias", "harness.certifiers.bound_methods:IBP", sound=True, norms=("Linf", "L2"))
    with pytest.raises(HarnessError, match="declares name='ibp'"):
        entry.load()


# ---- a toy certifier, registered by one line, end to end --------------------------------------------





@pytest.fixture
def toy():
    certifiers.register(ExactLinear())  # the one registration line
    yield certifiers.get("toy-exact-linear")
    certifiers.unregister("toy-exact-linear")


def test_toy_certifier_through_the_registry_schema_and_record(toy, make_submission, repo):
    # the schema and the sandwich lists read the registry at the time of use
    assert "toy-exact-linear" in certifiers.names() and "toy-exact-linear" in certifiers.sound_names()
    items = json_schema()["$defs"]["Evaluation"]["properties"]["certify"]["anyOf"][0]["items"]
    assert "toy-exact-linear" in items["enum"]
    sub, problems = parse_submission(make_submission("toy", evaluation={"certify": ["toy-exact-linear"]}))
    assert problems == [] and sub.spec.evaluation.certify == ["toy-exact-linear"]

    # prepare once, run per block, concatenate, summarize
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = torch.rand(30, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    c = certifiers.get("toy-exact-linear")
    with pytest.raises(Skip, match="Flatten"):
        c.prepare(nn.Sequential(nn.Linear(12, 4)), (12,), "cpu", norm="L2")
    p = c.prepare(model, (3, 2, 2), "cpu", norm="L2")
    blocks = [c.run(p, x[a:b], y[a:b], index=np.arange(a, b), eps=0.02, norm="L2", eps_max=0.5, tol=0.01)
              for a, b in ((0, 7), (7, 19), (19, 30))]
    res = concat(blocks)
    assert res.counts == {"examples": 30} and res.certified.shape == (30,)
    rec, arrays = summarize(c, p, res, eps=0.02, eps_max=0.5, tol=0.01, seconds=1.0)
    entry = CertifiedRecord.model_validate(rec)
    assert entry.method == "toy-exact-linear" and not entry.probabilistic and entry.tolerance == 0.0
    assert entry.details == {"norm": "L2", "classes": 4, "examples": 30}
    assert set(arrays) == {"certified_toy-exact-linear", "radius_toy-exact-linear"}

    # a result record with the toy's entry passes the record's method checks
    base = read_record(repo / "leaderboard" / "results" / "mnist-ibp.json", examples=False)
    forged = base.model_copy(update={"certified": {**(base.certified or {}), "toy-exact-linear": entry}})
    fields = [f for f, _ in record_problems(forged) if f.startswith("certified.toy-exact-linear.")]
    assert not [f for f in fields if f.endswith((".method", ".probabilistic"))], fields
    flipped = forged.model_copy(update={"certified": {"toy-exact-linear": entry.model_copy(
        update={"probabilistic": True})}})
    assert ("certified.toy-exact-linear.probabilistic" in [f for f, _ in record_problems(flipped)])
    certifiers.unregister("toy-exact-linear")
    assert "certified.toy-exact-linear.method" in [f for f, _ in record_problems(forged)]
    _, problems = parse_submission(make_submission("toy2", evaluation={"certify": ["toy-exact-linear"]}))
    assert [p.field for p in problems] == ["evaluation.certify[0]"]


# ---- the bound wrappers against harness.bounds -------------------------------------------------------

def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5)])  # radii inside (0, eps_max)
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_bound_wrappers_give_the_flags_and_radii_of_harness_bounds(method, norm, eps):
    model = _small_cnn()
    shape = (1, 8, 8)
    x = torch.rand(12, *shape, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5
    eps_max, tol = 2 * eps, eps / 20
    c = certifiers.get(method)
    cache: dict = {}
    p = c.prepare(model, shape, "cpu", norm=norm, options={"cache": cache})
    assert p.batch_size == (32 if method == "crown" else None)
    assert p.info["cost"]["input_dim"] == 64
    bm = BoundedModel(model, shape)
    results = []
    for a, b in ((0, 5), (5, 12)):
        res = c.run(p, x[a:b], y[a:b], index=np.arange(a, b), eps=eps, norm=norm, eps_max=eps_max, tol=tol)
        cert = bm.certify(x[a:b], y[a:b], eps, norm, method)
        r, calls = certified_radius(bm, x[a:b], y[a:b], eps_max, norm, method, tol, known=(eps, cert))
        assert np.array_equal(res.certified, cert.numpy())
        assert np.array_equal(res.radius, r.double().numpy())
        assert np.array_equal(res.correct, (model(x[a:b]).argmax(1) == y[a:b]).numpy())
        assert res.counts["bound_calls"] == calls + 1  # the certification at eps, then the search
        results.append(res)
    res = concat(results)
    check_result(res, 12, method)
    assert ((res.radius > 0) & (res.radius < eps_max)).any()  # the bisection was exercised
    rec, arrays = summarize(c, p, res, eps=eps, eps_max=eps_max, tol=tol, seconds=0.5)
    entry = CertifiedRecord.model_validate(rec)
    assert entry.bound_calls_per_example == res.counts["bound_examples"] / 12 >= 1
    assert entry.details["norm"] == norm and entry.details["bound_calls"] == res.counts["bound_calls"]
    assert arrays[f"radius_{method}"].dtype == np.float32
    # the traced model is shared through the cache
    other = "ibp" if method != "ibp" else "crown-ibp"
    assert certifiers.get(other).prepare(model, shape, "cpu", norm=norm, options={"cache": cache}).state is p.state


def test_bound_wrappers_skip_what_they_cannot_do():
    with pytest.raises(Skip, match="unsupported operator"):
        certifiers.get("ibp").prepare(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), (4,), "cpu", norm="Linf")
    with pytest.raises(Skip, match="too large"):
        certifiers.get("crown").prepare(_small_cnn(), (1, 8, 8), "cpu", norm="Linf",
                                        options={"max_crown_elements": 10})
    with pytest.raises(Skip, match="too large"):
        certifiers.get("crown-ibp").prepare(_small_cnn(), (1, 8, 8), "cpu", norm="Linf",
                                            options={"max_crown_ibp_elements": 10})


# ---- randomized smoothing: per-example noise ---------------------------------------------------------

def _smooth_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    opts = {"smoothing": {"sigma": 0.5, "n0": 16, "n": 256, "alpha": 0.01}, "batch_size": 64}
    c = certifiers.get("smoothing")
    return c, c.prepare(model, (1, 4, 4), "cpu", norm="L2", options=opts), x, y


def test_smoothing_result_of_an_example_does_not_depend_on_its_batch():
    c, p, x, y = _smooth_setup()
    idx = np.array([40, 41, 42, 43, 44])
    kw = dict(eps=0.1, norm="L2", eps_max=1.0, tol=0.0, seed=7)
    whole = c.run(p, x, y, index=idx, **kw)
    single = concat([c.run(p, x[k:k + 1], y[k:k + 1], index=idx[k:k + 1], **kw) for k in range(5)])
    order = [3, 0, 4, 1, 2]
    shuffled = c.run(p, x[order], y[order], index=idx[order], **kw)
    for key in ("certified", "radius", "correct"):
        assert np.array_equal(getattr(whole, key), getattr(single, key))
        assert np.array_equal(getattr(whole, key)[order], getattr(shuffled, key))
    assert np.array_equal(whole.arrays["pred"], single.arrays["pred"])
    assert whole.counts == single.counts
    # the noise does depend on the seed and on the example's index
    other_seed = c.run(p, x, y, index=idx, **{**kw, "seed": 8})
    other_index = c.run(p, x, y, index=idx + 100, **kw)
    assert not np.array_equal(whole.radius, other_seed.radius)
    assert not np.array_equal(whole.radius, other_index.radius)


def test_smoothing_is_probabilistic_and_records_its_own_eps_max():
    c, p, x, y = _smooth_setup()
    assert not c.sound and p.tolerance == 0.0 and p.batch_size == 1
    assert p.eps_max == pytest.approx(0.5 * normal.ppf(0.01 ** (1 / 256)))
    res = c.run(p, x, y, index=np.arange(5), eps=0.1, norm="L2", eps_max=1.0, tol=0.0)
    assert np.array_equal(res.certified, res.correct & (res.radius >= 0.1))
    assert np.all(res.radius[~res.correct] == 0)
    rec, arrays = summarize(c, p, res, eps=0.1, eps_max=1.0, tol=0.0, seconds=1.0)
    entry = CertifiedRecord.model_validate(rec)
    assert entry.probabilistic and entry.eps_max == pytest.approx(p.eps_max)
    assert entry.bound_calls_per_example is None
    assert entry.details["sigma"] == 0.5 and entry.details["smoothed_accuracy"] == pytest.approx(res.correct.mean())
    assert arrays["pred_smoothing"].dtype == np.int16
    with pytest.raises(HarnessError, match="indices"):
        c.run(p, x, y, index=None, eps=0.1, norm="L2", eps_max=1.0, tol=0.0)
    with pytest.raises(Skip, match="L2"):
        c.prepare(nn.Flatten(), (1, 4, 4), "cpu", norm="Linf", options={"smoothing": {"sigma": 0.5}})
    with pytest.raises(Skip, match="smoothing section"):
        c.prepare(nn.Flatten(), (1, 4, 4), "cpu", norm="L2", options={})


# ---- the record entry ----------------------------------------------------------------------------------

def test_summarize_against_a_hand_computation():
    class Fixed(Certifier):
        name, sound, norms = "fixed", True, ("L2",)

    correct = np.array([True, True, True, False, True])
    radius = np.array([0.3, 0.0, 1.0, 0.0, 0.15])
    res = CertResult(certified=radius > 0.1, radius=radius, correct=correct, counts={"bound_examples": 10})
    rec, arrays = summarize(Fixed(), Prepared(norm="L2", info={"k": 1}), res, eps=0.1, eps_max=1.0,
                            tol=0.05, seconds=2.0)
    assert rec["certified_accuracy"] == 3 / 5
    assert tuple(rec["certified_accuracy_ci95"]) == pytest.approx(clopper_pearson(3, 5))
    assert rec["acr"] == pytest.approx(1.45 / 5) and rec["acr_percent"] == pytest.approx(100 * 1.45 / 5)
    assert rec["bound_calls_per_example"] == 2.0 and rec["tolerance"] == 0.05 and not rec["probabilistic"]
    curve = rec["curve"]  # fraction correct with radius >= e, e on linspace(0, 1, 21)
    assert len(curve) == 21 and curve[0] == (0.0, 4 / 5) and curve[-1] == (1.0, 1 / 5)
    assert curve[2] == (pytest.approx(0.1), 3 / 5) and curve[4] == (pytest.approx(0.2), 2 / 5)
    assert rec["details"] == {"norm": "L2", "k": 1, "bound_examples": 10}
    assert arrays["certified_fixed"].tolist() == [True, False, True, False, True]
    # the certifier's own eps_max and tolerance win over the caller's
    rec2, _ = summarize(Fixed(), Prepared(norm="L2", eps_max=2.0, tolerance=0.0), res, eps=0.1, eps_max=1.0,
                        tol=0.05, seconds=2.0)
    assert rec2["eps_max"] == 2.0 and rec2["tolerance"] == 0.0 and rec2["curve"][-1][0] == 2.0


@pytest.mark.parametrize("bad, msg", [
    (dict(certified=np.array([True, True]), correct=np.array([True, False])), "not correctly classified"),
    (dict(radius=np.array([0.1, 0.2]), correct=np.array([True, False])), "radius 0"),
    (dict(radius=np.array([0.1, np.nan])), "finite"),
    (dict(certified=np.array([True])), "shapes"),
])
def test_result_invariants_are_checked(bad, msg):
    base = dict(certified=np.array([True, False]), radius=np.array([0.1, 0.0]), correct=np.array([True, True]))
    with pytest.raises(HarnessError, match=msg):
        check_result(CertResult(**{**base, **bad}), 2)
