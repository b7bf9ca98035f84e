"""``harness audit RECORD``: re-check a result record against its model, so a record cannot be forged.

A record and its ``.examples.npz`` are data that a pull request can edit by hand. The audit
trusts none of it:

1. **Provenance hashes.** The record's ``checkpoint_sha256`` and ``submission_sha256`` must be the
   SHA-256 of the checkpoint file and of ``submission.yaml`` (:func:`check_provenance_hashes`).
2. **Clean accuracy, per example.** A random sample of the recorded points is classified again and
   compared, example by example, with ``clean_correct`` in the npz. The only disagreement
   tolerated is on a point whose top two logits are within :data:`CLEAN_MARGIN_RTOL` (relative) of
   each other, where another device or BLAS may legitimately flip the arg-max; those are listed as
   ambiguous, never silently passed.
3. **Re-attack.** A random sample of the points the record claims robust is attacked again with
   APGD-CE and APGD-T (``pyautoattack``, AutoAttack's standard settings: 100 iterations, 1 restart,
   9 target classes), at the record's ε and norm, with a seed the *checker* picks (a fresh random
   one unless ``--seed`` is given, printed so the run can be repeated). Every break is verified
   here independently (perturbation within ε, image in [0, 1], the model's own prediction wrong).
   AutoAttack already ran those two attacks (with the record's seed) plus FAB-T and Square, so an
   honest record loses only the odd point to another random start (on this project's records, 0 of
   200 sampled robust points for the PGD- and IBP-trained MNIST models, 4 of 200 for the RS-FGSM one,
   whose gradients are the least informative). The audit therefore fails when the sample shows,
   with 95% confidence, that more than ``max_broken_fraction`` (default 2%) of the claimed-robust
   points can be broken: when the one-sided 95% Clopper-Pearson lower bound of the broken fraction
   exceeds it. Four flipped flags out of four sampled fail (lower bound 47%); one broken point in
   64 does not (0.08%). Broken points are always listed by example index, failing or not.

The model work is one function with explicit inputs, :func:`recompute`, and it runs in the
sandboxed evaluation worker like the evaluation itself (:func:`recompute_sandboxed`: a worker job of
kind ``audit``, with the submission's limits and no network): auditing a stranger's record never
runs their model in this process.
"""
from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HarnessError
from .files import sha256_file
from .stats import clopper_pearson

#: a clean disagreement is excused only when (top1 - top2) <= CLEAN_MARGIN_RTOL * max(1, |top1|)
CLEAN_MARGIN_RTOL = 1e-3
DEFAULT_SAMPLE = 64
DEFAULT_MAX_BROKEN_FRACTION = 0.02
REQUIRED_ARRAYS = ("index", "label", "clean_correct", "autoattack_robust")


@dataclass
class AuditResult:
    record_path: Path
    submission_id: str
    seed: int
    clean_checked: list[int] = field(default_factory=list)  # dataset indices
    attack_checked: list[int] = field(default_factory=list)
    clean_disagree: list[int] = field(default_factory=list)
    clean_ambiguous: list[int] = field(default_factory=list)
    broken: dict[int, str] = field(default_factory=dict)  # dataset index -> attack that broke it
    max_broken_fraction: float = DEFAULT_MAX_BROKEN_FRACTION
    broken_lower_bound: float = 0.0  # one-sided 95% Clopper-Pearson lower bound of the broken fraction
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    eps: float = 0.0
    norm: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"audit of {self.submission_id} (seed {self.seed}): clean re-run on {len(self.clean_checked)} points, "
                f"{len(self.clean_disagree)} disagree"
                + (f" ({len(self.clean_ambiguous)} more within the numerical margin)" if self.clean_ambiguous else "")
                + f"; APGD-CE + APGD-T at {self.norm} eps={self.eps:g} on {len(self.attack_checked)} points claimed "
                f"robust, {len(self.broken)} broken"
                + (f" (indices {_short(sorted(self.broken))})" if self.broken else "")
                + f" (95% lower bound of the broken fraction {100 * self.broken_lower_bound:.1f}%, "
                f"tolerance {100 * self.max_broken_fraction:g}%); "
                + ("passed" if self.ok else f"FAILED ({len(self.problems)} problem(s))"))


