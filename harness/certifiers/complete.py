"""The ``complete`` certifier: a verdict per example from the cascade IBP -> CROWN -> alpha-CROWN ->
attack -> beta-CROWN branch and bound (:func:`harness.bounds.bab.verify`), within a wall-clock budget
per example, as the certified-training papers report (CTBench, ACERT, SABR, TAPS, MTL-IBP).

Per example, on the Linf ball of radius eps clipped to [0, 1], the property "the label's logit is
the largest" (:func:`harness.bounds.bab.robustness_spec`):

- ``verified``: proved (``certified``); ``falsified``: a counterexample that a float64 forward pass
  confirms (in the ball, in [0, 1], another class at least as large); a misclassified example is
  falsified by its own clean input; ``unknown``: the budget ran out first;
- per-example arrays (``<key>_complete`` in examples.npz, next to ``index``, the test-set indices):
  ``verdict`` int8 (0 unknown, 1 verified, 2 falsified), ``falsified`` bool, ``seconds`` float32 (the
  verdict's wall clock), ``radius_seconds`` float32 (the radius search's), ``domains`` int32
  (branch-and-bound domains visited; 0 when decided before BaB), ``cex_linf`` float32 (the
  counterexample's Linf distance from the example, -1 without one);
- the certified radius: bisection on [0, eps_max] to the tolerance, each step a cascade run; the
  radius search shares a second budget of the same size per example (split over its steps), so an
  example costs at most twice ``evaluation.certify_budget_s``. Each step that does not prove counts
  as not proved: the radius is the largest radius proved, a sound lower bound;
- ``details``: verified / falsified / unknown counts, how many each step decided (``decided_by_<step>``),
  the budget and who set it, ``exact_robust_accuracy`` (= certified accuracy) when nothing is left
  unknown, else None; the record adds ``robust_upper_bound`` (clean - |AutoAttack's successes U
  falsified|) and ``sandwich_closed`` (:func:`harness.certifiers.results.falsified_bound`).

Resume: each decided example is written at once to the stage's state folder
(``certify/progress/complete-<settings>/<index>.json``, atomically; the settings are eps, norm, the
budget, eps_max and the tolerance). A killed run keeps them; the rerun reads them back and runs the
cascade only on the others. The files come from the worker that ran the model, so they are read as
untrusted data (plain JSON of the expected fields; anything else is computed again).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.bounds.bab import Budget, robustness_spec, verify
from harness.bounds.graph import build_graph
from harness.core.errors import HarnessError
from harness.core.files import atomic_write_text
from harness.models.load import check_logits

from .base import Certifier, CertResult, Prepared, Skip

VERDICTS = {"unknown": 0, "verified": 1, "falsified": 2}
#: the steps that decide an example (bounds.bab.Verdict.decided_by, and "clean": misclassified)
_DECIDERS = ("clean", "ibp", "crown", "alpha-crown", "attack", "bab", "budget")
_KEYS = ("verdict", "seconds", "domains", "radius", "radius_seconds", "cex_linf", "decided_by")


def settings_tag(*, eps: float, norm: str, budget: float, eps_max: float, tol: float) -> str:
    text = json.dumps([round(float(eps), 12), norm, round(float(budget), 6), round(float(eps_max), 12),
                       round(float(tol), 12)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_decided(path: Path) -> Optional[dict]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or set(d) != set(_KEYS):
        return None
    if d["verdict"] not in (0, 1, 2) or not isinstance(d["decided_by"], str) or len(d["decided_by"]) > 40:
        return None
    for k in ("seconds", "domains", "radius", "radius_seconds", "cex_linf"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
    if d["seconds"] < 0 or d["domains"] < 0 or d["radius"] < 0 or d["radius_seconds"] < 0:
        return None
    return d


class Complete(Certifier):
    name = "complete"
    sound = True
    norms = ("Linf",)
    title = "complete verification: IBP, CROWN, alpha-CROWN, then beta-CROWN branch and bound, per example"

    def prepare(self, model, input_shape, device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        self.check_norm(norm)
        opts = dict(options or {})
        try:  # an operator the bounds do not support: skipped (for the whole job), as the other bound methods
            build_graph(model, tuple(input_shape), device=torch.device(device)).check_modes()
        except HarnessError as e:
            raise Skip(str(e)) from None
        budget = float(opts.get("certify_budget_s") or 60.0)
        state = {"model": model, "device": torch.device(device), "budget": budget,
                 "progress_dir": opts.get("progress_dir"), "threads": opts.get("threads"),
                 "num_classes": opts.get("num_classes")}
        info = {"budget_s_per_example": budget, "budget_set_by": str(opts.get("certify_budget_set_by", "default"))}
        return Prepared(norm=norm, state=state, info=info, batch_size=None)

    def _cascade(self, st: dict, x: torch.Tensor, label: int, eps: float, budget: float, seed: int,
                 num_classes: int):
        lo = (x - eps).clamp(0.0, 1.0).unsqueeze(0)
        hi = (x + eps).clamp(0.0, 1.0).unsqueeze(0)
        return verify(st["model"], lo, hi, robustness_spec(num_classes, label),
                      Budget(timeout_s=max(budget, 1e-3), device=str(st["device"]), threads=st["threads"], seed=seed))

    def _radius(self, st, x, label, eps, verdict, eps_max, tol, seed, num_classes, cex: float = -1.0) -> float:
        """Largest radius proved by bisection on [0, eps_max], within one budget split over its steps
        (below the counterexample's distance ``cex`` when there is one: no larger radius can be proved)."""
        lo_r, hi_r = (eps, eps_max) if verdict == "verified" else (0.0, min(eps, eps_max))
        if verdict == "falsified" and cex >= 0:
            hi_r = min(hi_r, cex)
        if verdict == "verified" and eps >= eps_max:
            return float(eps_max)
        steps = max(1, math.ceil(math.log2(max(hi_r - lo_r, tol) / tol)))
        per = st["budget"] / steps
        while hi_r - lo_r > tol:
            mid = (lo_r + hi_r) / 2
            v = self._cascade(st, x, label, mid, per, seed, num_classes)
            if v.status == "verified":
                lo_r = mid
            else:
                hi_r = mid
        if verdict != "verified" and lo_r == 0.0:
            return 0.0
        return float(lo_r)

    def run(self, prepared: Prepared, x, y, *, index=None, eps: float, norm: str, eps_max: float,
            tol: float, seed: int = 0) -> CertResult:
        st = prepared.state
        model = st["model"]
        B = int(x.shape[0])
        idx = np.arange(B) if index is None else np.asarray(index).reshape(-1)
        with torch.no_grad():
            logits = model(x)
        num_classes = int(st["num_classes"] or logits.shape[1])
        check_logits(logits, B, num_classes, stage="certify complete", index=index)
        correct = (logits.argmax(1) == y).cpu().numpy()
        folder = None
        if st["progress_dir"]:
            folder = Path(st["progress_dir"]) / ("complete-" + settings_tag(eps=eps, norm=norm, budget=st["budget"],
                                                                           eps_max=eps_max, tol=tol))
            folder.mkdir(parents=True, exist_ok=True)
        rows, resumed = [], 0
        for i in range(B):
            path = folder / f"{int(idx[i])}.json" if folder is not None else None
            got = _read_decided(path) if path is not None and path.is_file() else None
            if got is not None and not (got["verdict"] == 1 and not correct[i]):
                rows.append(got)
                resumed += 1
                continue
            rows.append(self._one(st, x[i], int(y[i]), bool(correct[i]), eps, eps_max, tol, seed, num_classes))
            if path is not None:
                atomic_write_text(path, json.dumps(rows[-1]))
        verdict = np.asarray([r["verdict"] for r in rows], np.int8)
        radius = np.where(correct, np.asarray([r["radius"] for r in rows], np.float64), 0.0)
        certified = (verdict == 1) & correct
        if bool((verdict[~correct] == 1).any()):  # pragma: no cover - verify() proved a misclassified point
            raise HarnessError("internal error: complete verified a misclassified example")
        return CertResult(
            certified=certified, radius=radius, correct=correct,
            arrays={"verdict": verdict, "falsified": verdict == 2,
                    "seconds": np.asarray([r["seconds"] for r in rows], np.float32),
                    "radius_seconds": np.asarray([r["radius_seconds"] for r in rows], np.float32),
                    "domains": np.asarray([r["domains"] for r in rows], np.int32),
                    "cex_linf": np.asarray([r["cex_linf"] for r in rows], np.float32)},
            counts={**{f"decided_by_{k}": sum(r["decided_by"] == k for r in rows) for k in _DECIDERS},
                    "verified": int((verdict == 1).sum()), "falsified": int((verdict == 2).sum()),
                    "unknown": int((verdict == 0).sum()), "resumed": resumed,
                    "domains": int(sum(r["domains"] for r in rows))})

    def _one(self, st, xi, label, correct, eps, eps_max, tol, seed, num_classes) -> dict:
        t0 = time.perf_counter()
        if not correct:  # the clean input itself is a counterexample
            return {"verdict": 2, "seconds": time.perf_counter() - t0, "domains": 0, "radius": 0.0,
                    "radius_seconds": 0.0, "cex_linf": 0.0, "decided_by": "clean"}
        v = self._cascade(st, xi, label, eps, st["budget"], seed, num_classes)
        cex = -1.0
        if v.status == "falsified":
            cex = float((v.counterexample.reshape(xi.shape).double() - xi.double()).abs().max())
            if cex > eps + 1e-6:  # pragma: no cover - verify() checks its counterexamples
                raise HarnessError(f"internal error: a counterexample at Linf distance {cex} > eps {eps}")
        seconds = time.perf_counter() - t0
        radius = self._radius(st, xi, label, eps, v.status, eps_max, tol, seed, num_classes, cex) \
            if eps_max > 0 else 0.0
        if v.status == "verified" and radius < eps:  # pragma: no cover - the search starts at eps
            radius = float(eps)
        return {"verdict": VERDICTS[v.status], "seconds": seconds, "domains": int(v.domains),
                "radius": float(radius), "radius_seconds": time.perf_counter() - t0 - seconds, "cex_linf": cex,
                "decided_by": str(v.decided_by)[:40]}

    def details(self, prepared: Prepared, result: CertResult) -> dict:
        d = super().details(prepared, result)
        verdict = np.asarray(result.arrays.get("verdict", np.zeros(0)), np.int64)
        n = int(verdict.size)
        unknown = int((verdict == 0).sum())
        exact = float((verdict == 1).sum() / n) if n and unknown == 0 else None
        d.update({"verified": int((verdict == 1).sum()), "falsified": int((verdict == 2).sum()), "unknown": unknown,
                  "exact_robust_accuracy": exact, "sandwich_closed": exact is not None,
                  "seconds_per_example_max": float(np.max(result.arrays["seconds"])) if n else 0.0})
        return d
