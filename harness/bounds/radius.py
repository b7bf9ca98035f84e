"""Certified radius by batched bisection over per-example epsilon."""
from __future__ import annotations

import torch

from ..errors import HarnessError
from .bounded import BoundedModel, certified_from

Tensor = torch.Tensor


@torch.no_grad()
def certified_radius(bm: BoundedModel, x: Tensor, y: Tensor, eps_max: float, norm: str = "Linf",
                     method: str = "crown", tol: float = 1e-3) -> tuple[Tensor, int]:
    """Largest certified epsilon in [0, eps_max] per example, to absolute tolerance ``tol``.

    Returns ``(radius (B,), n_bound_calls)``; ``n_bound_calls`` counts batched calls of the
    bound computation (each on the examples still being searched).

    Guarantees, for every example (checked by actual bound calls, not by assuming that
    certification is monotone in epsilon, which CROWN's adaptive slopes do not promise):

    - misclassified points get radius 0;
    - otherwise the point is certified at exactly the returned ``r`` (``r = 0`` is the clean,
      correct prediction);
    - if ``r < eps_max``, it is *not* certified at ``min(r + tol, eps_max)``.
    """
    x = bm._prep_x(x)
    B = x.shape[0]
    y = bm._prep_y(y, B).to(x.device)
    if not (tol > 0) or not (eps_max >= 0):
        raise HarnessError("certified_radius needs tol > 0 and eps_max >= 0")
    dt = x.dtype
    eps_max_t = torch.tensor(float(eps_max), dtype=dt)
    calls = 0
    logits = bm.model(x)
    correct = logits.argmax(1) == y

    def cert(idx: Tensor, eps: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        lb = bm.margin_lower_bounds(x[idx], y[idx], eps, norm, method)
        return certified_from(logits[idx], y[idx], lb, bm.num_classes)

    radius = torch.zeros(B, dtype=dt, device=x.device)
    lo = torch.zeros(B, dtype=dt, device=x.device)
    hi = torch.full((B,), float(eps_max_t), dtype=dt, device=x.device)
    active = correct.clone()
    if float(eps_max_t) > 0 and bool(active.any()):
        idx = active.nonzero().squeeze(1)
        ok = cert(idx, hi[idx])
        radius[idx[ok]] = hi[idx[ok]]
        active[idx[ok]] = False
    while bool(active.any()):
        # bisection until hi - lo <= tol
        while True:
            todo = active & ((hi - lo) > tol)
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            mid = (lo[idx] + hi[idx]) / 2
            stuck = (mid <= lo[idx]) | (mid >= hi[idx])
            if bool(stuck.any()):
                raise HarnessError(f"tol={tol} is below the floating-point resolution of epsilon")
            ok = cert(idx, mid)
            lo[idx[ok]] = mid[ok]
            hi[idx[~ok]] = mid[~ok]
        # verify "not certified at lo + tol" exactly (certification need not be monotone)
        idx = active.nonzero().squeeze(1)
        probe = torch.minimum(lo[idx] + tol, eps_max_t)
        if bool((probe <= lo[idx]).any()):
            raise HarnessError(f"tol={tol} is below the floating-point resolution of epsilon")
        ok = cert(idx, probe)
        done = idx[~ok]
        radius[done] = lo[done]
        active[done] = False
        # certified beyond the bracket: restart from there with the whole remaining range
        again = idx[ok]
        lo[again] = probe[ok]
        hi[again] = eps_max_t
        reached = again[lo[again] >= eps_max_t]
        radius[reached] = eps_max_t
        active[reached] = False
    return radius, calls
