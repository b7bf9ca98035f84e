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
time projected from the batches a worker has done so far (its seconds per example, times N, over
the number of ranks) exceeds the stage's budget per method. A budget skip is a decision for the
whole job: the worker that makes it records it in the state folder (``certify/shared/skip-<method>``),
every later block leaves the method out, and ``reduce`` reports it skipped.

Work split (:mod:`harness.stages.base`): ``prepare`` builds the bound graph once per worker and
checks which methods are affordable; ``map`` certifies one block (block 0 starts with a batch of 8,
so that the first time projection comes early; full CROWN in batches of at most 32); ``reduce``
computes the accuracies, ACR and curves from the full arrays. Bound results are per example, in
batches fixed by the block, so they do not depend on which rank runs a block.

Randomized smoothing (Cohen et al. 2019) runs when the submission has a ``smoothing`` section and
an L2 threat model; its record is marked ``probabilistic`` (each certificate holds with
probability 1 - alpha), and it certifies the *smoothed* classifier, so it is not part of the
certified <= robust sandwich. Each example's Gaussian noise comes from its own generator, seeded
with :func:`harness.blocks.example_seed` ``(seed, index)``.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from scipy.stats import norm as normal

from ..blocks import Block, example_seed
from ..bounds import BoundedModel, certified_radius, check_affordable, estimate_cost
from ..bounds import smoothing as smoothing_mod
from ..errors import HarnessError
from ..stats import accuracy_with_ci
from .base import BlockResult, EvalContext, Stage, StageResult

DEFAULT_METHODS = ("ibp", "crown")
#: wall-clock budget per certification method, by device type (seconds)
BUDGET_S = {"cpu": 900.0, "cuda": 3600.0}
#: cap on full CROWN's worst-case coefficient floats per example (see check_affordable)
CROWN_MAX_ELEMENTS = {"cpu": 2e9, "cuda": 5e10}
#: batch size cap for full CROWN (its intermediate bounds are the memory-hungry part)
CROWN_BATCH = 32
CURVE_POINTS = 21


def _curve(correct: np.ndarray, radius: np.ndarray, eps_max: float) -> list[tuple[float, float]]:
    grid = np.linspace(0.0, eps_max, CURVE_POINTS)
    n = max(1, correct.size)
    return [(float(e), float(np.sum(correct & (radius >= e)) / n)) for e in grid]


def _methods(ctx: EvalContext) -> list[str]:
    spec = ctx.spec
    return list(spec.evaluation.certify) if spec.evaluation.certify is not None else list(DEFAULT_METHODS)


