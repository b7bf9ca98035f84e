"""Results of certifiers: concatenation over batches/blocks, and the record entry. No torch.

:func:`concat` joins the :class:`CertResult` of consecutive batches (or of the blocks of a
map, in block order); :func:`summarize` turns the result for the whole test subset into the
record's ``certified[<name>]`` entry (:class:`harness.record.CertifiedRecord`) and the
per-example arrays of ``<id>.examples.npz``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.core.errors import HarnessError
from harness.core.stats import accuracy_with_ci

from .base import Certifier, CertResult, Prepared

CURVE_POINTS = 21


def concat(results: Sequence[CertResult]) -> CertResult:
    """One result from consecutive ones: arrays concatenated, counts summed."""
    if not results:
        return CertResult(np.zeros(0, bool), np.zeros(0, np.float64), np.zeros(0, bool))
    keys = set(results[0].arrays)
    if any(set(r.arrays) != keys for r in results):
        raise HarnessError("certifier results of different batches carry different arrays")
    counts: dict = {}
    for r in results:
        for k, v in r.counts.items():
            counts[k] = counts.get(k, 0) + v
    return CertResult(
        certified=np.concatenate([np.asarray(r.certified, bool) for r in results]),
        radius=np.concatenate([np.asarray(r.radius, np.float64) for r in results]),
        correct=np.concatenate([np.asarray(r.correct, bool) for r in results]),
        arrays={k: np.concatenate([np.asarray(r.arrays[k]) for r in results]) for k in sorted(keys)},
        counts=counts,
    )


def check_result(result: CertResult, n: int, name: str = "certifier") -> None:
    """The invariants every certifier's result must satisfy (a violation is a bug)."""
    c, r, ok = result.certified, result.radius, result.correct
    if not (c.shape == r.shape == ok.shape == (n,)):
        raise HarnessError(f"{name}: result arrays of shapes {c.shape}, {r.shape}, {ok.shape}, "
                           f"expected ({n},)")
    if not np.all(np.isfinite(r)) or bool((r < 0).any()):
        raise HarnessError(f"{name}: radii must be finite and non-negative")
    if bool((c & ~ok).any()):
        raise HarnessError(f"{name}: certified examples {np.nonzero(c & ~ok)[0][:5].tolist()} "
                           "are not correctly classified")
    if bool((r[~ok] != 0).any()):
        raise HarnessError(f"{name}: misclassified examples must have radius 0")
    for k, v in result.arrays.items():
        if np.asarray(v).shape[:1] != (n,):
            raise HarnessError(f"{name}: array {k} does not have one entry per example")


def curve(correct: np.ndarray, radius: np.ndarray, eps_max: float,
          points: int = CURVE_POINTS) -> list[tuple[float, float]]:
    """The fraction of examples that are correct with radius >= e, on a grid over [0, eps_max]."""
    grid = np.linspace(0.0, eps_max, points)
    n = max(1, correct.size)
    return [(float(e), float(np.sum(correct & (radius >= e)) / n)) for e in grid]


def summarize(certifier: Certifier, prepared: Prepared, result: CertResult, *, eps: float,
              eps_max: float, tol: float, seconds: float) -> tuple[dict, dict[str, np.ndarray]]:
    """The record entry ``certified[<name>]`` and the per-example arrays, from the result over
    all examples (``eps_max``/``tol``: the caller's, unless the certifier fixes its own in
    ``prepared``)."""
    name = certifier.name
    n = int(np.asarray(result.certified).size)
    check_result(result, n, name)
    eps_max = float(prepared.eps_max if prepared.eps_max is not None else eps_max)
    tol = float(prepared.tolerance if prepared.tolerance is not None else tol)
    certified = np.asarray(result.certified, bool)
    correct = np.asarray(result.correct, bool)
    radius = np.asarray(result.radius, np.float64)
    acc, ci = accuracy_with_ci(certified)
    acr = float(radius.mean()) if n else 0.0
    bound_examples = result.counts.get("bound_examples")
    rec = {
        "method": name, "eps": float(eps), "certified_accuracy": acc,
        "certified_accuracy_ci95": list(ci), "acr": acr,
        "acr_percent": 100.0 * acr / eps_max if eps_max > 0 else 0.0,
        "eps_max": eps_max, "tolerance": tol, "seconds": float(seconds),
        "probabilistic": not certifier.sound,
        "bound_calls_per_example": (bound_examples / n if n else 0.0) if bound_examples is not None else None,
        "curve": curve(correct, radius, eps_max),
        "details": certifier.details(prepared, result),
    }
    arrays = {f"certified_{name}": certified, f"radius_{name}": radius.astype(np.float32)}
    arrays.update({f"{k}_{name}": np.asarray(v) for k, v in result.arrays.items()})
    return rec, arrays


# ------------------------------------------------------------------ verdicts (the complete certifier)
def falsified_bound(certified: dict, arrays: dict) -> None:
    """For each certifier with a ``falsified_<m>`` array (checked counterexamples): the empirical upper
    bound ``robust <= clean - |AutoAttack's successes U falsified|`` as ``details.robust_upper_bound``
    (over all examples), and ``sandwich_closed`` when it meets the certified accuracy: then the robust
    accuracy is known exactly, whether the complete certifier decided every example
    (``exact_robust_accuracy``) or AutoAttack broke the ones it left unknown.
    ``certified``: the record's entries (objects with ``details``)."""
    correct = arrays.get("clean_correct")
    aa = arrays.get("autoattack_robust")
    for name, rec in (certified or {}).items():
        f = arrays.get(f"falsified_{name}")
        if f is None or correct is None or not f.size:
            continue
        survives = correct.astype(bool) & ~f.astype(bool)
        if aa is not None:
            survives &= aa.astype(bool)
        upper = float(survives.mean())
        d = rec.details
        d["robust_upper_bound"] = upper
        d["robust_upper_bound_from"] = ("clean - (AutoAttack successes U falsified)" if aa is not None
                                        else "clean - falsified")
        d["sandwich_closed"] = abs(upper - rec.certified_accuracy) < 1e-12  # certified <= robust <= upper
