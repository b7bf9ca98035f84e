"""Certified robustness: every certifier of the registry (:mod:`harness.certifiers`), mapped over blocks.

The methods are ``evaluation.certify`` (default ``[ibp, crown]``), plus ``smoothing`` when the
submission has a ``smoothing`` section. For each method ``m`` the stage records

- ``certified_<m>``: certified at the threat model's eps;
- ``radius_<m>``: the certified radius in [0, eps_max] (0 for misclassified points), to the
  certifier's tolerance (bisection for the bound methods, closed forms for ``lipschitz`` and
  ``smoothing``);
- any extra per-example array of the certifier as ``<key>_<m>`` (smoothing's ``pred_smoothing``);
- the record's ``certified[<m>]`` (:func:`harness.certifiers.results.summarize`): certified
  accuracy with its 95% CI, ACR and ACR as a percentage of eps_max, the curve over [0, eps_max],
  seconds, ``probabilistic`` (= not the certifier's ``sound``), bound evaluations per example, and
  the certifier's ``details``.

Work split (:mod:`harness.stages.base`):

- ``prepare`` (once per worker): ``certifiers.get(m).prepare(...)`` for each method, with one
  options dict per model (its ``cache`` shares the traced bound graph between ibp, crown,
  crown-ibp and lipschitz);
- ``map`` (per block): ``run`` on the block's examples in batches fixed by the block (block 0
  starts with a batch of 8, so that the first time projection comes early; a certifier may cap
  the batch, e.g. full CROWN at 32, smoothing at 1), giving per-example arrays that do not depend
  on which rank computes the block (smoothing draws each example's noise from (seed, index));
- ``reduce`` (once, in the supervisor, without the model): the blocks' results concatenated in
  block order and summarized.

A method is skipped, with ``"<m>: <reason>"`` in ``certify_skipped``, when its ``prepare`` raises
:class:`harness.certifiers.Skip` (unsupported operator, too large for the device, wrong norm), or
when the time projected from the batches a worker has done so far (its seconds per example, times
N, over the number of ranks) exceeds the stage's budget per method. Either skip is a decision for
the whole job, recorded once in the state folder (``certify/shared/skip-<m>``, first writer wins):
every later block leaves the method out, and ``reduce`` drops it whatever blocks computed before
the decision, so the record does not depend on which rank decided, or when.

Randomized smoothing's record is ``probabilistic`` (each certificate holds with probability
1 - alpha, and it certifies the *smoothed* classifier), so it is not part of the certified <=
robust sandwich nor of certify-first; both read soundness from the registry.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Optional

import numpy as np

from harness.core.errors import HarnessError
from harness.stages.blocks import Block

from .. import certifiers
from ..certifiers import CertResult, Prepared, Skip
from ..certifiers.results import check_result, concat, summarize
from .base import BlockResult, EvalContext, Stage, StageResult

DEFAULT_METHODS = ("ibp", "crown")
#: wall-clock budget per certification method, by device type (seconds)
BUDGET_S = {"cpu": 900.0, "cuda": 3600.0}
#: examples in block 0's first batch: the first time projection comes early
FIRST_BATCH = 8
#: names of the per-example arrays every certifier returns (extra arrays may not reuse them)
CORE_ARRAYS = ("certified", "radius", "correct")


def selected_methods(spec) -> list[str]:
    """The certifiers to run, in order: ``evaluation.certify`` (default ``DEFAULT_METHODS``), plus
    ``smoothing`` when the submission has a smoothing section (it alone turns smoothing on)."""
    names = list(spec.evaluation.certify) if spec.evaluation.certify is not None else list(DEFAULT_METHODS)
    if spec.smoothing is not None and "smoothing" not in names:
        names.append("smoothing")
    return list(dict.fromkeys(names))


def certifier_options(ctx: EvalContext, cache: dict) -> dict:
    """The options every certifier's ``prepare`` gets (one ``cache`` per model per process)."""
    from harness.core.settings import certify_budget, certify_budget_cap

    sm = ctx.spec.smoothing
    cap, _ = certify_budget_cap(getattr(getattr(ctx, "options", None), "certify_budget", None))
    budget, set_by = certify_budget(ctx.spec.evaluation.certify_budget_s, cap)
    return {
        "cache": cache,
        # the complete certifier: seconds per example, who set them, and where decided examples are kept
        "certify_budget_s": budget, "certify_budget_set_by": set_by,
        "progress_dir": str(ctx.store("certify").dir / "progress") if hasattr(ctx, "store") else None,  # audit: none
        "batch_size": ctx.batch_size,  # smoothing: noisy copies per forward pass
        "num_classes": ctx.model.num_classes,
        "smoothing": sm.model_dump() if sm is not None else None,
    }


