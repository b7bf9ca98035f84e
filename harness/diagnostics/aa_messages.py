"""AutoAttack's own check messages: captured once, parsed into named flags.

pyautoattack's checks (``pyautoattack/checks.py``: randomness, softmax outputs, zero gradients, a
dynamic forward pass, Square beating the white-box attacks, the number of classes) only log
warnings to the ``auto-attack`` logger, or raise them through :mod:`warnings` when called without
a logger. :class:`AutoAttackCapture` is the one handler that collects them: the ``autoattack``
stage attaches it while the attacks run (it also shows AutoAttack's progress lines on the stage's
progress bar) and stores the messages in the record; :func:`capture_autoattack_messages` wraps it
as a context manager. :func:`classify_autoattack_messages` turns the messages into ``aa-*``
:class:`~harness.record.Flag` objects.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

from harness.record.schema import Flag

from .rules import RANDOMIZED_TOLERANCE

__all__ = ["AA_LOGGER", "SQUARE_ERROR_DROP", "AutoAttackCapture", "capture_autoattack_messages",
           "classify_autoattack_messages"]

AA_LOGGER = "auto-attack"
SQUARE_ERROR_DROP = 0.05  # aa-square-beats-whitebox is an error from this accuracy drop on

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


# --------------------------------------------------------------------------- capture

class AutoAttackCapture(logging.Handler):
    """A handler for the ``auto-attack`` logger: keeps each distinct warning in ``warnings`` (in
    order of first appearance) and, given a tqdm ``bar``, shows AutoAttack's progress lines
    ("... - successfully perturbed ...") as its postfix."""

    def __init__(self, bar=None):
        super().__init__(logging.DEBUG)
        self.warnings: list[str] = []
        self.bar = bar

    def add(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                self.add(msg)
            elif self.bar is not None and " - " in msg and "successfully perturbed" in msg:
                self.bar.set_postfix_str(msg, refresh=True)
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
    logger = logging.getLogger(AA_LOGGER)
    handler = AutoAttackCapture()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.warnings
        for w in caught:
            text = str(w.message)
            if any(re.search(p, text, flags=re.IGNORECASE) for p, _, _ in _AA_RULES):
                handler.add(text)
            else:  # not AutoAttack's: let it through
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# --------------------------------------------------------------------------- parsing

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
