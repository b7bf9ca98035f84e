"""Confidence intervals for accuracies measured on n test points."""
from __future__ import annotations

from scipy.stats import beta


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes out of n (Clopper & Pearson, 1934)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return (lo, hi)


def accuracy_with_ci(flags) -> tuple[float, tuple[float, float]]:
    """Mean of boolean per-example flags, and its 95% Clopper-Pearson interval."""
    import numpy as np

    flags = np.asarray(flags, dtype=bool)
    n, k = int(flags.size), int(flags.sum())
    return (k / n if n else 0.0), clopper_pearson(k, n)