def _radii(ctx: EvalContext) -> tuple[float, float]:
    """(eps_max, tolerance) of the radius search: the submission's, else 2 eps and eps / 20."""
    eps = float(ctx.eps)
    ev = ctx.spec.evaluation
    return float(ev.eps_max or 2 * eps), float(ev.radius_tol or eps / 20)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (numpy scalars become numbers): it travels in a block's extras."""
    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, (tuple, set)):
            return list(o)
        raise TypeError(type(o).__name__)

    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as e:
        raise HarnessError(f"internal error: certifier details are not JSON ({e})")


class CertifyStage(Stage):
    name = "certify"

    def __init__(self, budget_s: Optional[float] = None):
        self.budget_s = budget_s

    def _budget(self, ctx: EvalContext, prep: Optional[dict] = None, name: str = "") -> float:
        base = self.budget_s if self.budget_s is not None else BUDGET_S.get(ctx.model.device.type, 900.0)
        per_example = (prep or {}).get("per_example_budget", {}).get(name)
        if per_example is not None:  # a certifier bounded per example (complete): never skipped by projection
            return max(base, 2.0 * per_example * len(ctx.data) / max(1, ctx.world_size) + 60.0)
        return base

    # ------------------------------------------------------------------------------------------
    def prepare(self, ctx: EvalContext) -> dict:
        """Once per worker: each method's ``prepare``. A :class:`Skip` is shared with the whole job
        (it depends on the model and the device type only, so every worker would reach it)."""
        store = ctx.store(self.name)
        opts = certifier_options(ctx, {})
        prep: dict = {"methods": {}, "elapsed": {}, "examples": {}}
        for name in selected_methods(ctx.spec):
            if store.shared(f"skip-{name}") is not None:
                continue
            c = certifiers.get(name)
            try:
                p = c.prepare(ctx.model.module, ctx.model.input_shape, ctx.model.device, norm=ctx.norm,
                              options=opts)
            except Skip as s:
                store.share(f"skip-{name}", " ".join(str(s).split()) or "not applicable")
                continue
            prep["methods"][name] = (c, p)
            if p.info.get("budget_s_per_example") is not None:
                prep.setdefault("per_example_budget", {})[name] = float(p.info["budget_s_per_example"])
        return prep

    def _over_budget(self, ctx: EvalContext, prep: dict, name: str, seconds: float, examples: int,
                     more_to_do: bool) -> bool:
        """Add this batch's time; if the projection for the whole job exceeds the budget, record the
        skip for every worker and return True."""
        prep["elapsed"][name] = prep["elapsed"].get(name, 0.0) + seconds
        prep["examples"][name] = done = prep["examples"].get(name, 0) + examples
        n, budget = len(ctx.data), self._budget(ctx, prep, name)
        projected = prep["elapsed"][name] / done * n / max(1, ctx.world_size)
        if more_to_do and projected > budget:
            ctx.store(self.name).share(f"skip-{name}", f"projected {projected:.0f} s for {n} examples on "
                                       f"{ctx.model.device.type} (after {done}) exceeds the budget of {budget:.0f} s")
            return True
        return False

    def map(self, ctx: EvalContext, block: Block, prep: dict) -> BlockResult:
        store = ctx.store(self.name)
        arrays: dict[str, np.ndarray] = {}
        extras: dict = {"methods": {}}
        for name, (c, p) in prep["methods"].items():
            if store.shared(f"skip-{name}") is not None:
                continue
            got = self._certify(ctx, prep, block, c, p)
            if got is None:  # over budget: skipped for the whole job
                continue
            res, seconds, bs = got
            bad = [k for k in res.arrays if k in CORE_ARRAYS]
            if bad:
                raise HarnessError(f"internal error: certifier {name} returns an extra array named {bad[0]}")
            arrays[f"certified_{name}"] = np.asarray(res.certified, bool)
            arrays[f"radius_{name}"] = np.asarray(res.radius, np.float64)
            arrays[f"correct_{name}"] = np.asarray(res.correct, bool)
            for k, v in res.arrays.items():
                arrays[f"{k}_{name}"] = np.asarray(v)
            extras["methods"][name] = _jsonable({
                "seconds": seconds, "batch_size": bs, "counts": res.counts, "arrays": sorted(res.arrays),
                "prepared": {"norm": p.norm, "info": p.info, "eps_max": p.eps_max, "tolerance": p.tolerance},
            })
        return BlockResult(arrays, extras)

    def _certify(self, ctx: EvalContext, prep: dict, block: Block, c, p: Prepared
                 ) -> tuple[CertResult, float, int] | None:
        """``c.run`` over the block in batches fixed by the block; None when over budget."""
        eps = float(ctx.eps)
        eps_max, tol = _radii(ctx)
        dev = ctx.model.device
        bs = min(ctx.batch_size, p.batch_size or ctx.batch_size)
        a0, k = block.start, len(block)
        first = min(bs, FIRST_BATCH, k) if block.index == 0 else bs
        starts = [0] + list(range(first, k, bs)) if k else []
        parts, seconds = [], 0.0
        for a, b in zip(starts, starts[1:] + [k], strict=False):
            t0 = time.perf_counter()
            sl = slice(a0 + a, a0 + b)
            parts.append(c.run(p, ctx.data.floats(sl, dev), ctx.data.labels(sl, dev), index=ctx.data.index[sl],
                               eps=eps, norm=ctx.norm, eps_max=eps_max, tol=tol, seed=ctx.seed))
            check_result(parts[-1], b - a, c.name)
            dt = time.perf_counter() - t0
            seconds += dt
            if self._over_budget(ctx, prep, c.name, dt, b - a, more_to_do=not (block.last and b == k)):
                return None
        return concat(parts), seconds, bs

    # ------------------------------------------------------------------------------------------
    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        eps = float(ctx.eps)
        eps_max, tol = _radii(ctx)
        store = ctx.store(self.name)
        records: dict[str, dict] = {}
        out: dict[str, np.ndarray] = {}
        skipped: list[str] = []

        def missing(name):
            raise HarnessError(f"the blocks of stage certify in {ctx.state_dir} lack the results of {name}; "
                               "run again with --restart")

        for name in selected_methods(ctx.spec):
            if (why := store.shared(f"skip-{name}")) is not None:
                skipped.append(f"{name}: {why}")
                continue
            if not extras:  # no examples, no blocks
                continue
            infos = [e.get("methods", {}).get(name) if isinstance(e, dict) else None for e in extras]
            if not all(isinstance(i, dict) for i in infos):
                missing(name)
            extra_keys = infos[0].get("arrays")
            if not isinstance(extra_keys, list) or not all(isinstance(k, str) for k in extra_keys):
                missing(name)
            keys = [f"{k}_{name}" for k in (*CORE_ARRAYS, *extra_keys)]
            if any(k not in arrays for k in keys):
                missing(name)
            counts: dict[str, float] = {}
            for i in infos:
                for k, v in (i.get("counts") or {}).items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                        missing(name)
                    counts[k] = counts.get(k, 0) + v
            whole = CertResult(certified=arrays[f"certified_{name}"].astype(bool),
                               radius=arrays[f"radius_{name}"].astype(np.float64),
                               correct=arrays[f"correct_{name}"].astype(bool),
                               arrays={k: arrays[f"{k}_{name}"] for k in extra_keys}, counts=counts)
            # the preparation as block 0's worker made it (deterministic in the model and device type)
            pi = infos[0].get("prepared") or {}
            prepared = Prepared(norm=str(pi.get("norm", ctx.norm)), info=dict(pi.get("info") or {}),
                                eps_max=pi.get("eps_max"), tolerance=pi.get("tolerance"))
            c = certifiers.get(name)
            rec, arr = summarize(c, prepared, whole, eps=eps, eps_max=eps_max, tol=tol,
                                 seconds=sum(float(i.get("seconds", 0.0)) for i in infos))
            rec["details"]["batch_size"] = int(infos[0].get("batch_size") or 0)  # examples per run call
            records[name] = rec
            out.update(arr)

        summary = {"certified": records or None, "certify_skipped": "; ".join(skipped) or None}
        return StageResult(summary=summary, arrays=out)
