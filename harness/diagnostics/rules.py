"""Flag rules: when does a diagnostic measurement become a trust flag?

Each rule turns measurements (accuracies of the attack ladder, a probe's result) into
:class:`harness.record.Flag` objects, the one flag type of the record and the leaderboard.
Thresholds are module constants, overridable per call. The measurements come from
:mod:`.attacks` (the FGSM / PGD ladder) and :mod:`.probes` (randomness, zero gradients);
AutoAttack's own check messages become flags in :mod:`.aa_messages`.

``weak-attack-gap`` (error for PGD, warning for FGSM)
    A gradient attack's robust accuracy exceeds AutoAttack's on the same points by more than
    ``tau + z * sqrt(tau * (1 - tau) / n)``: a one-sided binomial test (z = 2, about 2.3 % false
    alarms) of "the true gap is at most ``tau``". ``tau`` = 0.05 for PGD-20: on honest models
    PGD-20 sits 1-4 points above AutoAttack (e.g. TRADES on CIFAR-10, 56.6 % vs 53.1 %; Madry on
    MNIST, about 92-93 % vs 88-89 %). ``tau`` = 0.15 for FGSM, which is a one-step attack and
    normally sits 5-10 points above AutoAttack on adversarially trained models. The noise term
    matters on small evaluations: at n = 100 a true 5-point gap is observed as 9 points one time in
    ten, and the flag needs 9.4 points; at n = 10 000 it needs 5.4.

``catastrophic-overfitting`` (error)
    FGSM accuracy >= 0.3 *and* >= 0.5 x clean accuracy, while the multi-step accuracy
    (min of PGD-20 and AutoAttack, where AutoAttack was run) is <= 0.05. This is the signature of
    Wong et al. (2020) "Fast is better than free": after catastrophic overfitting the model's loss
    surface is so curved that a single linear step no longer finds an adversarial example that a
    few more steps find at once. (FGSM accuracy *above* clean or PGD accuracy is not required.)
    A gradient-masked model whose PGD accuracy is high too, broken only by AutoAttack, also meets
    the rule; the message then says so (``details["pgd_broken"]`` is False) and
    ``weak-attack-gap`` fires beside it.

``randomized-model`` (warning)
    Repeated forward passes on the same input disagree (normalised logits differ by more than
    1e-4 in L2, AutoAttack's own tolerance, or the predictions change): see
    :func:`harness.diagnostics.probes.detect_randomized`. The pipeline then runs AutoAttack's
    ``rand`` version (APGD-CE and APGD-DLR with EOT over 20 draws).

``zero-gradients`` (warning; error when at least half the points)
    The input gradient of the loss is exactly zero at some evaluated points, so gradient attacks
    cannot move there (quantisation, rounding, saturated outputs): see
    :func:`harness.diagnostics.probes.zero_gradient_fraction`.

To add a rule: write a function here that returns a ``Flag`` (or None), call it from
:class:`harness.stages.diagnostics.DiagnosticsStage`, re-export it in ``harness/diagnostics/__init__.py``
and test it in ``tests/unit/diagnostics/test_diagnostics_flags.py``.
"""
from __future__ import annotations

import math

from harness.record.schema import Flag

__all__ = [
    "WEAK_GAP_TOLERANCE", "WEAK_GAP_Z", "CO_MIN_FGSM", "CO_MIN_FGSM_CLEAN_RATIO",
    "CO_MAX_MULTISTEP", "RANDOMIZED_TOLERANCE", "gap_threshold", "weak_attack_gap_flags",
    "catastrophic_overfitting_flag", "ladder_flags", "randomized_model_flag", "zero_gradient_flag",
]

WEAK_GAP_TOLERANCE: dict[str, float] = {"pgd": 0.05, "fgsm": 0.15}
WEAK_GAP_Z = 2.0
CO_MIN_FGSM = 0.3
CO_MIN_FGSM_CLEAN_RATIO = 0.5
CO_MAX_MULTISTEP = 0.05
RANDOMIZED_TOLERANCE = 1e-4  # AutoAttack's check_randomized alpha


def _f(v) -> float | None:
    return None if v is None else float(v)


# --------------------------------------------------------------------------- attack ladder rules

def gap_threshold(tau: float, n: int, z: float = WEAK_GAP_Z) -> float:
    """Smallest observed gap that rejects "true gap <= tau" at ``z`` binomial standard errors."""
    n = max(int(n), 1)
    return float(tau + z * math.sqrt(tau * (1.0 - tau) / n))


