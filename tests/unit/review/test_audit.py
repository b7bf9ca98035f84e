"""`harness audit RECORD`: the project's own records pass; hand-edited ones fail, naming the examples."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers.spec import REPO

import harness.review.audit as audit
from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.stats import clopper_pearson
from harness.record.checks import record_problems
from harness.record.read import read_record
from harness.review.audit import audit_record, plan_sample, plan_samples, reattack_verdict

#: a small Square budget keeps the CPU tests fast (the default, 5000, is AutoAttack's)
FAST = {"square_queries": 100}


def copy_entry(tmp_path, eid="mnist-standard"):
    """submissions/<eid>/ and its record, in a fresh repository layout under tmp_path."""
    shutil.copytree(REPO / "submissions" / eid, tmp_path / "submissions" / eid)
    res = tmp_path / "leaderboard" / "results"
    res.mkdir(parents=True)
    for suffix in (".json", ".examples.npz"):
        shutil.copy(REPO / "leaderboard" / "results" / f"{eid}{suffix}", res / f"{eid}{suffix}")
    return res / f"{eid}.json"


def edit_examples(record, **changes):
    """Flip per-example flags and, as a careful forger would, make the record's summary agree with
    them (accuracies, their Clopper-Pearson intervals, AutoAttack's accuracy after each attack), so
    that `read_record`'s consistency checks pass and only the re-computation can catch it."""
    npz = record.with_name(record.name.removesuffix(".json") + ".examples.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    for key, (idx, value) in changes.items():
        arrays[key][idx] = value
    np.savez_compressed(npz, **arrays)
    rec = json.loads(record.read_text())
    n = rec["n_examples"]
    clean, robust = arrays["clean_correct"].astype(bool), arrays["autoattack_robust"].astype(bool)
    for name, flags in (("clean_accuracy", clean), ("robust_accuracy", robust)):
        k = int(flags.sum())
        rec[name], rec[f"{name}_ci95"] = k / n, list(clopper_pearson(k, n))
    for m, c in (rec.get("certified") or {}).items():
        k = int(arrays[f"certified_{m}"].sum())
        c["certified_accuracy"], c["certified_accuracy_ci95"] = k / n, list(clopper_pearson(k, n))
    after = rec["autoattack"]["accuracy_after"]
    for a in after:
        after[a] = rec["clean_accuracy"] if a == "clean" else max(min(after[a], rec["clean_accuracy"]),
                                                                  rec["robust_accuracy"])
    after[list(after)[-1]] = rec["robust_accuracy"]
    record.write_text(json.dumps(rec))
    return arrays


@pytest.mark.slow
def test_an_honest_robust_record_passes(capsys):
    """mnist-pgd's record as shipped (500 points, 87% robust): a few points per check, re-classified,
    re-certified (IBP, CROWN-IBP) and re-attacked (APGD-CE, APGD-T, Square) under another seed, and
    its FLOPs recounted."""
    assert main(["audit", str(REPO / "leaderboard" / "results" / "mnist-pgd.json"), "--sample", "4", "--seed", "3",
                 "--square-queries", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs and parameters recomputed: equal" in out
    assert "clean re-run on 4 points, 0 disagree" in out
    assert "ibp re-certified on 4 of 416 claimed points, 0 not certified, 0 with a smaller radius" in out
    assert ("APGD-CE + APGD-T + Square (100 queries) at Linf eps=0.3 on 4 points claimed robust, 0 broken (95% "
            "lower bound of the broken fraction 0.0%, tolerance 5%; fails at 2)") in out
    assert "probes: zero input gradient at 0 of 4 re-attacked points, forward pass deterministic" in out
    assert out.splitlines()[0].endswith("; passed")
    # the notes say how little 4 points prove
    assert "note: clean: this sample catches a 1% forgery with probability 0.039 only" in out


@pytest.mark.slow
def test_flipped_clean_flags_are_named(tmp_path, capsys):
    record = copy_entry(tmp_path)
    with np.load(REPO / "leaderboard" / "results" / "mnist-standard.examples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    wrong = np.nonzero(~arrays["clean_correct"])[0][:2]
    assert wrong.size == 2
    edit_examples(record, clean_correct=(wrong, True))
    seed = next(s for s in range(10_000) if set(wrong) <= set(plan_sample(arrays, 500, 40, s)[0]))
    res = audit_record(record, sample=40, seed=seed, **FAST)
    assert res.clean_disagree == wrong.tolist() and not res.clean_ambiguous
    assert len(res.problems) == 1 and f"indices {wrong[0]}, {wrong[1]} " in res.problems[0]
    assert main(["audit", str(record), "--sample", "40", "--seed", str(seed), "--square-queries", "100",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("problem: clean_correct:") and "Traceback" not in err


@pytest.mark.slow
def test_flipped_robust_flags_are_named(tmp_path):
    record = copy_entry(tmp_path)
    flip = np.array([5, 6, 7])
    edit_examples(record, autoattack_robust=(flip, True))
    res = audit_record(record, sample=4, seed=1, **FAST)
    assert sorted(res.broken) == flip.tolist() and set(res.broken.values()) == {"apgd-ce"}
    assert res.problems == [
        "autoattack_robust: 3 of 3 sampled points the record claims robust were broken at indices 5, 6, 7 "
        "(by apgd-ce; seed 1); at 95% confidence more than 5% of its robust points are not robust (lower bound "
        "36.8%; an honest record fails with 2 or more broken at most 5% of the time)"]


@pytest.mark.slow
def test_the_re_attack_tolerance_is_a_confidence_bound(tmp_path):
    """One broken point among 16 claimed robust is within AutoAttack's own variance: listed, tolerated."""
    record = copy_entry(tmp_path, "mnist-pgd")
    with np.load(record.with_name("mnist-pgd.examples.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    flip = int(np.nonzero(arrays["clean_correct"] & ~arrays["autoattack_robust"])[0][0])
    arrays["autoattack_robust"][flip] = True
    edit_examples(record, autoattack_robust=([flip], True))
    plan = {"clean": 16, "reattack": 16, "certify": {"ibp": 16, "crown-ibp": 16}}
    seed = next(s for s in range(1000) if flip in plan_samples(arrays, 500, s, **plan)["attack"])
    res = audit_record(record, sample=16, seed=seed, **FAST)
    assert res.attack_checked and flip in res.attack_checked and list(res.broken) == [flip]
    assert res.ok and f"(indices {flip})" in res.summary() and "fails at 3)" in res.summary()
    assert res.broken_lower_bound == pytest.approx(reattack_verdict(1, 16, 0.05)[0])


@pytest.mark.parametrize("k,n,lower", [(4, 4, 0.4729), (3, 3, 0.3684), (1, 64, 0.0008), (4, 200, 0.0069),
                                        (5, 64, 0.0313), (0, 64, 0.0)])
def test_reattack_verdict(k, n, lower):
    """Lower bound = 0.05-quantile of Beta(k, n - k + 1) (hand-checked: k = n gives 0.05 ** (1 / n)); the
    verdict, a binomial test against p0, agrees with "the lower bound exceeds p0"."""
    got, fails = reattack_verdict(k, n, 0.02)
    assert got == pytest.approx(lower, abs=1e-4)
    assert fails == (lower > 0.02)
    if k == n:
        assert got == pytest.approx(0.05 ** (1 / n))
    assert reattack_verdict(0, 0, 0.0) == (0.0, False)


def test_a_record_of_another_checkpoint_fails_before_any_model_runs(tmp_path):
    record = copy_entry(tmp_path)
    rec = json.loads(record.read_text())
    rec["provenance"]["checkpoint_sha256"] = "0" * 64
    record.write_text(json.dumps(rec))
    res = audit_record(record, sample=4, seed=0, **FAST)
    assert not res.ok and not res.clean_checked
    assert any(p.startswith("provenance.checkpoint_sha256: the record was made with checkpoint sha256 000")
               for p in res.problems)


def test_missing_examples_file_is_a_one_line_error(tmp_path):
    record = copy_entry(tmp_path)
    record.with_name("mnist-standard.examples.npz").unlink()
    with pytest.raises(HarnessError, match="examples.npz: no such file"):
        audit_record(record, sample=4, seed=0)


def test_the_sample_is_seeded_and_drawn_from_claimed_robust_points():
    n = 100
    arrays = {"index": np.arange(n), "clean_correct": np.ones(n, bool), "autoattack_robust": np.arange(n) % 10 == 0}
    a = plan_sample(arrays, n, 5, seed=7)
    b = plan_sample(arrays, n, 5, seed=7)
    c = plan_sample(arrays, n, 5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    clean, attack = a
    assert len(clean) == 5 and len(set(clean)) == 5 and len(attack) == 5
    assert arrays["autoattack_robust"][attack].all()
    # only points available locally are drawn (e.g. the 100 bundled CIFAR-10 images of a 10k record)
    clean, attack = plan_sample(arrays, 30, 50, seed=0)
    assert clean.max() < 30 and len(clean) == 30 and attack.tolist() == [0, 10, 20]


@pytest.mark.slow
def test_the_model_runs_only_in_the_sandboxed_worker(tmp_path, monkeypatch):
    """The audit's model work (harness.review.audit.recompute) happens in the worker process: made to fail
    in this process, the audit still runs, and gives the in-process result (every check: clean,
    FLOPs, certificates, probes and re-attack come back through the worker's result file)."""
    record = copy_entry(tmp_path, "mnist-pgd")
    local = audit_record(record, sample=3, seed=5, sandbox="none", **FAST)

    def here(*args, **kwargs):
        raise AssertionError("the model was loaded in the auditing process")

    monkeypatch.setattr(audit, "recompute", here)
    res = audit_record(record, sample=3, seed=5, **FAST)
    assert res.ok and res.clean_checked == local.clean_checked and res.attack_checked == local.attack_checked
    assert res.broken == local.broken and res.clean_disagree == local.clean_disagree
    assert res.flops_checked and local.flops_checked and not res.flops_differences
    assert {m: (c.checked, c.failed) for m, c in res.certified.items()} == \
        {m: (c.checked, c.failed) for m, c in local.certified.items()}
    assert set(res.certified) == {"ibp", "crown-ibp"} and all(len(c.checked) == 3 for c in res.certified.values())
    assert res.zero_gradient == local.zero_gradient == 0 and res.randomized is local.randomized is False
    with pytest.raises(AssertionError, match="loaded in the auditing process"):
        audit_record(record, sample=3, seed=5, sandbox="none")


@pytest.mark.slow
def test_forged_flops_and_parameters_are_named(tmp_path, capsys):
    """FLOPs and parameters are recounted exactly with the flops stage: a record claiming 1,000 of each
    (the forged PR of issue 16) fails, naming both fields; a stranger's text in the record is printed
    escaped, on one line."""
    record = copy_entry(tmp_path, "mnist-pgd")
    rec = json.loads(record.read_text())
    rec["params"], rec["inference_flops"] = 1000, 1000.0
    rec["flops_error"] = "evil\x1b[2J\n::error ::forged\u202e"
    record.write_text(json.dumps(rec))
    assert main(["audit", str(record), "--sample", "2", "--seed", "0", "--square-queries", "0", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "FLOPs and parameters recomputed: 3 differ" in out and out.splitlines()[0].endswith("FAILED (3 problem(s))")
    assert err.count("\n") == 3 and "\x1b" not in err and "\u202e" not in err
    assert all(line.startswith("problem: ") for line in err.splitlines())
    assert sorted(line.removeprefix("problem: ").split(":")[0] for line in err.splitlines()) == \
        ["flops_error", "inference_flops", "params"]
    assert "problem: params: the record says 1000, the model has 166406 (recounted with the flops stage)\n" in err
    assert "evil\\x1b[2J ::error ::forged\\u202e" in err  # escaped, on the line of its problem


def _forge_certificates(record, points, radius=None):
    """certified_ibp set on ``points`` (or radius_ibp raised to ``radius`` there), the record's summary
    made to agree, as a careful forger would."""
    npz = record.with_name(record.name.removesuffix(".json") + ".examples.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    if radius is None:
        edit_examples(record, certified_ibp=(points, True))
        arrays["certified_ibp"][points] = True
    else:
        edit_examples(record, radius_ibp=(points, radius))
        arrays["radius_ibp"][points] = radius
    return arrays


@pytest.mark.slow
def test_forged_certificates_are_named(tmp_path):
    """Three robust mnist-pgd points the record now says IBP certifies (IBP certifies none of them)."""
    record = copy_entry(tmp_path, "mnist-pgd")
    with np.load(record.with_name("mnist-pgd.examples.npz")) as z:
        points = np.nonzero(z["autoattack_robust"] & ~z["certified_ibp"])[0][:3]
    arrays = _forge_certificates(record, points)
    plan = {"clean": 8, "reattack": 8, "certify": {"ibp": 8, "crown-ibp": 8}}
    seed = next(s for s in range(10_000)
                if len(set(points) & set(plan_samples(arrays, 500, s, **plan)["certify"]["ibp"])) >= 2)
    res = audit_record(record, sample=8, seed=seed, sandbox="none", square_queries=0)
    caught = sorted(set(points) & set(res.certified["ibp"].checked))
    assert res.certified["ibp"].failed == caught and len(caught) >= 2
    (problem,) = res.problems
    assert problem.startswith(f"certified_ibp: {len(caught)} of 8 sampled points the record claims ibp certifies are "
                              f"not certified by ibp at eps=0.3: indices {', '.join(map(str, caught))}")


@pytest.mark.slow
def test_forged_radii_are_named(tmp_path):
    """IBP radii raised from <= 0.03 to 0.25 (below eps, so no certificate is claimed): the recomputed
    radius is smaller by more than the tolerance (0.015)."""
    record = copy_entry(tmp_path, "mnist-pgd")
    with np.load(record.with_name("mnist-pgd.examples.npz")) as z:
        points = np.nonzero(z["radius_ibp"] > 0)[0][:200]
    _forge_certificates(record, points, radius=0.25)
    res = audit_record(record, sample=20, seed=0, sandbox="none", square_queries=0)
    smaller = res.radius_smaller["ibp"]
    assert smaller and set(smaller) == set(points) & set(res.certified["ibp"].checked)
    (problem,) = res.problems
    assert problem.startswith(f"radius_ibp: {len(smaller)} of 20 sampled points have a recomputed ibp radius smaller "
                              "than the record's by more than the tolerance 0.015")
    assert "claimed 0.25, recomputed 0.0" in problem


def test_n_examples_beyond_the_test_set_is_refused(tmp_path, capsys):
    """20,000 MNIST points: refused by the record reader (record_problems), so by the audit, in one line."""
    rec = read_record(REPO / "leaderboard" / "results" / "mnist-pgd.json", examples=False)
    assert ("n_examples", "20000 exceeds the 10000 points of the MNIST test set") in \
        record_problems(rec.model_copy(update={"n_examples": 20_000}))
    assert not any(f == "n_examples" for f, _ in record_problems(rec.model_copy(update={"n_examples": 10_000})))
    record = copy_entry(tmp_path, "mnist-pgd")
    raw = json.loads(record.read_text())
    raw["n_examples"] = 20_000
    record.write_text(json.dumps(raw))
    assert main(["audit", str(record), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_examples: 20000 exceeds the 10000 points of the MNIST test set" in err
    # a data set of unknown size (custom): the points there are the test set
    custom = raw | {"dataset": "custom", "n_examples": 50}
    assert audit.dataset_size_problem(read_record_like(custom), 40).startswith(
        "n_examples: 50 exceeds the 40 points of the Custom test set")
    assert audit.dataset_size_problem(read_record_like(custom), 50) is None


def read_record_like(raw):
    from types import SimpleNamespace

    return SimpleNamespace(dataset=raw["dataset"], n_examples=raw["n_examples"])


@pytest.mark.slow
def test_points_the_audit_cannot_see_fail_it(tmp_path, monkeypatch):
    """Only part of the record's points available (the 100 bundled CIFAR-10 images of a 10,000-point
    record): the audit checks what it can, and fails, saying so (it used to pass with a note)."""
    record = copy_entry(tmp_path, "mnist-pgd")
    monkeypatch.setattr(audit, "available_points", lambda *a, **k: 300)
    res = audit_record(record, sample=2, seed=0, sandbox="none", square_queries=0)
    assert res.problems == [
        "n_examples: only the first 300 of the record's 500 points are available here, so the other 200 cannot be "
        "checked; pass --data-dir with the full mnist test set (the samples below are drawn from the available points)"]
    assert max(res.clean_checked + res.attack_checked) < 300


def test_a_malformed_worker_result_is_one_line(tmp_path):
    """The worker ran a stranger's model: its result file is data, checked before it is believed."""
    path = tmp_path / "audit.npz"
    good = {"labels": np.zeros(10, np.int64), "n_available": np.asarray(10), "clean_pred": np.zeros(2, np.int64),
            "clean_margin": np.zeros(2, np.float32), "broken_by": np.asarray(["", "square"]),
            "meta": np.asarray(json.dumps({"methods": [], "flops": None, "randomized": None, "zero_gradient": 0,
                                           "eot_iter": 1, "skipped": {}}))}
    np.savez(path, **good)
    assert audit._read_recomputed(path, 2, 2, {})["broken_by"].tolist() == ["", "square"]
    for change in ({"broken_by": np.asarray(["", "fab\x1b"])}, {"clean_pred": np.zeros(3, np.int64)},
                   {"meta": np.asarray(json.dumps({"methods": ["ibp"]}))}, {"meta": np.asarray([1, 2])},
                   {"meta": np.asarray(json.dumps({"methods": [], "flops": {"params": -1}, "randomized": None,
                                                   "zero_gradient": 0, "eot_iter": 1}))}):
        np.savez(path, **(good | change))
        with pytest.raises(HarnessError) as e:
            audit._read_recomputed(path, 2, 2, {})
        assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_a_random_forward_pass_contradicts_the_record():
    """The randomized probe: a record evaluated with the standard version, whose diagnostics call the model
    deterministic, fails on both counts when repeated forward passes disagree."""
    rec = read_record(REPO / "leaderboard" / "results" / "mnist-pgd.json", examples=False)
    res = audit.AuditResult(REPO, rec.submission_id, 0, max_broken_fraction=0.05)
    out = {"broken_by": np.array(["", ""], dtype=object), "zero_gradient": 0,
           "randomized": {"randomized": True, "max_diff": 0.3, "prediction_changes": 1}}
    audit._check_reattack(res, rec, np.array([0, 1]), np.arange(500), out, 435, 5 / 435)
    assert [p.split(":")[0] for p in res.problems] == ["autoattack.version", "diagnostics.randomized"]
    assert res.randomized is True and "forward pass random" in res.summary()