class CertifyStage(Stage):
    name = "certify"

    def __init__(self, budget_s: Optional[float] = None):
        self.budget_s = budget_s

    def _budget(self, ctx: EvalContext) -> float:
        return self.budget_s if self.budget_s is not None else BUDGET_S.get(ctx.model.device.type, 900.0)

    # ------------------------------------------------------------------------------------------
    def prepare(self, ctx: EvalContext) -> dict:
        """Once per worker: the bound graph, and which methods are affordable on this model (the
        same answer in every worker: it depends on the model and the device type only)."""
        methods = _methods(ctx)
        # static_skips: [[methods, reason], ...] in the order they are reported
        prep = {"bm": None, "cost": None, "methods": [], "static_skips": [], "elapsed": {}, "examples": {}}
        if methods:
            try:
                prep["bm"] = BoundedModel(ctx.model.module, ctx.model.input_shape)
            except HarnessError as e:
                prep["static_skips"].append([methods, str(e)])
        if prep["bm"] is not None:
            prep["cost"] = estimate_cost(prep["bm"])
            for method in methods:
                ok, why = check_affordable(prep["bm"], method, max_crown_elements=CROWN_MAX_ELEMENTS.get(
                    ctx.model.device.type, 2e9))
                if ok:
                    prep["methods"].append(method)
                else:
                    prep["static_skips"].append([[method], f"too large ({why})"])
        return prep

    def _over_budget(self, ctx: EvalContext, prep: dict, method: str, seconds: float, examples: int,
                     more_to_do: bool) -> bool:
        """Add this batch's time; if the projection for the whole job exceeds the budget, record the
        skip for every worker and return True."""
        prep["elapsed"][method] = prep["elapsed"].get(method, 0.0) + seconds
        prep["examples"][method] = done = prep["examples"].get(method, 0) + examples
        n, budget = len(ctx.data), self._budget(ctx)
        projected = prep["elapsed"][method] / done * n / max(1, ctx.world_size)
        if more_to_do and projected > budget:
            ctx.store(self.name).share(f"skip-{method}", f"projected {projected:.0f} s for {n} examples on "
                                       f"{ctx.model.device.type} (after {done}) exceeds the budget of {budget:.0f} s")
            return True
        return False

    def _skipped(self, ctx: EvalContext, method: str) -> str | None:
        return ctx.store(self.name).shared(f"skip-{method}")

    def map(self, ctx: EvalContext, block: Block, prep: dict) -> BlockResult:
        arrays: dict[str, np.ndarray] = {}
        extras: dict = {"static_skips": prep["static_skips"], "cost": prep["cost"], "methods": {}}
        for method in prep["methods"]:
            if self._skipped(ctx, method) is None:
                got = self._exact(ctx, prep, block, method)
                if got is not None:
                    arr, info = got
                    arrays.update(arr)
                    extras["methods"][method] = info
        sm = ctx.spec.smoothing
        if sm is not None and ctx.norm == "L2" and self._skipped(ctx, "smoothing") is None:
            got = self._smoothing(ctx, prep, block)
            if got is not None:
                arr, info = got
                arrays.update(arr)
                extras["methods"]["smoothing"] = info
        return BlockResult(arrays, extras)

    # ------------------------------------------------------------------------------------------
    def _exact(self, ctx, prep, block: Block, method):
        bm = prep["bm"]
        eps, norm_name = float(ctx.eps), ctx.norm
        eps_max = float(ctx.spec.evaluation.eps_max or 2 * eps)
        tol = float(ctx.spec.evaluation.radius_tol or eps / 20)
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
        a0, b0 = block.start, block.stop
        k = b0 - a0
        try:
            certified = np.zeros(k, dtype=bool)
            radius = np.zeros(k, dtype=np.float32)
            correct = np.zeros(k, dtype=bool)
            seconds = 0.0
            # batches fixed by the block: block 0 starts with a batch of 8 for an early projection
            first = min(bs, 8, k) if block.index == 0 else bs
            starts = [0] + list(range(first, k, bs)) if k else []
            for a, b in zip(starts, starts[1:] + [k]):
                t0 = time.perf_counter()
                x = ctx.data.floats(slice(a0 + a, a0 + b), dev)
                y = ctx.data.labels(slice(a0 + a, a0 + b), dev)
                with torch.no_grad():
                    correct[a:b] = (model(x, ctx.data.index[a0 + a:a0 + b]).argmax(1) == y).cpu().numpy()
                c = bm.certify(x, y, eps, norm_name, method)
                r, _ = certified_radius(bm, x, y, eps_max, norm_name, method, tol,
                                        known=(eps, c) if eps <= eps_max else None)
                certified[a:b] = c.cpu().numpy()
                radius[a:b] = r.float().cpu().numpy()
                dt = time.perf_counter() - t0
                seconds += dt
                if self._over_budget(ctx, prep, method, dt, b - a, more_to_do=not (block.last and b == k)):
                    return None
        finally:
            del bm.margin_lower_bounds
        radius = np.where(correct, radius, 0.0).astype(np.float32)
        info = {"seconds": seconds, "calls": count["calls"], "examples": count["examples"], "batch_size": bs}
        return ({f"certified_{method}": certified, f"radius_{method}": radius,
                 f"correct_{method}": correct}, info)

    def _smoothing(self, ctx, prep, block: Block):
        sm = ctx.spec.smoothing
        dev = ctx.model.device
        k = len(block)
        pred = np.full(k, smoothing_mod.ABSTAIN, dtype=np.int64)
        radius = np.zeros(k, dtype=np.float64)
        seconds = 0.0
        for j in range(k):
            t0 = time.perf_counter()
            i = block.start + j
            model = ctx.model.checked(f"{self.name}, smoothing noise", example=int(ctx.data.index[i]))
            x = ctx.data.floats(slice(i, i + 1), dev)
            gen = torch.Generator().manual_seed(example_seed(ctx.seed, int(ctx.data.index[i])))
            p, r = smoothing_mod.certify(model, x, sm.sigma, n0=sm.n0, n=sm.n, alpha=sm.alpha,
                                         batch_size=ctx.batch_size, generator=gen)
            pred[j], radius[j] = int(p[0]), float(r[0])
            dt = time.perf_counter() - t0
            seconds += dt
            if self._over_budget(ctx, prep, "smoothing", dt, 1, more_to_do=not (block.last and j == k - 1)):
                return None
        return ({"pred_smoothing": pred.astype(np.int16), "radius_smoothing": radius},
                {"seconds": seconds})

    # ------------------------------------------------------------------------------------------
    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        spec = ctx.spec
        n = len(ctx.data)
        methods = _methods(ctx)
        eps, norm_name = float(ctx.eps), ctx.norm
        eps_max = float(spec.evaluation.eps_max or 2 * eps)
        tol = float(spec.evaluation.radius_tol or eps / 20)
        static = [(list(ms), str(why)) for ms, why in (extras[0].get("static_skips") or [])] if extras else []
        reported: set[int] = set()
        store = ctx.store(self.name)
        records: dict[str, dict] = {}
        out: dict[str, np.ndarray] = {}
        skipped: list[str] = []

        def infos(method):
            got = [e.get("methods", {}).get(method) for e in extras]
            return got if all(isinstance(g, dict) for g in got) else None

        def missing(method):
            raise HarnessError(f"the blocks of stage certify in {ctx.state_dir} lack the results of {method}; "
                               "run again with --restart")

        for method in methods:
            entry = next((i for i, (ms, _) in enumerate(static) if method in ms), None)
            if entry is not None:
                if entry not in reported:
                    reported.add(entry)
                    skipped.append(f"{', '.join(static[entry][0])}: {static[entry][1]}")
                continue
            if (why := store.shared(f"skip-{method}")) is not None:
                skipped.append(f"{method}: {why}")
                continue
            info = infos(method)
            keys = (f"certified_{method}", f"radius_{method}", f"correct_{method}")
            if info is None or any(k not in arrays for k in keys):
                missing(method)
            certified = arrays[keys[0]].astype(bool)
            radius = arrays[keys[1]].astype(np.float32)
            correct = arrays[keys[2]].astype(bool)
            acc, ci = accuracy_with_ci(certified)
            acr = float(radius.astype(np.float64).mean()) if n else 0.0
            calls = sum(int(i["calls"]) for i in info)
            examples = sum(int(i["examples"]) for i in info)
            records[method] = {
                "method": method, "eps": eps, "certified_accuracy": acc,
                "certified_accuracy_ci95": list(ci), "acr": acr,
                "acr_percent": 100.0 * acr / eps_max if eps_max > 0 else 0.0,
                "eps_max": eps_max, "tolerance": tol, "seconds": sum(float(i["seconds"]) for i in info),
                "probabilistic": False,
                "bound_calls_per_example": examples / n if n else 0.0,
                "curve": _curve(correct, radius, eps_max),
                "details": {"norm": norm_name, "bound_calls": calls, "batch_size": int(info[0]["batch_size"]),
                            "cost": extras[0].get("cost")},
            }
            out[keys[0]], out[keys[1]] = certified, radius

        if spec.smoothing is not None:
            if norm_name != "L2":
                skipped.append("smoothing: randomized smoothing certifies L2 balls; the threat model is "
                               f"{norm_name}")
            elif (why := store.shared("skip-smoothing")) is not None:
                skipped.append(f"smoothing: {why}")
            else:
                info = infos("smoothing")
                if info is None or "pred_smoothing" not in arrays or "radius_smoothing" not in arrays:
                    missing("smoothing")
                rec, arr = self._smoothing_record(ctx, eps, arrays["pred_smoothing"].astype(np.int64),
                                                  arrays["radius_smoothing"].astype(np.float64),
                                                  sum(float(i["seconds"]) for i in info))
                records["smoothing"] = rec
                out.update(arr)

        summary = {"certified": records or None, "certify_skipped": "; ".join(skipped) or None}
        return StageResult(summary=summary, arrays=out)

    def _smoothing_record(self, ctx, eps, pred, radius, seconds):
        sm = ctx.spec.smoothing
        n = len(ctx.data)
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
