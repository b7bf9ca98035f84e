"""Certified robustness: IBP / CROWN / CROWN-IBP bounds, and randomized smoothing (L2).

For each exact method (``evaluation.certify``, default ``[ibp, crown]``):

- ``certified_<method>``: certified at the threat model's eps (correct and every margin lower
  bound > 0), one bound call per batch;
- ``radius_<method>``: certified radius in [0, eps_max] by batched bisection
  (:func:`harness.bounds.certified_radius`, started from the certification at eps), to absolute
  tolerance ``tolerance``; 0 for misclassified points;
- the record's ``certified[<method>]``: certified accuracy with its 95% CI, ACR (mean radius,
  misclassified = 0) and ACR as a percentage of eps_max, the curve of the fraction of correct
  points with radius >= e on a grid over [0, eps_max], seconds, bound evaluations per example.

A method is skipped, with the reason in ``certify_skipped``, when the model cannot be traced into
supported operators, when it is too large (:func:`harness.bounds.check_affordable`), or when the
time projected from the batches done so far exceeds the stage's budget per method.

Randomized smoothing (Cohen et al. 2019) runs when the submission has a ``smoothing`` section and
an L2 threat model; its record is marked ``probabilistic`` (each certificate holds with
probability 1 - alpha), and it certifies the *smoothed* classifier, so it is not part of the
certified <= robust sandwich.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from scipy.stats import norm as normal

from ..bounds import BoundedModel, certified_radius, check_affordable, estimate_cost
from ..bounds import smoothing as smoothing_mod
from ..errors import HarnessError
from ..stats import accuracy_with_ci
from .base import EvalContext, StageResult

DEFAULT_METHODS = ("ibp", "crown")
#: wall-clock budget per certification method, by device type (seconds)
BUDGET_S = {"cpu": 900.0, "cuda": 3600.0}
#: cap on full CROWN's worst-case coefficient floats per example (see check_affordable)
CROWN_MAX_ELEMENTS = {"cpu": 2e9, "cuda": 5e10}
#: batch size cap for full CROWN (its intermediate bounds are the memory-hungry part)
CROWN_BATCH = 32
CURVE_POINTS = 21


class _Skip(Exception):
    pass


def _curve(correct: np.ndarray, radius: np.ndarray, eps_max: float) -> list[tuple[float, float]]:
    grid = np.linspace(0.0, eps_max, CURVE_POINTS)
    n = max(1, correct.size)
    return [(float(e), float(np.sum(correct & (radius >= e)) / n)) for e in grid]


class CertifyStage:
    name = "certify"
    reads: tuple[str, ...] = ()

    def __init__(self, budget_s: Optional[float] = None):
        self.budget_s = budget_s

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: EvalContext) -> StageResult:
        spec = ctx.spec
        methods = list(spec.evaluation.certify) if spec.evaluation.certify is not None else list(DEFAULT_METHODS)
        eps, norm_name = float(ctx.eps), ctx.norm
        eps_max = float(spec.evaluation.eps_max or 2 * eps)
        tol = float(spec.evaluation.radius_tol or eps / 20)
        budget = self.budget_s if self.budget_s is not None else BUDGET_S.get(ctx.model.device.type, 900.0)
        records: dict[str, dict] = {}
        arrays: dict[str, np.ndarray] = {}
        skipped: list[str] = []

        bm: Optional[BoundedModel] = None
        if methods:
            try:
                bm = BoundedModel(ctx.model.module, ctx.model.input_shape)
            except HarnessError as e:
                skipped.append(f"{', '.join(methods)}: {e}")
        if bm is not None:
            for method in methods:
                ok, why = check_affordable(bm, method, max_crown_elements=CROWN_MAX_ELEMENTS.get(
                    ctx.model.device.type, 2e9))
                if not ok:
                    skipped.append(f"{method}: too large ({why})")
                    continue
                try:
                    rec, arr = self._exact(ctx, bm, method, eps, norm_name, eps_max, tol, budget)
                except _Skip as s:
                    skipped.append(f"{method}: {s}")
                    continue
                records[method] = rec
                arrays.update(arr)

        if spec.smoothing is not None:
            if norm_name != "L2":
                skipped.append("smoothing: randomized smoothing certifies L2 balls; the threat model is "
                               f"{norm_name}")
            else:
                try:
                    rec, arr = self._smoothing(ctx, eps, budget)
                    records["smoothing"] = rec
                    arrays.update(arr)
                except _Skip as s:
                    skipped.append(f"smoothing: {s}")

        summary = {"certified": records or None, "certify_skipped": "; ".join(skipped) or None}
        return StageResult(summary=summary, arrays=arrays)

    # ------------------------------------------------------------------------------------------
    def _exact(self, ctx, bm, method, eps, norm_name, eps_max, tol, budget):
        n = len(ctx.data)
        dev = ctx.model.device
        bs = ctx.batch_size if method != "crown" else min(ctx.batch_size, CROWN_BATCH)
        count = {"calls": 0, "examples": 0}
        inner = BoundedModel.margin_lower_bounds.__get__(bm)

        def counted(x, *args, **kwargs):
            count["calls"] += 1
            count["examples"] += int(x.shape[0])
            return inner(x, *args, **kwargs)

        bm.margin_lower_bounds = counted  # count bound evaluations made by certify and the search
        model = ctx.model.checked(self.name)
        try:
            certified = np.zeros(n, dtype=bool)
            radius = np.zeros(n, dtype=np.float32)
            correct = np.zeros(n, dtype=bool)
            t0 = time.perf_counter()
            # a small first batch, so that the time projection comes early
            starts = [0] + list(range(min(bs, 8, n), n, bs)) if n else []
            bounds_ = list(zip(starts, starts[1:] + [n]))
            for a, b in ctx.progress(bounds_, total=len(bounds_), desc=f"certify {method}", unit="batch"):
                x = ctx.data.floats(slice(a, b), dev)
                y = ctx.data.labels(slice(a, b), dev)
                with torch.no_grad():
                    correct[a:b] = (model(x, ctx.data.index[a:b]).argmax(1) == y).cpu().numpy()
                c = bm.certify(x, y, eps, norm_name, method)
                r, _ = certified_radius(bm, x, y, eps_max, norm_name, method, tol,
                                        known=(eps, c) if eps <= eps_max else None)
                certified[a:b] = c.cpu().numpy()
                radius[a:b] = r.float().cpu().numpy()
                elapsed = time.perf_counter() - t0
                projected = elapsed / b * n
                if b < n and projected > budget:
                    raise _Skip(f"projected {projected:.0f} s for {n} examples on {dev.type} "
                                f"(after {b}) exceeds the budget of {budget:.0f} s")
            seconds = time.perf_counter() - t0
        finally:
            del bm.margin_lower_bounds
        radius = np.where(correct, radius, 0.0).astype(np.float32)
        acc, ci = accuracy_with_ci(certified)
        acr = float(radius.astype(np.float64).mean()) if n else 0.0
        rec = {
            "method": method, "eps": eps, "certified_accuracy": acc,
            "certified_accuracy_ci95": list(ci), "acr": acr,
            "acr_percent": 100.0 * acr / eps_max if eps_max > 0 else 0.0,
            "eps_max": eps_max, "tolerance": tol, "seconds": seconds, "probabilistic": False,
            "bound_calls_per_example": count["examples"] / n if n else 0.0,
            "curve": _curve(correct, radius, eps_max),
            "details": {"norm": norm_name, "bound_calls": count["calls"], "batch_size": bs,
                        "cost": estimate_cost(bm)},
        }
        return rec, {f"certified_{method}": certified, f"radius_{method}": radius}

    # ------------------------------------------------------------------------------------------
    def _smoothing(self, ctx, eps, budget):
        sm = ctx.spec.smoothing
        n = len(ctx.data)
        dev = ctx.model.device
        gen = torch.Generator().manual_seed(int(ctx.seed))
        pred = np.full(n, smoothing_mod.ABSTAIN, dtype=np.int64)
        radius = np.zeros(n, dtype=np.float64)
        t0 = time.perf_counter()
        for i in ctx.progress(range(n), total=n, desc="certify smoothing", unit="example"):
            model = ctx.model.checked(f"{self.name}, smoothing noise", example=int(ctx.data.index[i]))
            x = ctx.data.floats(slice(i, i + 1), dev)
            p, r = smoothing_mod.certify(model, x, sm.sigma, n0=sm.n0, n=sm.n, alpha=sm.alpha,
                                         batch_size=ctx.batch_size, generator=gen)
            pred[i], radius[i] = int(p[0]), float(r[0])
            projected = (time.perf_counter() - t0) / (i + 1) * n
            if i + 1 < n and projected > budget:
                raise _Skip(f"projected {projected:.0f} s for {n} examples on {dev.type} "
                            f"(after {i + 1}) exceeds the budget of {budget:.0f} s")
        seconds = time.perf_counter() - t0
        y = ctx.data.y.numpy()
        correct = pred == y
        certified = correct & (radius >= eps)
        acc, ci = accuracy_with_ci(certified)
        acr = smoothing_mod.acr_macer(radius, correct)
        # the largest radius n samples can certify (all n draws on the top class)
        eps_max = float(sm.sigma * normal.ppf(sm.alpha ** (1.0 / sm.n)))
        rec = {
            "method": "smoothing", "eps": eps, "certified_accuracy": acc,
            "certified_accuracy_ci95": list(ci), "acr": acr,
            "acr_percent": 100.0 * acr / eps_max if eps_max > 0 else 0.0,
            "eps_max": eps_max, "tolerance": 0.0, "seconds": seconds, "probabilistic": True,
            "bound_calls_per_example": None,
            "curve": _curve(correct, np.where(correct, radius, 0.0), eps_max),
            "details": {"sigma": sm.sigma, "n0": sm.n0, "n": sm.n, "alpha": sm.alpha,
                        "abstained": int(np.sum(pred == smoothing_mod.ABSTAIN)),
                        "smoothed_accuracy": float(np.mean(correct)) if n else 0.0},
        }
        return rec, {"certified_smoothing": certified, "radius_smoothing": radius.astype(np.float32),
                     "pred_smoothing": pred.astype(np.int16)}
