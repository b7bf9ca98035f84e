"""The scaling-law view: a saturating power law of robust accuracy in training compute,

    acc(C) = A - B * (C / C0) ** (-alpha),      A in [0, 1], B >= 0, alpha > 0,

as Bartoldson et al. (ICML 2024, arXiv 2404.09349) fit AutoAttack accuracy against training FLOPs.
``A`` is the predicted plateau. ``C0`` is the geometric mean of the computes, which keeps the fit well
conditioned; it does not change the curve. The fit runs in log space: with ``x = ln(C / C0)``,
``acc = A - B * exp(-alpha * x)`` (scipy's bounded ``curve_fit``).

A fit through a handful of points says little. :func:`fit_saturating_power_law` refuses fewer than
``MIN_POINTS`` points (or fewer than 3 distinct computes) and marks a fit degenerate when it fails,
when a parameter ends on its bound (e.g. the plateau pinned at 100%) or when the plateau's standard
error is larger than ``MAX_PLATEAU_STDERR``; the page then says so instead of printing a plateau.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MIN_POINTS = 4
MAX_PLATEAU_STDERR = 0.10  # 10 points of accuracy
BOUNDS = {"A": (0.0, 1.0), "B": (0.0, 10.0), "alpha": (1e-3, 3.0)}

#: Facts from the paper, shown beside the fit on the CIFAR-10 Linf 8/255 board.
PAPER = {
    "citation": "Bartoldson, Diffenderfer, Parasyris, Kailkhura: Adversarial Robustness Limits via "
                "Scaling-Law and Human-Alignment Studies, ICML 2024",
    "url": "https://arxiv.org/abs/2404.09349",
    "board": ("cifar10", "Linf", 8 / 255),
    "plateau": 0.90,
    "plateau_perfect_synthetic": 0.8965,
    "facts": [
        "Their scaling laws predict CIFAR-10 Linf 8/255 AutoAttack accuracy to plateau near 90%.",
        "With perfect synthetic data the predicted plateau is 89.65%.",
        "Estimated human accuracy on the AutoAttack images that fool the best model also plateaus "
        "near 90%: many remaining 'adversarial' images are ambiguous even to people.",
        "Their training FLOPs count 2 per multiply-add; this board halves them to fvcore's convention.",
    ],
}


@dataclass
class ScalingFit:
    n_points: int
    ok: bool
    message: str
    A: float | None = None
    B: float | None = None
    alpha: float | None = None
    C0: float | None = None
    A_stderr: float | None = None
    rmse: float | None = None
    at_bound: list[str] = field(default_factory=list)

    def predict(self, compute: Sequence[float] | np.ndarray) -> np.ndarray:
        if self.A is None or self.B is None or self.alpha is None or self.C0 is None:
            raise ValueError("no fitted parameters")
        c = np.asarray(compute, dtype=float)
        return self.A - self.B * (c / self.C0) ** (-self.alpha)

    @property
    def A_ci95(self) -> tuple[float, float] | None:
        """Normal-approximation 95% interval of the plateau (A ± 1.96 standard errors)."""
        if self.A is None or self.A_stderr is None or not math.isfinite(self.A_stderr):
            return None
        return (self.A - 1.96 * self.A_stderr, self.A + 1.96 * self.A_stderr)

    def to_json(self) -> dict:
        return {"A_ci95": list(self.A_ci95) if self.A_ci95 else None,
            "n_points": self.n_points, "ok": self.ok, "message": self.message,
            "model": "acc(C) = A - B * (C / C0) ** (-alpha)",
            "A": self.A, "B": self.B, "alpha": self.alpha, "C0": self.C0,
            "A_stderr": self.A_stderr, "rmse": self.rmse, "at_bound": self.at_bound,
        }


def _model(x: np.ndarray, A: float, B: float, alpha: float) -> np.ndarray:
    return A - B * np.exp(-alpha * x)


def fit_saturating_power_law(compute: Sequence[float], accuracy: Sequence[float], *,
                             min_points: int = MIN_POINTS) -> ScalingFit:
    """Fit ``accuracy`` (fractions) against ``compute`` (FLOPs > 0); pairs with a missing or
    non-positive value are dropped first."""
    from scipy.optimize import curve_fit

    pts = [(float(c), float(a)) for c, a in zip(compute, accuracy, strict=False)
           if c is not None and a is not None and math.isfinite(float(c)) and float(c) > 0
           and math.isfinite(float(a))]
    n = len(pts)
    if n < min_points:
        return ScalingFit(n, False, f"too few points for a fit: {n} entr{'y' if n == 1 else 'ies'} with "
                                    f"training FLOPs, at least {min_points} needed")
    c = np.array([p[0] for p in pts])
    a = np.array([p[1] for p in pts])
    if len(np.unique(c)) < 3:
        return ScalingFit(n, False, f"too few distinct training computes for a fit ({len(np.unique(c))} < 3)")
    C0 = float(np.exp(np.mean(np.log(c))))
    x = np.log(c / C0)
    lo = [BOUNDS[k][0] for k in ("A", "B", "alpha")]
    hi = [BOUNDS[k][1] for k in ("A", "B", "alpha")]
    A0 = min(0.999, float(a.max()) + 0.05)
    alpha0 = 0.3
    B0 = float(np.clip((A0 - a[np.argmin(x)]) * math.exp(alpha0 * float(x.min())), 1e-3, hi[1] * 0.99))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, pcov = curve_fit(_model, x, a, p0=[A0, B0, alpha0], bounds=(lo, hi), maxfev=20_000)
    except (RuntimeError, ValueError) as e:
        return ScalingFit(n, False, f"the fit did not converge ({e.__class__.__name__}); no plateau to report",
                          C0=C0)
    A, B, alpha = (float(p) for p in popt)
    resid = a - _model(x, A, B, alpha)
    rmse = float(np.sqrt(np.mean(resid ** 2)))
    stderr = float(np.sqrt(pcov[0, 0])) if np.all(np.isfinite(pcov)) and pcov[0, 0] >= 0 else math.inf
    at_bound = [k for k, v, lo_k, hi_k in zip(("A", "B", "alpha"), (A, B, alpha), lo, hi, strict=True)
                if abs(v - lo_k) <= 1e-3 * max(1.0, abs(lo_k)) or abs(v - hi_k) <= 1e-3 * max(1.0, abs(hi_k))]
    fit = ScalingFit(n, True, "", A=A, B=B, alpha=alpha, C0=C0, A_stderr=stderr, rmse=rmse, at_bound=at_bound)
    if at_bound:
        fit.ok = False
        fit.message = ("degenerate fit: " + ", ".join(at_bound) + " ended on its bound "
                       f"(A = {A:.1%}, alpha = {alpha:.3g}); the data do not pin down a plateau")
    elif not math.isfinite(stderr) or stderr > MAX_PLATEAU_STDERR:
        fit.ok = False
        fit.message = (f"degenerate fit: the plateau A = {A:.1%} has a standard error of "
                       f"{'infinity' if not math.isfinite(stderr) else f'{stderr:.1%}'}; "
                       "the data do not pin it down")
    else:
        fit.message = (f"predicted plateau A = {A:.2%} (standard error {stderr:.2%}, 95% CI "
                       f"[{A - 1.96 * stderr:.1%}, {A + 1.96 * stderr:.1%}]) from {n} entries")
    return fit
