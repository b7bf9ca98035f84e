"""Certified radius by batched bisection over per-example epsilon."""
from __future__ import annotations

from typing import Optional

import torch

from harness.core.errors import HarnessError

from .bounded import BoundedModel, certified_from

Tensor = torch.Tensor


@torch.no_grad()
def certified_radius(bm: BoundedModel, x: Tensor, y: Tensor, eps_max: float, norm: str = "Linf",
                     method: str = "crown", tol: float = 1e-3, *,
                     known: Optional[tuple[float, Tensor]] = None) -> tuple[Tensor, int]:
    """Largest certified epsilon in [0, eps_max] per example, to absolute tolerance ``tol``.

    Returns ``(radius (B,), n_bound_calls)``; ``n_bound_calls`` counts batched calls of the
    bound computation (each on the examples still being searched).

    Guarantees, for every example (checked by actual bound calls, not by assuming that
    certification is monotone in epsilon, which CROWN's adaptive slopes do not promise):

    - misclassified points get radius 0;
    - otherwise the point is certified at exactly the returned ``r`` (``r = 0`` stands for the
      clean, correct prediction);
    - if ``r < eps_max``, it is *not* certified at ``min(r + tol, eps_max)``.

    ``known = (eps0, certified0)``: the result of an earlier ``certify`` at ``eps0`` on the same
    batch (same norm and method); it starts the bracket (certified: ``r >= eps0`` is searched
    first; not certified: the search stays below ``eps0``) and saves calls.
    """
    x = bm._prep_x(x)
    B = x.shape[0]
    y = bm._prep_y(y, B).to(x.device)
    if not (tol > 0) or not (eps_max >= 0):
        raise HarnessError("certified_radius needs tol > 0 and eps_max >= 0")
    dt, dev = x.dtype, x.device
    eps_max_t = torch.tensor(float(eps_max), dtype=dt, device=dev)
    calls = 0
    logits = bm.model(x)
    correct = logits.argmax(1) == y

    def cert(idx: Tensor, eps: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        lb = bm.margin_lower_bounds(x[idx], y[idx], eps, norm, method)
        return certified_from(logits[idx], y[idx], lb, bm.num_classes)

    radius = torch.zeros(B, dtype=dt, device=dev)
    lo = torch.zeros(B, dtype=dt, device=dev)          # certified at lo (0: the clean point)
    hi = eps_max_t.expand(B).clone()                    # not certified at hi, where hi_known
    hi_known = torch.zeros(B, dtype=torch.bool, device=dev)
    active = correct.clone()
    if known is not None:
        e0 = torch.tensor(float(known[0]), dtype=dt, device=dev)
        c0 = torch.as_tensor(known[1], device=dev).bool()
        if c0.shape != (B,):
            raise HarnessError(f"known certification mask must have shape ({B},)")
        if 0 < float(e0) <= float(eps_max):
            lo = torch.where(active & c0, e0, lo)
            hi = torch.where(active & ~c0, e0, hi)
            hi_known = active & ~c0
    if float(eps_max_t) == 0:
        active[:] = False
    while bool(active.any()):
        # the top of the bracket: eps_max, unless something above lo is known to fail
        top = active & ~hi_known & (lo < eps_max_t)
        if bool(top.any()):
            idx = top.nonzero().squeeze(1)
            ok = cert(idx, eps_max_t.expand(idx.numel()))
            lo[idx[ok]] = eps_max_t
            hi_known[idx] = True
            hi[idx[~ok]] = eps_max_t
        reached = active & (lo >= eps_max_t)
        radius[reached] = eps_max_t
        active &= ~reached
        # bisection until hi - lo <= tol
        while True:
            todo = active & ((hi - lo) > tol)
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            mid = (lo[idx] + hi[idx]) / 2
            if bool(((mid <= lo[idx]) | (mid >= hi[idx])).any()):
                raise HarnessError(f"tol={tol} is below the floating-point resolution of epsilon")
            ok = cert(idx, mid)
            lo[idx[ok]] = mid[ok]
            hi[idx[~ok]] = mid[~ok]
        if not bool(active.any()):
            break
        # verify "not certified at lo + tol" exactly (certification need not be monotone)
        idx = active.nonzero().squeeze(1)
        probe = torch.minimum(lo[idx] + tol, eps_max_t)
        if bool((probe <= lo[idx]).any()):
            raise HarnessError(f"tol={tol} is below the floating-point resolution of epsilon")
        same = probe == hi[idx]  # already known not certified there
        ok = torch.zeros_like(same)
        if bool((~same).any()):
            ok[~same] = cert(idx[~same], probe[~same])
        done = idx[~ok]
        radius[done] = lo[done]
        active[done] = False
        # certified beyond the bracket: search again above it, with the top unknown
        again = idx[ok]
        lo[again] = probe[ok]
        hi[again] = eps_max_t
        hi_known[again] = False
    return radius, calls
