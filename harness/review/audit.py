"""``harness audit RECORD``: re-check what a result record claims against its model, so a record cannot be forged.

A record and its ``.examples.npz`` are data that anyone can edit by hand. The trusted GPU job runs
the audit after ``harness eval`` (maintainers can run it on a CPU), and it trusts none of it:

1. **Provenance hashes.** The record's ``checkpoint_sha256`` and ``submission_sha256`` must be the
   SHA-256 of the checkpoint file and of ``submission.yaml`` (:func:`check_provenance_hashes`), and
   its folder digest that of the submission folder.
2. **Size.** ``n_examples`` may not exceed the data set's test set (the registry's ``n_test``:
   20,000 MNIST points are refused; :func:`harness.record.record_problems` refuses it too), and
   every point the record covers must be available to the audit (``--data-dir``): a record whose
   points cannot be re-checked is not vouched for.
3. **FLOPs and parameters**, recomputed exactly with the ``flops`` stage's own counting
   (:class:`harness.stages.flops.FlopsStage`, fvcore) and compared field by field with the record
   (``params``, ``inference_flops``, ``forward_passes``, the convention, the per-operator counts,
   the skipped operators and ``training_flops``): any difference is a problem.
4. **Clean accuracy, per example.** A random sample of the points is classified again and compared,
   example by example, with ``clean_correct``. The only disagreement tolerated is on a point whose
   top two logits are within :data:`CLEAN_MARGIN_RTOL` (relative) of each other, where another
   device or BLAS may legitimately flip the arg-max; those are listed as ambiguous, never silently
   passed.
5. **Certificates, per example.** For each certifier of the record (``certified``: IBP, CROWN, ...,
   through the :mod:`harness.certifiers` registry), a random sample of the points it claims to
   certify or to give a positive radius is certified again, with the evaluation's own seed, radius
   range and batch size (so randomized smoothing draws the same noise). A claimed certificate that
   the certifier does not give is a problem, and so is a recomputed radius smaller than the
   claimed one by more than the record's radius tolerance (``certified.<m>.tolerance``, the
   bisection's resolution) plus 1e-6 (the float32 storage of radii).
6. **Re-attack.** A random sample of the points the record claims robust is attacked again with
   APGD-CE, APGD-T (100 iterations, 9 target classes) and the black-box Square attack (5,000
   queries), AutoAttack's standard settings, at the record's eps and norm, with a seed the
   *checker* picks (a fresh random one unless ``--seed`` is given; printed so the run can be
   repeated). Every break is verified here independently (perturbation within eps, image in
   [0, 1], the model's own prediction wrong). Square needs no gradient, so a model whose gradients
   are masked (a ``Round(x * 255) / 255`` in front of it) is broken by it even when APGD cannot
   move.
7. **Gradient-masking probes** on the re-attacked points (:mod:`harness.diagnostics.probes`): the
   fraction with an exactly zero input gradient, and whether repeated forward passes agree. A
   random forward pass switches the re-attack's APGD to EOT over 20 draws, as the evaluation's
   ``rand`` version does. Where the record has the diagnostics stage, its claims must agree with
   the probes: a random model the record calls deterministic (or evaluated with the ``standard``
   AutoAttack version) is a problem, and so are more zero-gradient points than the record's
   ``zero_gradient_fraction`` allows (one-sided binomial test at 5%, one point of slack for
   device round-off).

Sample sizes (the defaults of ``--sample``) follow from one requirement: **a forgery of 1% of the
examples is caught with probability at least 0.95.** A forgery of a fraction ``F`` = 1% of the N
examples falsifies ``F * N`` points; they all lie in the pool a check samples from (the points
claimed correct, certified or robust: nobody forges a point to look worse), so their fraction of a
pool of ``P`` points is ``f = F * N / P >= F``.

- *Deterministic checks* (clean re-prediction, certificate re-check): a falsified point in the
  sample is always found, so a sample of n points misses every one with probability at most
  ``(1 - f) ** n`` (drawing without replacement only lowers it). ``n = ceil(ln(0.05) / ln(1 - f))``;
  for the worst case f = 1% that is ``ceil(ln 0.05 / ln 0.99) = 299`` points
  (:func:`deterministic_sample_size`), fewer for a smaller pool (certificates).
- *The re-attack* also breaks points of honest records by chance (another random start finds what
  AutoAttack's missed): at most ``p0`` = :data:`HONEST_BREAK_RATE` (5%) of an honest record's
  robust points, the ``--max-broken-fraction`` (measured on this project's records with fresh
  seeds: 0 of 435 and 0 of 443 for the PGD- and IBP-trained MNIST models, 5 and 9 of 205, 3.4%,
  for the FGSM-trained one, whose gradients are the least informative; docs/audit.md). The
  verdict is a one-sided binomial test of ``H0: break rate <= p0``: the audit fails when the
  number of broken points ``K`` reaches the smallest ``c`` with ``P(Bin(n, p0) >= c) <= alpha`` =
  :data:`FALSE_ALARM` (5%), so an honest record fails at most 5% of the time
  (:func:`reattack_threshold`; the same as "the one-sided 95% Clopper-Pearson lower bound of K / n
  exceeds p0"). Under a forgery, a sampled point breaks with probability
  ``p1 = (1 - f) * p0 + f * q``, where ``q`` = :data:`FORGED_BREAK_PROBABILITY` (0.95) is the chance
  that the re-attack breaks a falsified point, i.e. one that AutoAttack broke (measured: 731 of 744
  re-attacks of such points broke them again, 98.3%). The sample size is the smallest n with
  ``P(Bin(n, p1) >= c(n)) >= 0.95`` (:func:`reattack_sample_size`): for the worst case f = 1%
  (every point claimed robust) n = 6,889 claimed-robust points, failing at c = 375 broken; a record
  whose robust points are a fraction r of its N points has f = 1% / r (r = 0.5: n = 1,855,
  c = 109). A pool smaller than n is re-attacked whole; the audit then prints the catch probability
  it reaches (below 0.95: a 500-point record cannot separate a 1% forgery from honest noise).

``--sample K`` overrides every sample size (K points per check, or the whole pool); the summary
always states each check's catch probability of a 1% forgery. The formulas, the numbers and the
reasoning are in ``docs/audit.md``.

The model work is one function with explicit inputs, :func:`recompute`, and it runs in the
sandboxed evaluation worker like the evaluation itself (:func:`recompute_sandboxed`: a worker job of
kind ``audit``, with the submission's limits and no network): auditing a stranger's record never
runs their model in this process. The worker's results come back as untrusted data, checked.
Every stranger string the audit prints goes through :func:`harness.core.errors.one_line`.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.core.stats import clopper_pearson

# ---------------------------------------------------------------------------------------------
# The sample-size requirement and what it assumes: the one place the defaults come from.
#: the forgery to catch: this fraction of the record's examples falsified
FORGERY_FRACTION = 0.01
#: ... caught with at least this probability
CATCH_PROBABILITY = 0.95
#: the re-attack's test: an honest record at the honest break rate fails at most this often
FALSE_ALARM = 0.05
#: p0, the largest fraction of an honest record's robust points a re-attack with a fresh seed may
#: break (the default of ``--max-broken-fraction``): above the 3.4% measured on the FGSM-trained
#: MNIST model, the noisiest of the project's records (docs/audit.md)
HONEST_BREAK_RATE = 0.05
#: q, the probability that the re-attack breaks a falsified point (one AutoAttack broke): 731 of 744
#: measured (98.3%), rounded down
FORGED_BREAK_PROBABILITY = 0.95
#: Square's query budget (AutoAttack's standard version)
SQUARE_QUERIES = 5000
#: a clean disagreement is excused only when (top1 - top2) <= CLEAN_MARGIN_RTOL * max(1, |top1|)
CLEAN_MARGIN_RTOL = 1e-3
#: absolute slack on a radius comparison (the record stores radii as float32)
RADIUS_SLACK = 1e-6
#: points whose zero gradient may be a device's round-off (the zero-gradient claim check)
ZERO_GRADIENT_SLACK = 1
REATTACKS = ("apgd-ce", "apgd-t", "square")
MAX_WORKER_META = 1 << 20


def deterministic_sample_size(forged_fraction: float = FORGERY_FRACTION,
                              catch: float = CATCH_PROBABILITY) -> int:
    """Smallest n with ``1 - (1 - f) ** n >= catch``: a deterministic check (one falsified point in
    the sample is found for sure) of n points drawn from a pool in which a fraction f is falsified."""
    f = min(1.0, float(forged_fraction))
    if not 0 < f <= 1 or not 0 < catch < 1:
        raise ValueError("forged_fraction must be in (0, 1] and catch in (0, 1)")
    if f == 1:
        return 1
    n = math.ceil(math.log(1 - catch) / math.log(1 - f))
    while n > 1 and 1 - (1 - f) ** (n - 1) >= catch:  # guard against round-off in the logs
        n -= 1
    while 1 - (1 - f) ** n < catch:
        n += 1
    return n


def deterministic_catch_probability(n: int, forged_fraction: float, pool: int | None = None) -> float:
    """Probability that n sampled points hold at least one falsified point (1 when the whole pool
    is checked)."""
    if pool is not None and n >= pool > 0:
        return 1.0
    return 1.0 - (1.0 - min(1.0, forged_fraction)) ** max(0, n)


def reattack_threshold(n: int, p0: float = HONEST_BREAK_RATE, alpha: float = FALSE_ALARM) -> int:
    """The smallest c with ``P(Bin(n, p0) >= c) <= alpha``: the audit fails when at least c of n
    re-attacked points break."""
    from scipy.stats import binom

    if n <= 0:
        return 1
    if p0 <= 0:
        return 1
    c = int(binom.isf(alpha, n, p0)) + 1
    while c > 1 and binom.sf(c - 2, n, p0) <= alpha:
        c -= 1
    while binom.sf(c - 1, n, p0) > alpha:
        c += 1
    return c


def forged_break_rate(forged_fraction: float, p0: float = HONEST_BREAK_RATE,
                      q: float = FORGED_BREAK_PROBABILITY) -> float:
    """p1: the break probability of a sampled point when a fraction f of the pool is falsified."""
    f = min(1.0, forged_fraction)
    return (1 - f) * p0 + f * q


def reattack_catch_probability(n: int, forged_fraction: float, p0: float = HONEST_BREAK_RATE,
                               alpha: float = FALSE_ALARM, q: float = FORGED_BREAK_PROBABILITY) -> float:
    """``P(Bin(n, p1) >= c(n))``: the chance that the re-attack of n points fails a record in which a
    fraction ``forged_fraction`` of the claimed-robust points is falsified."""
    from scipy.stats import binom

    if n <= 0:
        return 0.0
    c = reattack_threshold(n, p0, alpha)
    return float(binom.sf(c - 1, n, forged_break_rate(forged_fraction, p0, q)))


def reattack_sample_size(forged_fraction: float = FORGERY_FRACTION, p0: float = HONEST_BREAK_RATE,
                         alpha: float = FALSE_ALARM, q: float = FORGED_BREAK_PROBABILITY,
                         catch: float = CATCH_PROBABILITY, n_max: int = 200_000) -> int:
    """The smallest n whose re-attack catches the forgery with probability >= ``catch``."""
    from scipy.stats import binom

    p1 = forged_break_rate(forged_fraction, p0, q)
    if p1 <= p0:
        raise ValueError("a forgery the re-attack cannot break cannot be caught by it")
    ns = np.arange(1, n_max + 1)
    if p0 <= 0:
        c = np.ones_like(ns)
    else:
        c = binom.isf(alpha, ns, p0).astype(np.int64) + 1
        c = np.where((c > 1) & (binom.sf(c - 2, ns, p0) <= alpha), c - 1, c)
        c = np.where(binom.sf(c - 1, ns, p0) > alpha, c + 1, c)
    ok = np.nonzero(binom.sf(c - 1, ns, p1) >= catch)[0]
    if ok.size == 0:
        raise ValueError(f"no sample of at most {n_max} points reaches catch probability {catch}")
    for n in ns[ok]:  # confirm with the scalar threshold (the vectorised one is only a guide)
        if reattack_catch_probability(int(n), forged_fraction, p0, alpha, q) >= catch:
            return int(n)
    raise ValueError(f"no sample of at most {n_max} points reaches catch probability {catch}")


@dataclass(frozen=True)
class SampleDefaults:
    check: int  # clean re-prediction and certificate re-check, worst case f = FORGERY_FRACTION
    reattack: int  # claimed-robust points re-attacked, worst case
    reattack_threshold: int  # broken points that fail the audit at that n


@cache
def default_sample_sizes() -> SampleDefaults:
    """The worst-case (every point in the pool) sample sizes the defaults follow from."""
    n = reattack_sample_size()
    return SampleDefaults(deterministic_sample_size(), n, reattack_threshold(n))


def forged_fraction_of_pool(n_examples: int, pool: int) -> float:
    """f = F * N / P: a forgery of FORGERY_FRACTION of the N examples, all in a pool of P points."""
    return 1.0 if pool <= 0 else min(1.0, FORGERY_FRACTION * n_examples / pool)


def check_sample_size(n_examples: int, pool: int) -> int:
    """Points to draw (deterministic check) from a pool of ``pool`` of the record's N points."""
    return min(pool, deterministic_sample_size(forged_fraction_of_pool(n_examples, pool)))