def _short(indices: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def check_provenance_hashes(record, sub) -> list[str]:
    """The two provenance hashes against the files, named field by field (the folder digest,
    ``provenance.files_sha256``, is checked by :func:`harness.record.check_against_submission`)."""
    problems = []
    ck = sub.spec.model.checkpoint
    from .record import submission_hash_problem  # results_sha256 (a metadata edit keeps the record)

    if (why := submission_hash_problem(record, sub)) is not None:
        problems.append(why)
    if record.provenance.checkpoint_sha256 != ck.sha256:
        problems.append(f"provenance.checkpoint_sha256: the record was made with checkpoint sha256 "
                        f"{record.provenance.checkpoint_sha256}, but the submission declares {ck.sha256}")
    try:
        path = sub.checkpoint_path()
        actual = sha256_file(path) if path.is_file() else None
    except HarnessError as e:
        problems.append(str(e))
    else:
        if actual is None:
            problems.append(f"model.checkpoint: file not found: {path}")
        elif actual != record.provenance.checkpoint_sha256:
            problems.append(f"provenance.checkpoint_sha256: the checkpoint file has sha256 {actual}, "
                            f"the record says {record.provenance.checkpoint_sha256}")
    return problems


def load_examples(rec, record_path: Path) -> dict[str, np.ndarray]:
    """The record's per-example arrays, read and checked against its summary by
    :func:`harness.record.read_examples`; the audit needs AutoAttack's flags and the first N points."""
    from .record import read_examples

    arrays = read_examples(rec, record_path)
    npz_path = record_path.with_name(rec.examples_file or "")
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise HarnessError(f"{npz_path}: missing arrays {', '.join(missing)} (an AutoAttack record is needed)")
    idx = arrays["index"]
    if not np.issubdtype(idx.dtype, np.integer) or not np.array_equal(idx, np.arange(rec.n_examples)):
        raise HarnessError(f"{npz_path}: index must be 0..{rec.n_examples - 1} (the first N test points in order)")
    return arrays


def plan_sample(arrays: dict[str, np.ndarray], n_available: int, sample: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions to re-classify and positions (claimed robust) to re-attack, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    pool = np.arange(min(n_available, len(arrays["index"])))
    clean_pos = np.sort(rng.choice(pool, size=min(sample, pool.size), replace=False)) if pool.size else pool
    robust_pool = pool[arrays["autoattack_robust"][pool].astype(bool)]
    attack_pos = (np.sort(rng.choice(robust_pool, size=min(sample, robust_pool.size), replace=False))
                  if robust_pool.size else robust_pool)
    return clean_pos, attack_pos


def recompute(submission_path: str | Path, clean_pos: np.ndarray, attack_pos: np.ndarray, *, eps: float, norm: str,
              seed: int, device: str = "cpu", batch_size: int = 100, data_dir: str | Path | None = None,
              eot_iter: int = 1, progress: bool = False, trust_code: bool = False,
              max_model_bytes: int | None = None) -> dict[str, Any]:
    """All the model work of the audit, with explicit inputs and plain array outputs.

    Loads the submission's model (hash-checked, safely), classifies the points at ``clean_pos``
    (positions in the test set) and attacks those at ``attack_pos`` with APGD-CE then APGD-T.
    Returns ``labels``, ``clean_pred``, ``clean_margin`` (for clean_pos) and ``broken_by``
    (for attack_pos: "" if it survived, else the attack that broke it, verified here).
    """
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    from .data import load_test_data, num_classes_of
    from .models import load_model, resolve_device
    from .submission import load_submission

    sub = load_submission(submission_path)
    spec = sub.spec
    data = load_test_data(spec.dataset, None, data_dir=data_dir, custom_path=sub.dataset_path(),
                          preprocessing=spec.resize_crop)
    num_classes = num_classes_of(data)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=dev,
                       trust_code=trust_code, max_model_bytes=max_model_bytes)
    net = model.module
    clean_pos, attack_pos = np.asarray(clean_pos, dtype=np.int64), np.asarray(attack_pos, dtype=np.int64)

    preds, margins = [], []
    with torch.no_grad():
        for i in range(0, clean_pos.size, batch_size):
            logits = net(data.floats(clean_pos[i:i + batch_size], dev)).float()
            top = logits.topk(2, dim=1).values
            preds.append(logits.argmax(1).cpu())
            margins.append(((top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp_min(1.0)).cpu())
    clean_pred = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
    clean_margin = torch.cat(margins).numpy() if margins else np.zeros(0, np.float32)

    broken_by = np.array([""] * attack_pos.size, dtype=object)
    if attack_pos.size:
        x = data.floats(attack_pos, dev)
        y = data.labels(attack_pos, dev)
        alive = torch.ones(attack_pos.size, dtype=torch.bool)
        with torch.no_grad():
            wrong = (net(x).argmax(1) != y).cpu()
        broken_by[wrong.numpy()] = "clean"
        alive &= ~wrong
        attacks = [
            ("apgd-ce", APGDAttack(net, n_iter=100, norm=norm, n_restarts=1, eps=eps, seed=seed, loss="ce",
                                   eot_iter=eot_iter, rho=.75, device=dev)),
            ("apgd-t", APGDAttack_targeted(net, n_iter=100, norm=norm, n_restarts=1, eps=eps, seed=seed,
                                           eot_iter=eot_iter, rho=.75, device=dev,
                                           n_target_classes=max(1, min(9, num_classes - 1)))),
        ]
        from tqdm.auto import tqdm

        for name, attack in tqdm(attacks, desc="audit re-attack", unit="attack", disable=not progress, leave=False):
            todo = torch.nonzero(alive).flatten()
            if todo.numel() == 0:
                break
            for b in range(0, todo.numel(), batch_size):
                sel = todo[b:b + batch_size]
                xs, ys = x[sel.to(dev)], y[sel.to(dev)]
                x_adv = attack.perturb(xs, ys).detach()
                delta = (x_adv - xs).flatten(1)
                dist = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
                with torch.no_grad():
                    fooled = net(x_adv).argmax(1) != ys
                valid = (dist <= eps * (1 + 1e-5) + 1e-7) & (x_adv.min() >= 0) & (x_adv.max() <= 1)
                hit = (fooled & valid).cpu()
                for j in torch.nonzero(hit).flatten().tolist():
                    k = int(sel[j])
                    alive[k] = False
                    broken_by[k] = name
    return {
        "labels": data.y.numpy(),
        "n_available": len(data),
        "clean_pred": clean_pred,
        "clean_margin": clean_margin,
        "broken_by": broken_by,
    }


def recompute_sandboxed(submission_path: str | Path, clean_pos: np.ndarray, attack_pos: np.ndarray, *, eps: float,
                        norm: str, seed: int, device: str = "cpu", batch_size: int = 100,
                        data_dir: str | Path | None = None, eot_iter: int = 1, progress: bool = False,
                        sandbox: str = "worker") -> dict[str, Any]:
    """:func:`recompute` in the sandboxed evaluation worker (``sandbox`` "worker" or "bwrap"; "none"
    runs it in this process, for trusted models only). Its outputs come back through a file the
    worker writes, read here as untrusted data (no pickles, shapes checked)."""
    import shutil
    import tempfile

    from .models import resolve_device
    from .pipeline import resolve_limits
    from .sandbox import run_worker
    from .stages import EvalOptions
    from .submission import load_submission
    from .worker import WorkerJob

    clean_pos, attack_pos = np.asarray(clean_pos, dtype=np.int64), np.asarray(attack_pos, dtype=np.int64)
    if sandbox == "none":
        return recompute(submission_path, clean_pos, attack_pos, eps=eps, norm=norm, seed=seed, device=device,
                         batch_size=batch_size, data_dir=data_dir, eot_iter=eot_iter, progress=progress)
    sub = load_submission(submission_path)
    dev = resolve_device(device)
    limits = resolve_limits(sub, EvalOptions())
    work = Path(tempfile.mkdtemp(prefix="harness-audit-"))
    try:
        job = WorkerJob(
            submission=str(sub.yaml_path), submission_sha256=sub.yaml_sha256, state_dir=str(work), stages=[],
            device=str(dev), n_examples=0, batch_size=int(batch_size),
            data_dir=str(Path(data_dir).resolve()) if data_dir else None, progress=progress,
            memory_limit=limits["memory"], cpu_limit=limits["cpu"], isolate_network=sandbox != "bwrap",
            parent_pid=None if sandbox == "bwrap" else os.getpid(), max_model_bytes=limits["memory"], kind="audit",
            audit={"clean_pos": clean_pos.tolist(), "attack_pos": attack_pos.tolist(), "eps": float(eps),
                   "norm": norm, "seed": int(seed), "eot_iter": int(eot_iter)})
        read_only = [sub.folder, sub.checkpoint_path().parent] + ([Path(data_dir).resolve()] if data_dir else [])
        run_worker(job, mode=sandbox, stage_timeout=limits["stage_timeout"],
                   watch_memory=limits["memory"] if dev.type == "cuda" else None, read_only=read_only,
                   echo=lambda line: None)
        return _read_recomputed(work / "audit.npz", clean_pos.size, attack_pos.size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_recomputed(path: Path, n_clean: int, n_attack: int) -> dict[str, Any]:
    """The worker's audit results, checked (written by a process that ran a stranger's model)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        labels, n_avail = out["labels"], int(out["n_available"])
        pred, margin, broken = out["clean_pred"], out["clean_margin"], out["broken_by"]
        ok = (labels.ndim == 1 and labels.dtype.kind in "iu" and labels.size == n_avail
              and pred.shape == (n_clean,) and pred.dtype.kind in "iu" and margin.shape == (n_clean,)
              and margin.dtype.kind == "f" and broken.shape == (n_attack,) and broken.dtype.kind == "U"
              and set(broken.tolist()) <= {"", "clean", "apgd-ce", "apgd-t"})
        if not ok:
            raise ValueError("unexpected shapes or values")
    except Exception as e:  # noqa: BLE001 - any malformed result is one error line
        raise HarnessError(f"the audit worker's result {path.name} is malformed ({type(e).__name__}: {str(e)[:120]})")
    return {"labels": labels, "n_available": n_avail, "clean_pred": pred, "clean_margin": margin,
            "broken_by": np.array(broken.tolist(), dtype=object)}


def reattack_verdict(n_broken: int, n_sampled: int, max_broken_fraction: float) -> tuple[float, bool]:
    """(one-sided 95% Clopper-Pearson lower bound of the broken fraction, whether the audit fails)."""
    if n_sampled == 0:
        return 0.0, False
    lower = clopper_pearson(n_broken, n_sampled, confidence=0.90)[0]  # lower end of the two-sided 90% interval
    return lower, lower > max_broken_fraction


def _find_submission(record_path: Path, submission_id: str) -> Path:
    results = record_path.resolve().parent
    if results.name == "results" and results.parent.name == "leaderboard":
        return results.parent.parent / "submissions" / submission_id / "submission.yaml"
    raise HarnessError(f"{record_path}: not under leaderboard/results/; pass --submission "
                       "submissions/<id>/submission.yaml")


def available_points(dataset: str, data_dir=None, custom_path=None) -> int:
    from .data import load_test_data

    return len(load_test_data(dataset, None, data_dir=data_dir, custom_path=custom_path))


def audit_record(record_path: str | Path, *, submission: str | Path | None = None, sample: int = DEFAULT_SAMPLE,
                 seed: int | None = None, device: str = "cpu", data_dir: str | Path | None = None,
                 batch_size: int | None = None, max_broken_fraction: float = DEFAULT_MAX_BROKEN_FRACTION,
                 progress: bool = False, sandbox: str = "worker") -> AuditResult:
    """Audit one record; problems (one line each) are in the result, bad inputs raise HarnessError.
    The model runs in the sandboxed worker (``sandbox``: "worker", "bwrap"; "none" only for trusted
    models)."""
    from .record import check_against_submission, read_record
    from .submission import parse_submission

    t0 = time.perf_counter()
    record_path = Path(record_path)
    if sample < 1:
        raise HarnessError("--sample must be at least 1")
    if not 0 <= max_broken_fraction < 1:
        raise HarnessError("--max-broken-fraction must be in [0, 1)")
    rec = read_record(record_path, examples=False)  # every invariant; the examples are read below
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    res = AuditResult(record_path, rec.submission_id, seed, eps=float(rec.threat_model.eps), norm=rec.threat_model.norm)
    yaml_path = Path(submission) if submission is not None else _find_submission(record_path, rec.submission_id)
    sub, problems = parse_submission(yaml_path)
    if sub is None or problems:
        raise HarnessError(f"{yaml_path}: {problems[0] if problems else 'invalid'} (run `harness validate "
                           f"{yaml_path}`)")
    if sub.spec.id != rec.submission_id:
        res.problems.append(f"submission_id: the record is for {rec.submission_id!r}, the submission is "
                            f"{sub.spec.id!r}")
    if (rec.dataset, rec.threat_model.norm) != (sub.spec.dataset, sub.spec.threat_model.norm) or \
            not math.isclose(rec.threat_model.eps, sub.spec.threat_model.eps, rel_tol=1e-9):
        res.problems.append(f"threat_model: the record is {rec.dataset} {rec.threat_model.norm} "
                            f"eps={rec.threat_model.eps:g}, "
                            f"the submission is {sub.spec.dataset} {sub.spec.threat_model.label}")
    res.problems += check_provenance_hashes(rec, sub)
    if not res.problems:
        try:
            check_against_submission(rec, record_path, sub)
        except HarnessError as e:
            res.problems.append(str(e))
    if res.problems:  # a record for other files or another threat model: re-running would prove nothing
        res.seconds = time.perf_counter() - t0
        return res
    if rec.autoattack is None or rec.robust_accuracy is None:
        raise HarnessError(f"{record_path}: the record has no AutoAttack result to audit")

    arrays = load_examples(rec, record_path)
    n_avail = available_points(sub.spec.dataset, data_dir, sub.dataset_path())
    if n_avail < rec.n_examples:
        res.notes.append(f"only the first {n_avail} of the record's {rec.n_examples} points are available here; "
                         "the sample is drawn from those")
    clean_pos, attack_pos = plan_sample(arrays, n_avail, sample, seed)
    out = recompute_sandboxed(yaml_path, clean_pos, attack_pos, eps=float(rec.threat_model.eps),
                              norm=rec.threat_model.norm, seed=seed, device=device,
                              batch_size=batch_size or min(sub.spec.evaluation.batch_size, 256), data_dir=data_dir,
                              eot_iter=20 if rec.autoattack.version == "rand" else 1, progress=progress,
                              sandbox=sandbox)

    index = arrays["index"]
    bad_labels = [int(index[p]) for p in np.union1d(clean_pos, attack_pos) if out["labels"][p] != arrays["label"][p]]
    if bad_labels:
        res.problems.append(f"label: the record's labels differ from the test set at indices {_short(bad_labels)}")
    res.clean_checked = [int(index[p]) for p in clean_pos]
    res.attack_checked = [int(index[p]) for p in attack_pos]
    recorded = arrays["clean_correct"].astype(bool)
    for p, pred, margin in zip(clean_pos, out["clean_pred"], out["clean_margin"], strict=False):
        if bool(pred == out["labels"][p]) != bool(recorded[p]):
            (res.clean_ambiguous if margin <= CLEAN_MARGIN_RTOL else res.clean_disagree).append(int(index[p]))
    if res.clean_disagree:
        res.problems.append(f"clean_correct: the model's predictions disagree with the record at indices "
                            f"{_short(res.clean_disagree)} (re-classified {len(clean_pos)} sampled points)")
    res.broken = {int(index[p]): str(b) for p, b in zip(attack_pos, out["broken_by"], strict=False) if b}
    res.max_broken_fraction = max_broken_fraction
    res.broken_lower_bound, fails = reattack_verdict(len(res.broken), int(attack_pos.size), max_broken_fraction)
    if fails:
        res.problems.append(
            f"autoattack_robust: {len(res.broken)} of {attack_pos.size} sampled points the record claims robust "
            "were broken "
            f"at indices {_short(sorted(res.broken))} (by {', '.join(sorted(set(res.broken.values())))}; seed {seed}); "
            f"at 95% confidence more than {100 * max_broken_fraction:g}% of its robust points are not robust "
            f"(lower bound {100 * res.broken_lower_bound:.1f}%)")
    res.seconds = time.perf_counter() - t0
    return res
