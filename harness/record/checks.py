"""The record's invariants: accuracies as k/n inside their intervals, the sandwich, and that a record belongs to
its submission (one check of each)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.certifiers import registry as certifiers
from harness.core.errors import HarnessError
from harness.data import registry as datasets
from harness.record.schema import ResultRecord
from harness.record.write import record_paths

if TYPE_CHECKING:
    from harness.submission.load import LoadedSubmission


# ---------------------------------------------------------------------------------------------
def _k_of(acc: float, n: int) -> int | None:
    """k if ``acc`` is k/n for an integer k (to float precision), else None."""
    k = round(acc * n)
    return k if abs(acc * n - k) <= 1e-6 * max(1.0, n) else None


def _accuracy_problems(field: str, acc: float | None, ci: tuple[float, float] | None, n: int,
                       ci_field: str | None = None) -> list[tuple[str, str]]:
    from harness.core.stats import clopper_pearson

    ci_field = ci_field or f"{field}_ci95"
    if acc is None:
        return [(ci_field, "given without its accuracy")] if ci is not None else []
    if ci is None:
        return [(ci_field, f"missing: {field} comes with its 95% interval")]
    lo, hi = ci
    if not lo <= hi:
        return [(ci_field, f"inverted interval [{lo}, {hi}]")]
    if not lo <= acc <= hi:
        return [(ci_field, f"[{lo}, {hi}] does not contain {field} = {acc}")]
    k = _k_of(acc, n)
    if k is None:
        return [(field, f"{acc} is not a count out of n_examples = {n}")]
    want = clopper_pearson(k, n)
    if abs(want[0] - lo) > 1e-6 or abs(want[1] - hi) > 1e-6:
        return [(ci_field, f"[{lo:.6g}, {hi:.6g}] is not the 95% Clopper-Pearson interval of {k}/{n} "
                           f"[{want[0]:.6g}, {want[1]:.6g}]")]
    return []


def record_problems(rec: ResultRecord) -> list[tuple[str, str]]:
    """Every broken invariant of a schema-valid record, as (field, message)."""
    n = rec.n_examples
    out: list[tuple[str, str]] = []
    ds = datasets.find(rec.dataset)
    if ds is not None and ds.n_test is not None and n > ds.n_test:
        out.append(("n_examples", f"{n} exceeds the {ds.n_test} points of the {ds.title} test set"))
    if len(set(rec.stages)) != len(rec.stages):
        out.append(("stages", "lists a stage twice"))
    out += _accuracy_problems("clean_accuracy", rec.clean_accuracy, rec.clean_accuracy_ci95, n)
    out += _accuracy_problems("robust_accuracy", rec.robust_accuracy, rec.robust_accuracy_ci95, n)
    clean, robust = rec.clean_accuracy, rec.robust_accuracy
    if clean is not None and robust is not None and robust > clean:
        out.append(("robust_accuracy", f"{robust} exceeds clean_accuracy {clean}"))
    if (rec.autoattack is None) != (robust is None):
        out.append(("autoattack", "robust_accuracy and autoattack must be given together"))
    if rec.autoattack is not None and robust is not None:
        aa = rec.autoattack
        after = list(aa.accuracy_after.items())
        if not after:
            out.append(("autoattack.accuracy_after", "is empty"))
        else:
            for name, v in after:
                if _k_of(v, n) is None:
                    out.append((f"autoattack.accuracy_after.{name}", f"{v} is not a count out of n_examples = {n}"))
            if any(b[1] > a[1] for a, b in zip(after, after[1:], strict=False)):
                out.append(("autoattack.accuracy_after", "rises from one attack to the next (each attack can only "
                                                        "lower robust accuracy)"))
            if abs(after[-1][1] - robust) > 1e-9:
                out.append(("robust_accuracy", f"{robust} differs from the accuracy after the last attack "
                                               f"({after[-1][0]}: {after[-1][1]})"))
            if clean is not None and "clean" in aa.accuracy_after and abs(aa.accuracy_after["clean"] - clean) > 1e-9:
                out.append(("autoattack.accuracy_after.clean", f"{aa.accuracy_after['clean']} differs from "
                                                              f"clean_accuracy {clean}"))
        if aa.n_attacked + aa.n_skipped_misclassified + aa.n_skipped_certified != n:
            out.append(("autoattack.n_attacked", "attacked + skipped (misclassified, certified) must equal "
                                                 f"n_examples = {n}"))
    for key, c in (rec.certified or {}).items():
        f = f"certified.{key}"
        if c.method != key:
            out.append((f"{f}.method", f"{c.method[:40]!r} differs from its key"))
        if c.method not in certifiers.names():
            out.append((f"{f}.method", f"unknown method; one of {', '.join(certifiers.names())}"))
        elif c.probabilistic != (not certifiers.is_sound(c.method)):
            out.append((f"{f}.probabilistic", f"must be {str(not c.probabilistic).lower()} for {c.method} "
                                              "(only probabilistic certifiers, e.g. smoothing, are)"))
        if abs(c.eps - rec.threat_model.eps) > 1e-9 * max(1.0, rec.threat_model.eps):
            out.append((f"{f}.eps", f"{c.eps} differs from threat_model.eps {rec.threat_model.eps}"))
        out += _accuracy_problems(f"{f}.certified_accuracy", c.certified_accuracy, c.certified_accuracy_ci95, n,
                                  f"{f}.certified_accuracy_ci95")
        if "verified" in (c.details or {}):  # a verdict per example (the complete certifier)
            out += verdict_problems(key, c, n)
        if not c.probabilistic:
            if robust is not None and c.certified_accuracy > robust:
                out.append((f"{f}.certified_accuracy", f"{c.certified_accuracy} exceeds robust_accuracy {robust}"))
            if clean is not None and c.certified_accuracy > clean:
                out.append((f"{f}.certified_accuracy", f"{c.certified_accuracy} exceeds clean_accuracy {clean}"))
    if rec.training_flops is not None and rec.training_flops.source != "unknown" and rec.training_flops.value is None:
        out.append(("training_flops.value", f"missing for source {rec.training_flops.source!r}"))
    return out


def verdict_problems(name: str, c, n: int, arrays: dict | None = None) -> list[tuple[str, str]]:
    """What is inconsistent in a verdict certifier's record entry ``c`` (``certified.<name>``, the
    complete certifier) and, when given, its per-example arrays: verified + falsified + unknown = n,
    verified / n = certified_accuracy, ``exact_robust_accuracy`` given exactly when nothing is unknown
    (and then equal to it), ``verdict_<name>`` agreeing with ``certified_<name>``, ``falsified_<name>``
    and the counts, and ``robust_upper_bound`` = the fraction correct, not falsified and not broken by
    AutoAttack."""
    out = []
    d = c.details or {}
    f = f"certified.{name}.details"
    counts = [d.get(k) for k in ("verified", "falsified", "unknown")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
        return [(f, "verified, falsified and unknown must be counts")]
    verified, falsified, unknown = counts
    if verified + falsified + unknown != n:
        out.append((f, f"verified + falsified + unknown = {verified + falsified + unknown}, not n_examples = {n}"))
    if abs(verified / max(n, 1) - c.certified_accuracy) > 1e-9:
        out.append((f"{f}.verified", f"{verified} of {n} differs from certified_accuracy {c.certified_accuracy}"))
    exact = d.get("exact_robust_accuracy")
    if (exact is None) != (unknown > 0):
        out.append((f"{f}.exact_robust_accuracy", "is given exactly when nothing is unknown"))
    elif exact is not None and (not isinstance(exact, (int, float)) or abs(exact - c.certified_accuracy) > 1e-9):
        out.append((f"{f}.exact_robust_accuracy", f"{exact} differs from certified_accuracy {c.certified_accuracy}"))
    if arrays is not None:
        v = arrays.get(f"verdict_{name}")
        fa = arrays.get(f"falsified_{name}")
        cert = arrays.get(f"certified_{name}")
        if v is None or fa is None or cert is None or v.shape != (n,) or fa.shape != (n,):
            return out + [("examples_file", f"lacks verdict_{name} or falsified_{name} of {n} examples")]
        if not np.array_equal(v == 1, cert.astype(bool)) or not np.array_equal(v == 2, fa.astype(bool)):
            out.append(("examples_file", f"verdict_{name} disagrees with certified_{name} / falsified_{name}"))
        if [int((v == k).sum()) for k in (1, 2, 0)] != counts:
            out.append((f, f"the counts differ from verdict_{name}"))
        correct = arrays.get("clean_correct")
        upper = d.get("robust_upper_bound")
        if upper is not None and correct is not None:
            survives = correct.astype(bool) & ~fa.astype(bool)
            if (aa := arrays.get("autoattack_robust")) is not None:
                survives &= aa.astype(bool)
            if not isinstance(upper, (int, float)) or abs(float(upper) - float(survives.mean())) > 1e-9:
                out.append((f"{f}.robust_upper_bound", f"{upper} differs from the fraction {float(survives.mean())} "
                            "of examples correct, not falsified and not broken by AutoAttack"))
    return out


def submission_hash_problem(rec: ResultRecord, sub: "LoadedSubmission") -> str | None:
    """Why the record was not made from this submission's result-relevant fields, or None.

    ``provenance.results_sha256`` must equal the hash of the submission's result-relevant fields now
    (:func:`harness.submission.results_sha256`), so that a metadata-only edit (a name, the licence,
    the paper, notes) keeps the record valid. A record made before that field existed is tied by
    ``provenance.submission_sha256``: the file must be byte for byte the one evaluated."""
    prov = rec.provenance
    yaml = sub.yaml_path.name
    if prov.results_sha256 is not None:
        if prov.results_sha256 != sub.results_sha256:
            return (f"provenance.results_sha256: results hash mismatch: the record was made from a submission whose "
                    f"result-relevant fields hash to {prov.results_sha256}, but those of {yaml} now hash to "
                    f"{sub.results_sha256}; a field that changes results (model, checkpoint, preprocessing, data set, "
                    "threat model, training, evaluation) was edited after the evaluation, re-run `harness eval` on it")
        return None
    if prov.submission_sha256 != sub.yaml_sha256:
        return (f"provenance.submission_sha256: submission hash mismatch: the record (made before results_sha256) was "
                f"made from a {yaml} with sha256 {prov.submission_sha256}, but {sub.yaml_path} has sha256 "
                f"{sub.yaml_sha256}; the submission changed after the evaluation, re-run `harness eval` on it "
                "(if only names or notes changed: restore the file, run scripts/migrate_records.py, then edit it)")
    return None


def check_against_submission(rec: ResultRecord, path: Path, sub: "LoadedSubmission") -> None:
    """The record belongs to this submission: same id, the result-relevant fields of the submission
    as evaluated (:func:`submission_hash_problem`), same data set, threat model and eps; its examples
    file is ``<id>.examples.npz``; and ``provenance.files_sha256`` is the digest of the folder as it
    is now (every file of the submission hashed again: :func:`harness.submission.manifest.verify_files`)."""
    from harness.submission.load import verify_files
    from harness.submission.manifest import legacy_digest

    where = f"{path}: invalid result record"
    spec = sub.spec
    if rec.submission_id != spec.id:
        raise HarnessError(f"{where}: submission_id: {rec.submission_id!r} differs from the submission's id "
                           f"{spec.id!r}")
    if (why := submission_hash_problem(rec, sub)) is not None:
        raise HarnessError(f"{path}: {why}")
    if rec.dataset != spec.dataset:
        raise HarnessError(f"{where}: dataset: {rec.dataset!r} differs from the submission's {spec.dataset!r}")
    if rec.threat_model.norm != spec.threat_model.norm:
        raise HarnessError(f"{where}: threat_model.norm: {rec.threat_model.norm!r} differs from the submission's "
                           f"{spec.threat_model.norm!r}")
    if abs(rec.threat_model.eps - spec.threat_model.eps) > 1e-12 * max(1.0, spec.threat_model.eps):
        raise HarnessError(f"{where}: threat_model.eps: {rec.threat_model.eps} differs from the submission's "
                           f"{spec.threat_model.eps}")
    want_npz = record_paths(Path(path))[1].name
    if rec.examples_file is not None and rec.examples_file != want_npz:
        raise HarnessError(f"{where}: examples_file: {rec.examples_file!r} must be {want_npz!r}")
    if rec.provenance.files_sha256 is None:
        raise HarnessError(f"{where}: provenance.files_sha256: missing (the record predates the file manifest); "
                           "re-run `harness eval` on the submission")
    try:
        digest = verify_files(sub)
    except HarnessError as e:
        raise HarnessError(f"{path}: the submission's files do not match their hashes: {e}")
    # a record from before results_sha256 (tied by the file's own hash above) may hold the old digest
    legacy = legacy_digest(sub) if rec.provenance.results_sha256 is None else None
    if rec.provenance.files_sha256 not in (digest, legacy):
        raise HarnessError(f"{where}: provenance.files_sha256: {rec.provenance.files_sha256} differs from the "
                           f"digest of {sub.folder.name}/ now ({digest}); a file changed after the evaluation, "
                           "re-run `harness eval` on it")
