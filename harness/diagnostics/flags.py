"""Trust flags: structured warnings that a robust-accuracy figure should not be taken at face value.

A flag is a :class:`Flag` (``name``, ``severity`` ``"warning"|"error"``, ``message``, ``value``,
``threshold``, plus free-form ``details``); ``flag.to_dict()`` gives the plain dict for a record.

Rules (thresholds are module constants, overridable per call):

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
    1e-4 in L2, AutoAttack's own tolerance, or the predictions change). The pipeline should then run
    AutoAttack's ``rand`` version (APGD-CE and APGD-DLR with EOT over 20 draws);
    :func:`autoattack_version_for` returns that choice together with the flag.

``zero-gradients`` (warning; error when at least half the points)
    The input gradient of the loss is exactly zero at some evaluated points, so gradient attacks
    cannot move there (quantisation, rounding, saturated outputs).

``aa-*`` (see :func:`classify_autoattack_messages`)
    AutoAttack's own checks (``pyautoattack/checks.py``), which only log warnings to the
    ``auto-attack`` logger, turned into flags. Capture them with :func:`capture_autoattack_messages`.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ._common import batches, input_gradient, flat_norm

__all__ = [
    "Flag", "WEAK_GAP_TOLERANCE", "WEAK_GAP_Z", "CO_MIN_FGSM", "CO_MIN_FGSM_CLEAN_RATIO",
    "CO_MAX_MULTISTEP", "RANDOMIZED_TOLERANCE", "SQUARE_ERROR_DROP", "gap_threshold",
    "weak_attack_gap_flags", "catastrophic_overfitting_flag", "classify_autoattack_messages",
    "capture_autoattack_messages", "detect_randomized", "randomized_model_flag",
    "autoattack_version_for", "zero_gradient_fraction", "zero_gradient_flag", "ladder_flags",
]

SEVERITIES = ("warning", "error")

WEAK_GAP_TOLERANCE: dict[str, float] = {"pgd": 0.05, "fgsm": 0.15}
WEAK_GAP_Z = 2.0
CO_MIN_FGSM = 0.3
CO_MIN_FGSM_CLEAN_RATIO = 0.5
CO_MAX_MULTISTEP = 0.05
RANDOMIZED_TOLERANCE = 1e-4  # AutoAttack's check_randomized alpha
SQUARE_ERROR_DROP = 0.05  # aa-square-beats-whitebox is an error from this accuracy drop on
AA_LOGGER = "auto-attack"


@dataclass(frozen=True)
class Flag:
    """One trust flag. ``value`` is the measured quantity and ``threshold`` the limit it crossed."""

    name: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "severity": self.severity, "message": self.message,
                "value": self.value, "threshold": self.threshold, "details": dict(self.details)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


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


# --------------------------------------------------------------------------- AutoAttack's checks

_AA_RULES: tuple[tuple[str, str, str], ...] = (
    # (regex, flag name, severity)
    (r"randomized defense", "aa-randomized", "error"),
    (r"output is a probability distribution", "aa-softmax-output", "error"),
    (r"points? with zero gradient", "aa-zero-gradients", "warning"),
    (r"Square Attack has decreased the robust accuracy", "aa-square-beats-whitebox", "warning"),
    (r"dynamic defense", "aa-dynamic", "warning"),
    (r"classes it is not possible|more target classes|too many target classes",
     "aa-n-classes", "warning"),
)

_AA_EXPLAIN = {
    "aa-randomized": "the model's outputs change between forward passes; the standard AutoAttack "
                     "result is not valid for randomized defenses (use version='rand')",
    "aa-softmax-output": "the model seems to output probabilities, not logits, which weakens "
                         "AutoAttack's losses",
    "aa-zero-gradients": "some points have an exactly zero input gradient, so gradient-based "
                         "attacks are unreliable there",
    "aa-square-beats-whitebox": "the black-box Square attack broke points that the white-box "
                                "attacks did not: a sign of gradient masking",
    "aa-dynamic": "the forward pass computes gradients (a dynamic defense); AutoAttack may be "
                  "insufficient",
    "aa-n-classes": "the number of classes does not fit the attacks' targeted settings",
    "aa-other": "AutoAttack logged a warning",
}


def _aa_value(name: str, msg: str) -> tuple[float | None, float | None]:
    if name == "aa-zero-gradients":
        m = re.search(r"there are (?:tensor\()?(\d+)", msg)
        return (float(m.group(1)) if m else None), 0.0
    if name == "aa-square-beats-whitebox":
        m = re.search(r"robust accuracy of\s*([0-9.]+)%", msg)
        return (float(m.group(1)) / 100 if m else None), 0.002
    if name == "aa-randomized":
        return None, RANDOMIZED_TOLERANCE
    return None, None


def classify_autoattack_messages(messages: list[str]) -> list[Flag]:
    """Map AutoAttack's warning messages to named flags, one flag per name in order of first
    appearance: ``aa-randomized``, ``aa-softmax-output``, ``aa-zero-gradients``,
    ``aa-square-beats-whitebox``, ``aa-dynamic``, ``aa-n-classes``, else ``aa-other``.

    ``value`` is the number of zero-gradient points (the largest reported, since APGD reports per
    batch and restart) or the accuracy drop due to Square (a fraction); ``details["messages"]``
    keeps the original texts.

    Severities: ``error`` for ``aa-randomized`` and ``aa-softmax-output`` (the standard evaluation
    is not valid as run) and for ``aa-square-beats-whitebox`` when Square took at least
    :data:`SQUARE_ERROR_DROP` (5 points, the PGD tolerance of ``weak-attack-gap``) off the white-box
    accuracy; a smaller drop is a ``warning`` (AutoAttack's figure already includes Square's
    successes, and on MNIST Square often takes a few points off honest adversarially trained models:
    3 points on our PGD-trained small CNN); the rest are warnings.
    """
    grouped: dict[str, dict] = {}
    for msg in messages:
        text = str(msg).strip()
        if not text:
            continue
        name, severity = "aa-other", "warning"
        for pattern, n, sev in _AA_RULES:
            if re.search(pattern, text, flags=re.IGNORECASE):
                name, severity = n, sev
                break
        value, threshold = _aa_value(name, text)
        g = grouped.setdefault(name, {"severity": severity, "messages": [], "value": None,
                                      "threshold": threshold})
        if text not in g["messages"]:
            g["messages"].append(text)
        if value is not None:
            g["value"] = value if g["value"] is None else max(g["value"], value)
    out = []
    for name, g in grouped.items():
        explain = _AA_EXPLAIN[name]
        first = g["messages"][0]
        if name == "aa-square-beats-whitebox" and (g["value"] or 0) >= SQUARE_ERROR_DROP:
            g["severity"] = "error"
        out.append(Flag(name, g["severity"], f"AutoAttack: {explain} ({first})",
                        value=g["value"], threshold=g["threshold"],
                        details={"messages": list(g["messages"])}))
    return out


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.append(record.getMessage())
        except Exception:  # pragma: no cover - never break the attack over a log line
            pass


@contextmanager
def capture_autoattack_messages() -> Iterator[list[str]]:
    """Collect the warnings AutoAttack logs (to the ``auto-attack`` logger) or raises through
    :mod:`warnings` (its checks do that when called without a logger) inside the block::

        with capture_autoattack_messages() as messages:
            adversary.run_standard_evaluation(x, y)
        flags = classify_autoattack_messages(messages)

    While capturing, the messages are not printed.
    """
    sink: list[str] = []
    logger = logging.getLogger(AA_LOGGER)
    handler = _ListHandler(sink)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield sink
        for w in caught:
            text = str(w.message)
            if any(re.search(p, text, flags=re.IGNORECASE) for p, _, _ in _AA_RULES):
                sink.append(text)
            else:  # not AutoAttack's: let it through
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# --------------------------------------------------------------------------- model checks

@torch.no_grad()
def detect_randomized(model: torch.nn.Module, x: torch.Tensor, *, n_passes: int = 5,
                      tolerance: float = RANDOMIZED_TOLERANCE, batch_size: int = 256) -> dict:
    """Run ``n_passes`` forward passes on the same inputs and compare them.

    Returns ``{"randomized": bool, "max_diff": float, "prediction_changes": int}``: ``max_diff`` is
    the largest L2 distance between the L2-normalised logits of two passes (AutoAttack's measure),
    and the model counts as randomized if it exceeds ``tolerance`` or any prediction changes.
    """
    outs = []
    for _ in range(max(2, int(n_passes))):
        o = torch.cat([model(x[s]) for s in batches(x.shape[0], batch_size)])
        o = o.reshape(o.shape[0], -1).float()
        outs.append(o / (o.norm(dim=1, keepdim=True) + 1e-10))
    preds = [o.argmax(1) for o in outs]
    max_diff = 0.0
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            max_diff = max(max_diff, float((outs[i] - outs[j]).norm(dim=1).max().item()))
    changes = int(sum(int((p != preds[0]).sum().item()) for p in preds[1:]))
    return {"randomized": bool(max_diff > tolerance or changes > 0), "max_diff": max_diff,
            "prediction_changes": changes}


def randomized_model_flag(result: dict, tolerance: float = RANDOMIZED_TOLERANCE) -> Flag | None:
    """The ``randomized-model`` flag for a :func:`detect_randomized` result, or None."""
    if not result["randomized"]:
        return None
    return Flag("randomized-model", "warning",
                f"repeated forward passes disagree (max normalised-logit difference "
                f"{result['max_diff']:.2e}, {result['prediction_changes']} prediction changes): "
                f"evaluating with AutoAttack's 'rand' version (APGD with EOT)",
                value=float(result["max_diff"]), threshold=float(tolerance),
                details={"prediction_changes": int(result["prediction_changes"])})


def autoattack_version_for(model: torch.nn.Module, x: torch.Tensor, *, n_passes: int = 5,
                           requested: str = "standard",
                           batch_size: int = 256) -> tuple[str, list[Flag]]:
    """Call before AutoAttack: ``("rand", [randomized-model flag])`` if the model is randomized,
    else ``(requested, [])``."""
    res = detect_randomized(model, x, n_passes=n_passes, batch_size=batch_size)
    flag = randomized_model_flag(res)
    if flag is None:
        return requested, []
    return "rand", [flag]


def zero_gradient_fraction(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           batch_size: int = 256) -> float:
    """Fraction of points whose input gradient of the cross-entropy loss is exactly zero."""
    if x.shape[0] == 0:
        return float("nan")
    zero = 0
    for s in batches(x.shape[0], batch_size):
        g = input_gradient(model, x[s], y[s])
        zero += int((flat_norm(g, "Linf") == 0).sum().item())
    return zero / x.shape[0]


def zero_gradient_flag(fraction: float, n: int | None = None) -> Flag | None:
    if not (fraction > 0):
        return None
    return Flag("zero-gradients", "error" if fraction >= 0.5 else "warning",
                f"{fraction:.1%} of the points have an exactly zero input gradient: gradient "
                f"attacks cannot move there (quantised or saturated model?)",
                value=float(fraction), threshold=0.0,
                details={} if n is None else {"n": int(n)})
