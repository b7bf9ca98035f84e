"""`harness audit RECORD`: the project's own records pass; hand-edited ones fail, naming the examples."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from harness.audit import audit_record, plan_sample, reattack_verdict
from harness.cli import main
from harness.errors import HarnessError
from harness.stats import clopper_pearson


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
    after = rec["autoattack"]["accuracy_after"]
    for a in after:
        after[a] = rec["clean_accuracy"] if a == "clean" else max(min(after[a], rec["clean_accuracy"]),
                                                                  rec["robust_accuracy"])
    after[list(after)[-1]] = rec["robust_accuracy"]
    record.write_text(json.dumps(rec))
    return arrays


def test_an_honest_robust_record_passes(capsys):
    """mnist-pgd's record as shipped (500 points, 87% robust): 4 clean points and 4 claimed-robust
    points re-attacked with APGD-CE and APGD-T under another seed."""
    assert main(["audit", str(REPO / "leaderboard" / "results" / "mnist-pgd.json"), "--sample", "4", "--seed", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "clean re-run on 4 points, 0 disagree" in out
    assert ("on 4 points claimed robust, 0 broken (95% lower bound of the broken fraction 0.0%, tolerance 2%); "
            "passed") in out


def test_flipped_clean_flags_are_named(tmp_path, capsys):
    record = copy_entry(tmp_path)
    with np.load(REPO / "leaderboard" / "results" / "mnist-standard.examples.npz") as z:
        wrong = np.nonzero(~z["clean_correct"])[0][:2]
    assert wrong.size == 2
    edit_examples(record, clean_correct=(wrong, True))
    res = audit_record(record, sample=500, seed=0)  # every point re-classified
    assert res.clean_disagree == wrong.tolist() and not res.clean_ambiguous
    assert len(res.problems) == 1 and f"indices {wrong[0]}, {wrong[1]} " in res.problems[0]
    assert main(["audit", str(record), "--sample", "500", "--seed", "0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("problem: clean_correct:") and "Traceback" not in err


def test_flipped_robust_flags_are_named(tmp_path):
    record = copy_entry(tmp_path)
    flip = np.array([5, 6, 7])
    edit_examples(record, autoattack_robust=(flip, True))
    res = audit_record(record, sample=4, seed=1)
    assert sorted(res.broken) == flip.tolist() and set(res.broken.values()) == {"apgd-ce"}
    assert res.problems == [
        "autoattack_robust: 3 of 3 sampled points the record claims robust were broken at indices 5, 6, 7 "
        "(by apgd-ce; seed 1); at 95% confidence more than 2% of its robust points are not robust (lower bound 36.8%)"]


def test_the_re_attack_tolerance_is_a_confidence_bound(tmp_path):
    """One broken point among 16 claimed robust is within AutoAttack's own variance: listed, tolerated."""
    record = copy_entry(tmp_path, "mnist-pgd")
    with np.load(record.with_name("mnist-pgd.examples.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    flip = int(np.nonzero(arrays["clean_correct"] & ~arrays["autoattack_robust"])[0][0])
    arrays["autoattack_robust"][flip] = True
    edit_examples(record, autoattack_robust=([flip], True))
    seed = next(s for s in range(1000) if flip in plan_sample(arrays, 500, 16, s)[1])  # a sample that holds it
    res = audit_record(record, sample=16, seed=seed)
    assert res.attack_checked and flip in res.attack_checked and list(res.broken) == [flip]
    assert res.ok and f"(indices {flip})" in res.summary()
    assert res.broken_lower_bound == pytest.approx(reattack_verdict(1, 16, 0.02)[0])


@pytest.mark.parametrize("k,n,lower", [(4, 4, 0.4729), (3, 3, 0.3684), (1, 64, 0.0008), (4, 200, 0.0069),
                                        (5, 64, 0.0313), (0, 64, 0.0)])
def test_reattack_verdict(k, n, lower):
    """Lower bound = 0.05-quantile of Beta(k, n - k + 1) (hand-checked: k = n gives 0.05 ** (1 / n))."""
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
    res = audit_record(record, sample=4, seed=0)
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
    arrays = {"index": np.arange(n), "autoattack_robust": np.arange(n) % 10 == 0}
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


def test_the_model_runs_only_in_the_sandboxed_worker(tmp_path, monkeypatch):
    """The audit's model work (harness.audit.recompute) happens in the worker process: made to fail
    in this process, the audit still runs, and gives the in-process result."""
    import harness.audit as audit

    record = copy_entry(tmp_path, "mnist-pgd")
    local = audit_record(record, sample=2, seed=5, sandbox="none")

    def here(*args, **kwargs):
        raise AssertionError("the model was loaded in the auditing process")

    monkeypatch.setattr(audit, "recompute", here)
    res = audit_record(record, sample=2, seed=5)
    assert res.ok and res.clean_checked == local.clean_checked and res.attack_checked == local.attack_checked
    assert res.broken == local.broken and res.clean_disagree == local.clean_disagree
    with pytest.raises(AssertionError, match="loaded in the auditing process"):
        audit_record(record, sample=2, seed=5, sandbox="none")