def reattack_sample_size_for(n_examples: int, pool: int, p0: float = HONEST_BREAK_RATE) -> int:
    """Claimed-robust points to re-attack from a pool of ``pool`` of the record's N points."""
    if pool <= 0:
        return 0
    return min(pool, reattack_sample_size(forged_fraction_of_pool(n_examples, pool), p0))


# ---------------------------------------------------------------------------------------------
@dataclass
class CheckReport:
    """One sampled check: what was drawn from which pool, and the catch probability it reaches."""
    name: str
    pool: int
    checked: list[int] = field(default_factory=list)  # dataset indices
    failed: list[int] = field(default_factory=list)
    catch_probability: float = 0.0


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
    max_broken_fraction: float = HONEST_BREAK_RATE
    broken_lower_bound: float = 0.0  # one-sided 95% Clopper-Pearson lower bound of the broken fraction
    broken_threshold: int = 0  # broken points that fail the audit
    certified: dict[str, CheckReport] = field(default_factory=dict)  # method -> its re-check
    radius_smaller: dict[str, list[int]] = field(default_factory=dict)
    flops_checked: bool = False
    flops_differences: list[str] = field(default_factory=list)
    zero_gradient: int | None = None  # re-attacked points with an exactly zero input gradient
    randomized: bool | None = None
    square_queries: int = SQUARE_QUERIES
    catch: dict[str, float] = field(default_factory=dict)  # check -> catch probability of a 1% forgery
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    eps: float = 0.0
    norm: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(one_line(text))

    def note(self, text: str) -> None:
        self.notes.append(one_line(text))

    def summary(self) -> str:
        """One line: every check's numbers and the verdict."""
        parts = [f"audit of {self.submission_id} (seed {self.seed})"]
        if self.flops_checked:
            parts.append("FLOPs and parameters recomputed: "
                         + (f"{len(self.flops_differences)} differ" if self.flops_differences else "equal"))
        parts.append(f"clean re-run on {len(self.clean_checked)} points, {len(self.clean_disagree)} disagree"
                     + (f" ({len(self.clean_ambiguous)} more within the numerical margin)"
                        if self.clean_ambiguous else ""))
        for m, c in self.certified.items():
            parts.append(f"{m} re-certified on {len(c.checked)} of {c.pool} claimed points, {len(c.failed)} not "
                         f"certified, {len(self.radius_smaller.get(m, []))} with a smaller radius")
        if self.attack_checked or self.broken_threshold:
            parts.append(f"APGD-CE + APGD-T + Square ({self.square_queries} queries) at {self.norm} "
                         f"eps={self.eps:g} on {len(self.attack_checked)} points claimed robust, "
                         f"{len(self.broken)} broken"
                         + (f" (indices {_short(sorted(self.broken))})" if self.broken else "")
                         + f" (95% lower bound of the broken fraction {100 * self.broken_lower_bound:.1f}%, "
                         f"tolerance {100 * self.max_broken_fraction:g}%; fails at {self.broken_threshold})")
        if self.zero_gradient is not None:
            parts.append(f"probes: zero input gradient at {self.zero_gradient} of {len(self.attack_checked)} "
                         f"re-attacked points, forward pass {'random' if self.randomized else 'deterministic'}")
        if self.catch:
            parts.append("catch probability of a 1% forgery: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in self.catch.items()))
        parts.append("passed" if self.ok else f"FAILED ({len(self.problems)} problem(s))")
        return one_line("; ".join(parts), limit=20_000)


def _short(indices: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def check_provenance_hashes(record, sub) -> list[str]:
    """The two provenance hashes against the files, named field by field (the folder digest,
    ``provenance.files_sha256``, is checked by :func:`harness.record.check_against_submission`)."""
    problems = []
    ck = sub.spec.model.checkpoint
    from harness.record.checks import submission_hash_problem  # results_sha256 (a metadata edit keeps the record)

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
    :func:`harness.record.read_examples` (which requires the arrays behind every reported
    accuracy); the audit also needs them to be the first N points in order."""
    from harness.record.read import read_examples

    arrays = read_examples(rec, record_path)
    npz_path = record_path.with_name(rec.examples_file or "")
    idx = arrays["index"]
    if not np.issubdtype(idx.dtype, np.integer) or not np.array_equal(idx, np.arange(rec.n_examples)):
        raise HarnessError(f"{npz_path}: index must be 0..{rec.n_examples - 1} (the first N test points in order)")
    for m in rec.certified or {}:
        if f"radius_{m}" in arrays and (arrays[f"radius_{m}"].dtype.kind != "f"
                                        or not np.isfinite(arrays[f"radius_{m}"]).all()):
            raise HarnessError(f"{npz_path}: radius_{m} must hold finite floats")
    return arrays


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(pool, size=min(k, pool.size), replace=False)) if pool.size else pool


def plan_sample(arrays: dict[str, np.ndarray], n_available: int, sample: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions to re-classify and positions (claimed robust) to re-attack, ``sample`` of each,
    drawn with ``seed``."""
    p = plan_samples(arrays, n_available, seed, clean=sample, reattack=sample, certify={})
    return p["clean"], p["attack"]


def plan_samples(arrays: dict[str, np.ndarray], n_available: int, seed: int, *, clean: int, reattack: int,
                 certify: dict[str, int]) -> dict[str, Any]:
    """The positions of every check, drawn with one generator seeded with ``seed``, from the points
    available here: ``clean`` of all points; per certifier ``m``, ``certify[m]`` of those it claims
    to certify or to give a positive radius; ``reattack`` of the claimed-robust ones."""
    rng = np.random.default_rng(seed)
    pool = np.arange(min(n_available, len(arrays["index"])))
    out: dict[str, Any] = {"clean": _draw(rng, pool, clean) if "clean_correct" in arrays else pool[:0],
                           "certify": {}}
    for m, k in certify.items():
        out["certify"][m] = _draw(rng, pool[certify_pool(arrays, m)[pool]], k)
    robust = arrays.get("autoattack_robust")
    out["attack"] = _draw(rng, pool[robust[pool].astype(bool)], reattack) if robust is not None else pool[:0]
    return out


def certify_pool(arrays: dict[str, np.ndarray], m: str) -> np.ndarray:
    """Boolean mask of the points the record says certifier ``m`` certifies or gives a positive radius."""
    mask = arrays[f"certified_{m}"].astype(bool).copy()
    if f"radius_{m}" in arrays:
        mask |= arrays[f"radius_{m}"] > 0
    return mask


# ---------------------------------------------------------------------------------------------
def recompute(submission_path: str | Path, clean_pos: np.ndarray, attack_pos: np.ndarray, *, eps: float, norm: str,
              seed: int, device: str = "cpu", batch_size: int = 100, data_dir: str | Path | None = None,
              eot_iter: int = 1, progress: bool = False, trust_code: bool = False,
              max_model_bytes: int | None = None, square_queries: int = SQUARE_QUERIES,
              certify: dict[str, Any] | None = None, flops: bool = False, probes: bool = True) -> dict[str, Any]:
    """All the model work of the audit, with explicit inputs and plain outputs.

    Loads the submission's model (hash-checked, safely) and

    - classifies the points at ``clean_pos`` (positions in the test set): ``clean_pred``,
      ``clean_margin``;
    - with ``flops``, counts FLOPs and parameters with the ``flops`` stage itself: ``flops`` (the
      stage's summary, the record's ``FlopsPart``);
    - certifies, per method of ``certify`` (``{method: {"pos": [...], "seed": s, "batch_size": b}}``),
      its points with the certify stage's options and radius range: ``cert[method]`` =
      ``{"certified", "radius", "skipped"}``;
    - probes the points at ``attack_pos`` (``zero_gradient``: how many have an exactly zero input
      gradient; ``randomized``: :func:`harness.diagnostics.probes.detect_randomized`), switching
      APGD to EOT over 20 draws when the forward pass is random (``eot_iter`` used);
    - attacks them with APGD-CE, APGD-T and Square, in that order, each on the points still
      standing: ``broken_by`` ("" if it survived, else the attack that broke it, verified here).
    """
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.square import SquareAttack

    from harness.data.loaders import load_test_data, num_classes_of
    from harness.models.load import load_model, resolve_device
    from harness.submission.load import load_submission

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
    out: dict[str, Any] = {"labels": data.y.numpy(), "n_available": len(data)}

    preds, margins = [], []
    with torch.no_grad():
        for i in range(0, clean_pos.size, batch_size):
            logits = net(data.floats(clean_pos[i:i + batch_size], dev)).float()
            top = logits.topk(2, dim=1).values
            preds.append(logits.argmax(1).cpu())
            margins.append(((top[:, 0] - top[:, 1]) / top[:, 0].abs().clamp_min(1.0)).cpu())
    out["clean_pred"] = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
    out["clean_margin"] = torch.cat(margins).numpy() if margins else np.zeros(0, np.float32)

    out["flops"] = _recount_flops(spec, model) if flops else None
    out["cert"] = {m: _recertify(m, spec, model, data, np.asarray(c["pos"], dtype=np.int64), eps=eps, norm=norm,
                                 seed=int(c["seed"]), batch_size=int(c["batch_size"]))
                   for m, c in (certify or {}).items()}

    broken_by = np.array([""] * attack_pos.size, dtype=object)
    out.update(broken_by=broken_by, zero_gradient=None, randomized=None, eot_iter=int(eot_iter))
    if not attack_pos.size:
        return out
    x = data.floats(attack_pos, dev)
    y = data.labels(attack_pos, dev)
    if probes:
        from harness.diagnostics.probes import detect_randomized, zero_gradient_fraction

        bs = max(1, min(batch_size, 256))
        out["zero_gradient"] = int(round(zero_gradient_fraction(net, x, y, batch_size=bs) * attack_pos.size))
        torch.manual_seed(seed)
        with torch.no_grad():
            out["randomized"] = detect_randomized(net, x[:bs], batch_size=bs)
        if out["randomized"]["randomized"]:
            out["eot_iter"] = eot_iter = max(int(eot_iter), 20)
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
        ("square", SquareAttack(net, p_init=.8, n_queries=int(square_queries), eps=eps, norm=norm, n_restarts=1,
                                seed=seed, verbose=False, device=dev, resc_schedule=False)),
    ]
    if square_queries < 1:
        attacks.pop()
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
    return out


def _recount_flops(spec, model) -> dict[str, Any]:
    """The ``flops`` stage's own summary for this model (the stage's ``map``, not a copy of it)."""
    from types import SimpleNamespace

    from harness.stages.flops import FlopsStage

    res = FlopsStage().map(SimpleNamespace(spec=spec, model=model), None, None)
    return json.loads(json.dumps(res.extras["summary"]))


def _recertify(method: str, spec, model, data, pos: np.ndarray, *, eps: float, norm: str, seed: int,
               batch_size: int) -> dict[str, Any]:
    """Certify the points at ``pos`` with ``method`` as the certify stage does: its options, its
    radius range, the evaluation's seed and batch size (the stage's own functions, not copies)."""
    from types import SimpleNamespace

    from harness import certifiers
    from harness.certifiers import Skip
    from harness.certifiers.results import check_result
    from harness.stages.certify import _radii, certifier_options

    ctx = SimpleNamespace(spec=spec, model=model, batch_size=batch_size, eps=eps)
    eps_max, tol = _radii(ctx)
    c = certifiers.get(method)
    out: dict[str, Any] = {"certified": np.zeros(0, bool), "radius": np.zeros(0, np.float64), "skipped": None}
    if not pos.size:
        return out
    try:
        p = c.prepare(model.module, model.input_shape, model.device, norm=norm, options=certifier_options(ctx, {}))
    except Skip as s:
        return {**out, "skipped": one_line(s, limit=300) or "not applicable"}
    bs = max(1, min(batch_size, p.batch_size or batch_size))
    cert, rad = [], []
    for i in range(0, pos.size, bs):
        sel = pos[i:i + bs]
        r = c.run(p, data.floats(sel, model.device), data.labels(sel, model.device), index=data.index[sel],
                  eps=eps, norm=norm, eps_max=eps_max, tol=tol, seed=seed)
        check_result(r, int(sel.size), c.name)
        cert.append(np.asarray(r.certified, bool))
        rad.append(np.asarray(r.radius, np.float64))
    return {"certified": np.concatenate(cert), "radius": np.concatenate(rad), "skipped": None}


# ---------------------------------------------------------------------------------------------
def _recompute_kwargs(a: dict[str, Any]) -> dict[str, Any]:
    """The audit inputs of a worker job (``WorkerJob.audit``) as :func:`recompute`'s arguments."""
    return {"eps": float(a["eps"]), "norm": str(a["norm"]), "seed": int(a["seed"]),
            "eot_iter": int(a.get("eot_iter", 1)), "square_queries": int(a.get("square_queries", SQUARE_QUERIES)),
            "certify": {str(m): {"pos": [int(p) for p in c["pos"]], "seed": int(c["seed"]),
                                 "batch_size": int(c["batch_size"])}
                        for m, c in (a.get("certify") or {}).items()},
            "flops": bool(a.get("flops", False)), "probes": bool(a.get("probes", True))}


def worker_audit(ctx) -> None:
    """Job kind ``audit`` in the sandboxed worker (:data:`harness.sandbox.job.JOB_KINDS`): the audit's model
    work (:func:`recompute`), its result saved in the state folder for the supervisor to read back as
    untrusted data."""
    run_audit_job(ctx.job)


def run_audit_job(job) -> None:
    """In the worker (job kind ``audit``: :func:`worker_audit`): :func:`recompute` for the job's inputs, the
    result saved as ``<state>/audit.npz`` for the supervisor to read back as untrusted data."""
    from harness.core.files import atomic_savez

    a = job.audit or {}
    kw = _recompute_kwargs(a)
    out = recompute(job.submission, np.asarray(a["clean_pos"], dtype=np.int64),
                    np.asarray(a["attack_pos"], dtype=np.int64), device=job.device, batch_size=job.batch_size,
                    data_dir=job.data_dir, progress=job.progress, trust_code=job.trust_code,
                    max_model_bytes=job.max_model_bytes, **kw)
    methods = list(kw["certify"])
    meta = {"flops": out["flops"], "randomized": out["randomized"], "zero_gradient": out["zero_gradient"],
            "eot_iter": out["eot_iter"], "methods": methods,
            "skipped": {m: out["cert"][m]["skipped"] for m in methods}}
    arrays = {
        "labels": np.asarray(out["labels"]), "n_available": np.asarray(out["n_available"]),
        "clean_pred": np.asarray(out["clean_pred"]), "clean_margin": np.asarray(out["clean_margin"]),
        "broken_by": np.asarray([str(b) for b in out["broken_by"]], dtype=str),
        "meta": np.asarray(json.dumps(meta)),
    }
    for i, m in enumerate(methods):
        arrays[f"certified_{i}"] = np.asarray(out["cert"][m]["certified"], dtype=bool)
        arrays[f"radius_{i}"] = np.asarray(out["cert"][m]["radius"], dtype=np.float64)
    atomic_savez(Path(job.state_dir) / "audit.npz", arrays)


def recompute_sandboxed(submission_path: str | Path, clean_pos: np.ndarray, attack_pos: np.ndarray, *, eps: float,
                        norm: str, seed: int, device: str = "cpu", batch_size: int = 100,
                        data_dir: str | Path | None = None, eot_iter: int = 1, progress: bool = False,
                        sandbox: str = "worker", square_queries: int = SQUARE_QUERIES,
                        certify: dict[str, Any] | None = None, flops: bool = False,
                        probes: bool = True) -> dict[str, Any]:
    """:func:`recompute` in the sandboxed evaluation worker (``sandbox`` "worker" or "bwrap"; "none"
    runs it in this process, for trusted models only). Its outputs come back through a file the
    worker writes, read here as untrusted data (no pickles, shapes and values checked)."""
    import shutil
    import tempfile

    from harness.models.load import resolve_device
    from harness.runner.evaluate import resolve_limits
    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import run_worker
    from harness.stages import EvalOptions
    from harness.submission.load import load_submission

    clean_pos, attack_pos = np.asarray(clean_pos, dtype=np.int64), np.asarray(attack_pos, dtype=np.int64)
    inputs = {"clean_pos": clean_pos.tolist(), "attack_pos": attack_pos.tolist(), "eps": float(eps), "norm": norm,
              "seed": int(seed), "eot_iter": int(eot_iter), "square_queries": int(square_queries),
              "certify": {m: {"pos": np.asarray(c["pos"], dtype=np.int64).tolist(), "seed": int(c["seed"]),
                              "batch_size": int(c["batch_size"])} for m, c in (certify or {}).items()},
              "flops": bool(flops), "probes": bool(probes)}
    kw = _recompute_kwargs(inputs)
    if sandbox == "none":
        out = recompute(submission_path, clean_pos, attack_pos, device=device, batch_size=batch_size,
                        data_dir=data_dir, progress=progress, **kw)
        return _checked(out, clean_pos.size, attack_pos.size, kw["certify"])
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
            audit=inputs)
        read_only = [sub.folder, sub.checkpoint_path().parent] + ([Path(data_dir).resolve()] if data_dir else [])
        run_worker(job, mode=sandbox, stage_timeout=limits["stage_timeout"],
                   watch_memory=limits["memory"] if dev.type == "cuda" else None, read_only=read_only,
                   echo=lambda line: None)
        return _read_recomputed(work / "audit.npz", clean_pos.size, attack_pos.size, kw["certify"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_recomputed(path: Path, n_clean: int, n_attack: int, certify: dict[str, Any]) -> dict[str, Any]:
    """The worker's audit results, checked (written by a process that ran a stranger's model)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
        meta_text = raw["meta"]
        if meta_text.dtype.kind != "U" or meta_text.shape != () or len(str(meta_text)) > MAX_WORKER_META:
            raise ValueError("meta is not one bounded string")
        meta = json.loads(str(meta_text))
        if not isinstance(meta, dict) or meta.get("methods") != list(certify):
            raise ValueError("meta does not list the requested certifiers")
        out = {"labels": raw["labels"], "n_available": int(raw["n_available"]), "clean_pred": raw["clean_pred"],
               "clean_margin": raw["clean_margin"], "broken_by": np.array(raw["broken_by"].tolist(), dtype=object),
               "flops": meta.get("flops"), "randomized": meta.get("randomized"),
               "zero_gradient": meta.get("zero_gradient"), "eot_iter": meta.get("eot_iter"),
               "cert": {m: {"certified": raw[f"certified_{i}"], "radius": raw[f"radius_{i}"],
                            "skipped": (meta.get("skipped") or {}).get(m)} for i, m in enumerate(certify)}}
        if raw["broken_by"].dtype.kind != "U":
            raise ValueError("broken_by is not text")
        return _checked(out, n_clean, n_attack, certify)
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed result is one error line
        raise HarnessError(f"the audit worker's result {path.name} is malformed ({type(e).__name__}: "
                           f"{one_line(e, limit=120)})")


def _checked(out: dict[str, Any], n_clean: int, n_attack: int, certify: dict[str, Any]) -> dict[str, Any]:
    """``out`` if every field has the shape and type the request implies; else a one-line error."""
    from harness.record.schema import FlopsPart

    labels, n_avail, pred, margin, broken = (out["labels"], int(out["n_available"]), np.asarray(out["clean_pred"]),
                                             np.asarray(out["clean_margin"]), out["broken_by"])
    ok = (labels.ndim == 1 and labels.dtype.kind in "iu" and labels.size == n_avail
          and pred.shape == (n_clean,) and pred.dtype.kind in "iu" and margin.shape == (n_clean,)
          and margin.dtype.kind == "f" and broken.shape == (n_attack,)
          and set(broken.tolist()) <= {"", "clean", *REATTACKS})
    zero, rnd, eot = out["zero_gradient"], out["randomized"], out["eot_iter"]
    ok = ok and (zero is None or (type(zero) is int and 0 <= zero <= n_attack))
    ok = ok and (rnd is None or (isinstance(rnd, dict) and isinstance(rnd.get("randomized"), bool)))
    ok = ok and type(eot) is int and 1 <= eot <= 1000
    for m, c in certify.items():
        got = out["cert"][m]
        k = len(c["pos"]) if got["skipped"] is None else 0
        ok = ok and (got["skipped"] is None or isinstance(got["skipped"], str))
        ok = ok and np.asarray(got["certified"]).dtype == np.bool_ and np.asarray(got["certified"]).shape == (k,)
        rad = np.asarray(got["radius"])
        ok = ok and rad.dtype.kind == "f" and rad.shape == (k,) and bool(np.isfinite(rad).all())
    if not ok:
        raise HarnessError("the audit worker's result is malformed (unexpected shapes or values)")
    if out["flops"] is not None:
        if not isinstance(out["flops"], dict):
            raise HarnessError("the audit worker's FLOPs count is malformed")
        try:
            FlopsPart.model_validate(out["flops"])
        except Exception as e:  # noqa: BLE001 - pydantic's error, one line
            raise HarnessError(f"the audit worker's FLOPs count is malformed: {one_line(e, limit=200)}")
    return out


def reattack_verdict(n_broken: int, n_sampled: int, max_broken_fraction: float,
                     alpha: float = FALSE_ALARM) -> tuple[float, bool]:
    """(one-sided 95% Clopper-Pearson lower bound of the broken fraction, whether the audit fails):
    it fails when ``n_broken >= reattack_threshold(n_sampled, max_broken_fraction)``, i.e. when
    ``P(Bin(n, p0) >= n_broken) <= alpha``, which is (up to ties) the lower bound exceeding p0."""
    if n_sampled == 0:
        return 0.0, False
    lower = clopper_pearson(n_broken, n_sampled, confidence=1 - 2 * alpha)[0]  # lower end of the two-sided 90%
    return lower, n_broken >= reattack_threshold(n_sampled, max_broken_fraction, alpha)


def _find_submission(record_path: Path, submission_id: str) -> Path:
    results = record_path.resolve().parent
    if results.name == "results" and results.parent.name == "leaderboard":
        return results.parent.parent / "submissions" / submission_id / "submission.yaml"
    raise HarnessError(f"{record_path}: not under leaderboard/results/; pass --submission "
                       "submissions/<id>/submission.yaml")


def available_points(dataset: str, data_dir=None, custom_path=None) -> int:
    from harness.data.loaders import load_test_data

    return len(load_test_data(dataset, None, data_dir=data_dir, custom_path=custom_path))


def dataset_size_problem(rec, n_available: int | None = None) -> str | None:
    """``n_examples`` beyond the data set's test set (the registry's ``n_test``; for a data set of
    unknown size, such as custom, the points there are): one line, or None."""
    from harness.data import registry as datasets

    d = datasets.find(rec.dataset)
    size = d.n_test if d is not None and d.n_test is not None else n_available
    if size is not None and rec.n_examples > size:
        title = d.title if d is not None else rec.dataset
        return (f"n_examples: {rec.n_examples} exceeds the {size} points of the {title} test set "
                "(a record covers at most the whole test set)")
    return None


#: record fields the flops stage writes, compared exactly (flops_error only for its presence: its
#: text quotes a library's exception; training_flops without its ``formula``, a sentence)
FLOPS_FIELDS = ("params", "inference_flops", "forward_passes", "flops_convention", "flops_skipped_ops",
                "flops_by_operator", "training_flops")


def flops_differences(rec, counted: dict[str, Any]) -> list[str]:
    """Every field of the record's FLOPs part that differs from the recount (``counted``: the flops
    stage's summary), one line each."""
    from harness.record.schema import FlopsPart

    mine = FlopsPart.model_validate(counted).model_dump()
    if isinstance(mine["training_flops"], dict):
        mine["training_flops"].pop("formula", None)
    out = []
    for name in FLOPS_FIELDS:
        claimed = getattr(rec, name)
        claimed = claimed.model_dump(exclude={"formula"}) if hasattr(claimed, "model_dump") else claimed
        if json.dumps(claimed, sort_keys=True) != json.dumps(mine[name], sort_keys=True):
            out.append(f"{name}: the record says {_show(claimed)}, the model has {_show(mine[name])}")
    if (rec.flops_error is None) != (mine["flops_error"] is None):
        out.append("flops_error: " + (f"the record says FLOPs could not be counted ({rec.flops_error}), but they can"
                                      if rec.flops_error is not None else
                                      f"the record has a count, but fvcore cannot analyse the model "
                                      f"({mine['flops_error']})"))
    return out


def _show(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:g}" \
        if isinstance(v, float) else str(v)
    return one_line(text, limit=300)


def _diagnostics_claims(rec) -> dict[str, Any]:
    """What the record's diagnostics stage says about the probes (None where it says nothing usable)."""
    d = rec.diagnostics if isinstance(rec.diagnostics, dict) else {}
    z = d.get("zero_gradient_fraction")
    rnd = d.get("randomized")
    return {"zero_gradient_fraction": float(z) if isinstance(z, (int, float)) and not isinstance(z, bool)
            and 0 <= z <= 1 else None,
            "randomized": rnd.get("randomized") if isinstance(rnd, dict)
            and isinstance(rnd.get("randomized"), bool) else None}


def audit_record(record_path: str | Path, *, submission: str | Path | None = None, sample: int | None = None,
                 seed: int | None = None, device: str = "cpu", data_dir: str | Path | None = None,
                 batch_size: int | None = None, max_broken_fraction: float = HONEST_BREAK_RATE,
                 progress: bool = False, sandbox: str = "worker",
                 square_queries: int = SQUARE_QUERIES) -> AuditResult:
    """Audit one record; problems (one line each) are in the result, bad inputs raise HarnessError.
    ``sample`` None: every sample size from the 1%-forgery rule (module docstring); else at most
    ``sample`` points per check. The model runs in the sandboxed worker (``sandbox``: "worker",
    "bwrap"; "none" only for trusted models)."""
    from harness.record.checks import check_against_submission
    from harness.record.read import read_record
    from harness.submission.load import parse_submission

    t0 = time.perf_counter()
    record_path = Path(record_path)
    if sample is not None and sample < 1:
        raise HarnessError("--sample must be at least 1")
    if not 0 <= max_broken_fraction < 1:
        raise HarnessError("--max-broken-fraction must be in [0, 1)")
    if square_queries < 0 or square_queries > 10**6:
        raise HarnessError("--square-queries must be in [0, 1000000]")
    rec = read_record(record_path, examples=False)  # every invariant; the examples are read below
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    res = AuditResult(record_path, rec.submission_id, seed, eps=float(rec.threat_model.eps),
                      norm=rec.threat_model.norm, max_broken_fraction=max_broken_fraction,
                      square_queries=int(square_queries))
    yaml_path = Path(submission) if submission is not None else _find_submission(record_path, rec.submission_id)
    sub, problems = parse_submission(yaml_path)
    if sub is None or problems:
        raise HarnessError(f"{yaml_path}: {problems[0] if problems else 'invalid'} (run `harness validate "
                           f"{yaml_path}`)")
    if sub.spec.id != rec.submission_id:
        res.problem(f"submission_id: the record is for {rec.submission_id!r}, the submission is {sub.spec.id!r}")
    if (rec.dataset, rec.threat_model.norm) != (sub.spec.dataset, sub.spec.threat_model.norm) or \
            not math.isclose(rec.threat_model.eps, sub.spec.threat_model.eps, rel_tol=1e-9):
        res.problem(f"threat_model: the record is {rec.dataset} {rec.threat_model.norm} eps={rec.threat_model.eps:g}, "
                    f"the submission is {sub.spec.dataset} {sub.spec.threat_model.label}")
    for p in check_provenance_hashes(rec, sub):
        res.problem(p)
    if not res.problems:
        try:
            check_against_submission(rec, record_path, sub)
        except HarnessError as e:
            res.problem(str(e))
    if (why := dataset_size_problem(rec)) is not None:
        res.problem(why)
    if res.problems:  # a record for other files, another threat model or no test set: re-running proves nothing
        res.seconds = time.perf_counter() - t0
        return res
    has_flops = any(getattr(rec, f) is not None for f in (*FLOPS_FIELDS, "flops_error"))
    if rec.clean_accuracy is None and rec.robust_accuracy is None and not rec.certified and not has_flops:
        raise HarnessError(f"{record_path}: the record has no clean, certified, AutoAttack or FLOPs result to audit")

    arrays = load_examples(rec, record_path)
    n = rec.n_examples
    n_avail = available_points(sub.spec.dataset, data_dir, sub.dataset_path())
    if (why := dataset_size_problem(rec, n_avail)) is not None:
        res.problem(why)
    elif n_avail < n:
        res.problem(f"n_examples: only the first {n_avail} of the record's {n} points are available here, so the "
                    f"other {n - n_avail} cannot be checked; pass --data-dir with the full {sub.spec.dataset} test set "
                    "(the samples below are drawn from the available points)")
    n_here = min(n, n_avail)
    methods = list(rec.certified or {})
    pools = {"clean": n_here if "clean_correct" in arrays else 0,
             **{m: int(certify_pool(arrays, m)[:n_here].sum()) for m in methods},
             "re-attack": int(arrays["autoattack_robust"][:n_here].sum()) if rec.robust_accuracy is not None else 0}
    # the forged fraction of each pool: 1% of the record's N points, all in the pool (as counted over N)
    full = {"clean": n, **{m: int(certify_pool(arrays, m).sum()) for m in methods},
            "re-attack": int(arrays["autoattack_robust"].sum()) if rec.robust_accuracy is not None else 0}
    forged = {k: forged_fraction_of_pool(n, full[k]) for k in pools}
    if sample is None:
        sizes = {k: check_sample_size(n, full[k]) for k in ("clean", *methods)}
        sizes["re-attack"] = reattack_sample_size_for(n, full["re-attack"], max_broken_fraction)
    else:
        sizes = {k: int(sample) if full[k] else 0 for k in pools}
    plan = plan_samples(arrays, n_here, seed, clean=sizes["clean"], reattack=sizes["re-attack"],
                        certify={m: sizes[m] for m in methods})
    clean_pos, attack_pos = plan["clean"], plan["attack"]
    cert_seed, cert_bs = int(rec.provenance.seed), int(rec.provenance.batch_size)
    eot = 20 if rec.autoattack is not None and rec.autoattack.version == "rand" else 1
    out = recompute_sandboxed(yaml_path, clean_pos, attack_pos, eps=float(rec.threat_model.eps),
                              norm=rec.threat_model.norm, seed=seed, device=device,
                              batch_size=batch_size or min(sub.spec.evaluation.batch_size, 256), data_dir=data_dir,
                              eot_iter=eot, progress=progress, sandbox=sandbox, square_queries=square_queries,
                              certify={m: {"pos": plan["certify"][m], "seed": cert_seed, "batch_size": cert_bs}
                                       for m in methods},
                              flops=has_flops, probes=attack_pos.size > 0)

    index = arrays["index"]
    every = np.union1d(clean_pos, attack_pos)
    for m in methods:
        every = np.union1d(every, plan["certify"][m])
    bad_labels = [int(index[p]) for p in every if out["labels"][p] != arrays["label"][p]]
    if bad_labels:
        res.problem(f"label: the record's labels differ from the test set at indices {_short(bad_labels)}")

    if has_flops:
        res.flops_checked = True
        res.flops_differences = flops_differences(rec, out["flops"])
        for d in res.flops_differences:
            res.problem(f"{d} (recounted with the flops stage)")

    res.clean_checked = [int(index[p]) for p in clean_pos]
    if pools["clean"]:
        recorded = arrays["clean_correct"].astype(bool)
        for p, pred, margin in zip(clean_pos, out["clean_pred"], out["clean_margin"], strict=True):
            if bool(pred == out["labels"][p]) != bool(recorded[p]):
                (res.clean_ambiguous if margin <= CLEAN_MARGIN_RTOL else res.clean_disagree).append(int(index[p]))
        if res.clean_disagree:
            res.problem(f"clean_correct: the model's predictions disagree with the record at indices "
                        f"{_short(res.clean_disagree)} (re-classified {len(clean_pos)} sampled points)")
        res.catch["clean"] = deterministic_catch_probability(len(clean_pos), forged["clean"], pools["clean"])

    for m in methods:
        _check_certificates(res, rec, arrays, m, plan["certify"][m], out["cert"][m], pools[m], forged[m])

    res.attack_checked = [int(index[p]) for p in attack_pos]
    if rec.robust_accuracy is not None:
        _check_reattack(res, rec, attack_pos, index, out, pools["re-attack"], forged["re-attack"])
    pool_of = {"clean": pools["clean"], "re-attack": pools["re-attack"],
               **{f"certified {m}": pools[m] for m in methods}}
    for k in res.catch:
        if res.catch[k] < CATCH_PROBABILITY:
            res.note(f"{k}: this sample catches a {100 * FORGERY_FRACTION:g}% forgery with probability "
                     f"{res.catch[k]:.3f} only (< {CATCH_PROBABILITY}): "
                     + ("--sample is smaller than the default" if sample is not None
                        else f"the record has only {pool_of[k]} such points here"))
    res.seconds = time.perf_counter() - t0
    return res


def _check_certificates(res: AuditResult, rec, arrays, m: str, pos: np.ndarray, got: dict[str, Any], pool: int,
                        forged: float) -> None:
    index = arrays["index"]
    report = res.certified[m] = CheckReport(m, pool, [int(index[p]) for p in pos])
    if got["skipped"] is not None:
        if pos.size:
            res.problem(f"certified.{m}: the record claims {m} certificates, but {m} cannot run here to re-check "
                        f"them: {got['skipped']}")
        return
    claimed = arrays[f"certified_{m}"].astype(bool)[pos]
    report.failed = [int(index[p]) for p, c, g in zip(pos, claimed, got["certified"], strict=True) if c and not g]
    if report.failed:
        res.problem(f"certified_{m}: {len(report.failed)} of {len(pos)} sampled points the record claims {m} "
                    f"certifies are not certified by {m} at eps={rec.threat_model.eps:g}: indices "
                    f"{_short(report.failed)}")
    if f"radius_{m}" in arrays:
        tol = float(rec.certified[m].tolerance) + RADIUS_SLACK
        claimed_r = arrays[f"radius_{m}"].astype(np.float64)[pos]
        smaller = [(int(index[p]), c, g) for p, c, g in zip(pos, claimed_r, got["radius"], strict=True) if g < c - tol]
        res.radius_smaller[m] = [i for i, _, _ in smaller]
        if smaller:
            i, c, g = smaller[0]
            res.problem(f"radius_{m}: {len(smaller)} of {len(pos)} sampled points have a recomputed {m} radius "
                        f"smaller than the record's by more than the tolerance {tol:g}: indices "
                        f"{_short(res.radius_smaller[m])} (e.g. {i}: claimed {c:.6g}, recomputed {g:.6g})")
    report.catch_probability = res.catch[f"certified {m}"] = deterministic_catch_probability(len(pos), forged, pool)


def _check_reattack(res: AuditResult, rec, attack_pos: np.ndarray, index, out: dict[str, Any], pool: int,
                    forged: float) -> None:
    p0 = res.max_broken_fraction
    n = int(attack_pos.size)
    res.broken = {int(index[p]): str(b) for p, b in zip(attack_pos, out["broken_by"], strict=True) if b}
    res.broken_threshold = reattack_threshold(n, p0) if n else 0
    res.broken_lower_bound, fails = reattack_verdict(len(res.broken), n, p0)
    if fails:
        res.problem(
            f"autoattack_robust: {len(res.broken)} of {n} sampled points the record claims robust were broken "
            f"at indices {_short(sorted(res.broken))} (by {', '.join(sorted(set(res.broken.values())))}; seed "
            f"{res.seed}); at 95% confidence more than {100 * p0:g}% of its robust points are not robust "
            f"(lower bound {100 * res.broken_lower_bound:.1f}%; an honest record fails with {res.broken_threshold} "
            f"or more broken at most {100 * FALSE_ALARM:g}% of the time)")
    if n:
        res.catch["re-attack"] = reattack_catch_probability(n, forged, p0)
    res.zero_gradient, rnd = out["zero_gradient"], out["randomized"]
    res.randomized = None if rnd is None else bool(rnd["randomized"])
    if res.zero_gradient is None:
        return
    claims = _diagnostics_claims(rec)
    diag = "diagnostics" in rec.stages and rec.diagnostics is not None
    if res.randomized:
        if rec.autoattack is not None and rec.autoattack.version != "rand":
            res.problem(f"autoattack.version: the model's forward pass is random (max normalised-logit difference "
                        f"{float(rnd.get('max_diff', 0.0)):.2e} between passes), but the record was evaluated with "
                        f"the {rec.autoattack.version!r} version, not 'rand' (APGD with EOT)")
        if diag and claims["randomized"] is False:
            res.problem("diagnostics.randomized: the record says the forward pass is deterministic; repeated passes "
                        "on the re-attacked points disagree")
    if res.zero_gradient:
        z = claims["zero_gradient_fraction"]
        msg = (f"{res.zero_gradient} of {n} re-attacked points have an exactly zero input gradient (gradient "
               "masking: APGD cannot move there; the black-box Square attack can)")
        if diag and z is not None:
            from scipy.stats import binom

            # the record claims z * N zero-gradient points in all; at most all of them are in the pool
            bound = min(1.0, (z * rec.n_examples + ZERO_GRADIENT_SLACK) / max(1, pool))
            if binom.sf(res.zero_gradient - 1, n, bound) <= FALSE_ALARM:
                res.problem(f"diagnostics.zero_gradient_fraction: the record says {100 * z:.1f}% of its points have "
                            f"a zero input gradient, but {msg}")
                return
        res.note(msg)