def weak_attack_gap_flags(*, autoattack: float, n: int, fgsm: float | None = None,
                          pgd: float | None = None, tolerance: dict[str, float] | None = None,
                          z: float = WEAK_GAP_Z, pgd_steps: int = 20) -> list[Flag]:
    """``weak-attack-gap`` flags: one per gradient attack whose accuracy exceeds AutoAttack's by
    more than :func:`gap_threshold` (accuracies as fractions over the same ``n`` points)."""
    tol = dict(WEAK_GAP_TOLERANCE, **(tolerance or {}))
    flags = []
    for attack, acc, severity, label in (("pgd", pgd, "error", f"PGD-{pgd_steps}"),
                                         ("fgsm", fgsm, "warning", "FGSM")):
        if acc is None or autoattack is None:
            continue
        gap = float(acc) - float(autoattack)
        thr = gap_threshold(tol[attack], n, z)
        if gap > thr:
            flags.append(Flag(
                "weak-attack-gap", severity,
                f"{label} accuracy {acc:.1%} exceeds AutoAttack's {autoattack:.1%} by "
                f"{gap:.1%} (> {thr:.1%} at n={n}): the gradients do not find the adversarial "
                f"examples that AutoAttack finds (gradient masking?)",
                value=gap, threshold=thr,
                details={"attack": attack, "attack_accuracy": float(acc),
                         "autoattack_accuracy": float(autoattack), "n": int(n),
                         "tolerance": tol[attack], "z": z}))
    return flags


def catastrophic_overfitting_flag(*, clean: float, fgsm: float, pgd: float | None,
                                  autoattack: float | None = None,
                                  min_fgsm: float = CO_MIN_FGSM,
                                  min_fgsm_clean_ratio: float = CO_MIN_FGSM_CLEAN_RATIO,
                                  max_multistep: float = CO_MAX_MULTISTEP) -> Flag | None:
    """``catastrophic-overfitting`` if FGSM accuracy is high (>= ``min_fgsm`` and
    >= ``min_fgsm_clean_ratio`` x clean) while multi-step accuracy (min of PGD and AutoAttack
    where given) is <= ``max_multistep``; else None."""
    multi = [a for a in (pgd, autoattack) if a is not None]
    if not multi or fgsm is None:
        return None
    multistep = min(float(a) for a in multi)
    fgsm_floor = max(min_fgsm, min_fgsm_clean_ratio * float(clean))
    if float(fgsm) >= fgsm_floor and multistep <= max_multistep:
        which = "min(PGD, AutoAttack)" if len(multi) == 2 else (
            "PGD" if pgd is not None else "AutoAttack")
        pgd_broken = pgd is not None and float(pgd) <= max_multistep
        if pgd is None or pgd_broken:
            cause = ("single-step robustness does not hold up against a multi-step attack "
                     "(catastrophic overfitting)")
        else:
            cause = (f"PGD ({pgd:.1%}) fails too and only AutoAttack breaks the model: gradient "
                     f"masking rather than (or as well as) catastrophic overfitting")
        return Flag(
            "catastrophic-overfitting", "error",
            f"FGSM accuracy {fgsm:.1%} (>= {fgsm_floor:.1%}) but multi-step accuracy "
            f"{which} = {multistep:.1%} (<= {max_multistep:.0%}): {cause}",
            value=multistep, threshold=max_multistep,
            details={"clean": _f(clean), "fgsm": _f(fgsm), "pgd": _f(pgd),
                     "autoattack": _f(autoattack), "fgsm_floor": fgsm_floor,
                     "pgd_broken": bool(pgd_broken)})
    return None


def ladder_flags(ladder: dict, autoattack: float | None = None, *,
                 tolerance: dict[str, float] | None = None, z: float = WEAK_GAP_Z) -> list[Flag]:
    """All attack-ladder flags for an :func:`~harness.diagnostics.attacks.attack_ladder` result and
    (optionally) the AutoAttack robust accuracy on the same points."""
    flags: list[Flag] = []
    if autoattack is not None:
        flags += weak_attack_gap_flags(autoattack=autoattack, n=ladder["n"], fgsm=ladder["fgsm"],
                                       pgd=ladder["pgd"], tolerance=tolerance, z=z,
                                       pgd_steps=ladder.get("pgd_steps", 20))
    co = catastrophic_overfitting_flag(clean=ladder["clean"], fgsm=ladder["fgsm"],
                                       pgd=ladder["pgd"], autoattack=autoattack)
    if co is not None:
        flags.append(co)
    return flags


# --------------------------------------------------------------------------- probe rules

def randomized_model_flag(result: dict, tolerance: float = RANDOMIZED_TOLERANCE) -> Flag | None:
    """The ``randomized-model`` flag for a :func:`~harness.diagnostics.probes.detect_randomized`
    result, or None."""
    if not result["randomized"]:
        return None
    return Flag("randomized-model", "warning",
                f"repeated forward passes disagree (max normalised-logit difference "
                f"{result['max_diff']:.2e}, {result['prediction_changes']} prediction changes): "
                f"evaluating with AutoAttack's 'rand' version (APGD with EOT)",
                value=float(result["max_diff"]), threshold=float(tolerance),
                details={"prediction_changes": int(result["prediction_changes"])})


def zero_gradient_flag(fraction: float, n: int | None = None) -> Flag | None:
    """The ``zero-gradients`` flag for a :func:`~harness.diagnostics.probes.zero_gradient_fraction`
    result, or None."""
    if not (fraction > 0):
        return None
    return Flag("zero-gradients", "error" if fraction >= 0.5 else "warning",
                f"{fraction:.1%} of the points have an exactly zero input gradient: gradient "
                f"attacks cannot move there (quantised or saturated model?)",
                value=float(fraction), threshold=0.0,
                details={} if n is None else {"n": int(n)})
