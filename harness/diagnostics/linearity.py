"""Local linearity of the loss around the data: gradient alignment and input-Hessian curvature.

Both are signs of how far a single gradient step can be trusted. Catastrophically overfitted and
gradient-masked models have gradients that point in unrelated directions a short distance apart
(low alignment) and a sharply curved loss (large curvature); adversarially trained models that
hold up against multi-step attacks are close to linear inside the threat ball (Andriushchenko &
Flammarion 2020, "Understanding and improving fast adversarial training", GradAlign; Moosavi-
Dezfooli et al. 2019, "Robustness via curvature regularization", CURE).

The loss is the per-example cross-entropy of the logits (``loss_fn`` can replace it).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from harness.core.errors import HarnessError

from ._common import LossFn, batches, check_threat, input_gradient, make_generator, sample_ball

__all__ = ["gradient_alignment", "lanczos", "input_hessian_top_eigenvalue", "fd_step_for",
           "DEFAULT_FD_STEP", "THREAT_FD_FRACTION"]

DEFAULT_FD_STEP = 1e-2
"""Finite-difference step ``h`` (L2 length, [0, 1] pixel units) of the Hessian-vector products."""

THREAT_FD_FRACTION = 0.1
""":func:`fd_step_for`: ``h`` as a fraction of the threat ball's L2 radius."""


def fd_step_for(eps: float, norm: str, input_numel: int,
                fraction: float = THREAT_FD_FRACTION) -> float:
    """A finite-difference step at the scale of the threat model: ``fraction`` x the L2 radius of
    the ``eps``-ball (``eps * sqrt(d)`` for Linf, ``eps`` for L2). For MNIST at Linf 0.3 this is
    0.1 x 8.4 = 0.84.

    Why: the curvature *at* a data point and the curvature *within its threat ball* differ most for
    exactly the models the diagnostic is for. On our catastrophically overfitted MNIST model the
    median top eigenvalue is 0.026 at h = 0.01 (no larger than the PGD-trained model's 0.038: the
    loss is flat and saturated right at the data) but 3.4 at h = 1 (the PGD model's: 0.006), because
    its loss bends sharply a short distance away. The central difference over a segment of length 2h
    measures that average curvature along the direction.
    """
    check_threat(norm, eps)
    radius = eps * float(input_numel) ** 0.5 if norm == "Linf" else eps
    return float(fraction * radius)


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "median": float(np.median(finite)) if finite.size else float("nan"),
        "n": int(values.size), "n_finite": int(finite.size),
    }


def gradient_alignment(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                       norm: str = "Linf", *, n_samples: int = 1,
                       generator: torch.Generator | None = None, seed: int = 0,
                       batch_size: int = 256, loss_fn: LossFn | None = None) -> dict:
    """Mean cosine between ∇ₓL(x) and ∇ₓL(x + δ), δ uniform in the ``eps``-ball (Linf: uniform in
    the box; L2: uniform in the ball), x + δ clipped to [0, 1]; ``n_samples`` draws per point.

    Returns ``{"mean", "median", "n", "n_finite", "per_example", "zero_gradient_fraction"}``:
    ``per_example`` is the mean cosine over the draws of each point (NaN where a gradient is
    exactly zero, since the cosine is then undefined; such points are left out of the mean and
    counted in ``zero_gradient_fraction``). 1 means locally linear; near 0, unrelated gradients.
    """
    check_threat(norm, eps)
    gen = make_generator(generator, seed)
    per_example = np.full(x.shape[0], np.nan)
    n_zero = 0
    for s in batches(x.shape[0], batch_size):
        xb, yb = x[s], y[s]
        g0 = input_gradient(model, xb, yb, loss_fn).reshape(xb.shape[0], -1).double()
        n0 = g0.norm(dim=1)
        cos_sum = torch.zeros(xb.shape[0], dtype=torch.float64)
        cnt = torch.zeros(xb.shape[0], dtype=torch.float64)
        zero = n0 == 0
        for _ in range(int(n_samples)):
            delta = sample_ball(xb.shape, eps, norm, gen, dtype=xb.dtype).to(xb.device)
            g1 = input_gradient(model, (xb + delta).clamp(0, 1), yb, loss_fn)
            g1 = g1.reshape(xb.shape[0], -1).double()
            n1 = g1.norm(dim=1)
            ok = (n0 > 0) & (n1 > 0)
            zero |= n1 == 0
            cos = (g0 * g1).sum(1) / (n0 * n1).clamp_min(1e-300)
            cos_sum += torch.where(ok, cos, torch.zeros_like(cos)).cpu()
            cnt += ok.double().cpu()
        vals = torch.where(cnt > 0, cos_sum / cnt.clamp_min(1), torch.full_like(cnt, float("nan")))
        per_example[s] = vals.numpy()
        n_zero += int(zero.sum().item())
    out = _summary(per_example)
    out["per_example"] = per_example
    out["zero_gradient_fraction"] = n_zero / x.shape[0] if x.shape[0] else float("nan")
    return out


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, k: int, *,
            generator: torch.Generator | None = None, seed: int = 0,
            breakdown_tol: float = 1e-10) -> torch.Tensor:
    """Batched Lanczos with full reorthogonalisation; returns the Ritz values, shape ``(B, k)``,
    ascending (the last column estimates the largest eigenvalue).

    ``matvec`` maps a batch of vectors ``(B, D)`` to ``(B, D)``, one symmetric operator per row
    (row ``b`` of the output may depend only on row ``b`` of the input). ``v0`` is the ``(B, D)``
    start. The Krylov basis is kept (``B x k x D`` floats) and every new vector is orthogonalised
    twice against all earlier ones ("twice is enough"), so no spurious copies of converged
    eigenvalues appear. On breakdown (an invariant subspace, ``β < breakdown_tol·scale``) the
    iteration continues from a fresh random vector orthogonal to the basis, with ``β = 0``, so the
    Ritz values stay eigenvalues of the operator restricted to the space explored.
    Work is in float64. ``k`` is capped at ``D``.
    """
    if v0.dim() != 2:
        raise HarnessError(f"lanczos: v0 must be (B, D), got shape {tuple(v0.shape)}")
    B, D = v0.shape
    k = max(1, min(int(k), D))
    gen = make_generator(generator, seed)
    dev = v0.device
    Q = torch.zeros(B, k, D, dtype=torch.float64, device=dev)
    alpha = torch.zeros(B, k, dtype=torch.float64, device=dev)
    beta = torch.zeros(B, k, dtype=torch.float64, device=dev)  # beta[:, j] links j and j+1
    q = v0.to(torch.float64)
    nq = q.norm(dim=1, keepdim=True)
    if (nq == 0).any():
        fresh = torch.randn(B, D, generator=gen, dtype=torch.float64).to(dev)
        q = torch.where(nq == 0, fresh, q)
        nq = q.norm(dim=1, keepdim=True)
    q = q / nq
    scale = torch.zeros(B, dtype=torch.float64, device=dev)
    for j in range(k):
        Q[:, j] = q
        w = matvec(q).to(torch.float64).reshape(B, D)
        a = (w * q).sum(1)
        alpha[:, j] = a
        if j + 1 == k:
            break
        basis = Q[:, : j + 1]  # (B, j+1, D)
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - torch.einsum("bjd,bj->bd", basis, torch.einsum("bjd,bd->bj", basis, w))
        b = w.norm(dim=1)
        scale = torch.maximum(scale, a.abs() + b)
        broken = b <= breakdown_tol * scale.clamp_min(1e-300)
        if broken.any():
            fresh = torch.randn(B, D, generator=gen, dtype=torch.float64).to(dev)
            for _ in range(2):
                fresh = fresh - torch.einsum("bjd,bj->bd", basis,
                                             torch.einsum("bjd,bd->bj", basis, fresh))
            fresh = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-300)
            w = torch.where(broken[:, None], fresh, w / b.clamp_min(1e-300)[:, None])
            b = torch.where(broken, torch.zeros_like(b), b)
            q = w
        else:
            q = w / b[:, None]
        beta[:, j] = b
    T = torch.diag_embed(alpha) + torch.diag_embed(beta[:, : k - 1], 1) \
        + torch.diag_embed(beta[:, : k - 1], -1)
    return torch.linalg.eigvalsh(T)


def input_hessian_top_eigenvalue(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                                 k: int = 15, h: float = DEFAULT_FD_STEP,
                                 generator: torch.Generator | None = None, seed: int = 0,
                                 batch_size: int = 64, loss_fn: LossFn | None = None) -> dict:
    """Largest eigenvalue of the input Hessian ∇²ₓL(x) of each example, by ``k`` Lanczos
    iterations (:func:`lanczos`) on finite-difference Hessian-vector products

        H v ≈ (∇ₓL(x + h v) − ∇ₓL(x − h v)) / (2 h),   ‖v‖₂ = 1,

    i.e. 2k gradient evaluations per batch. ``h`` is an L2 length in the [0, 1] pixel scale. The
    default, 1e-2, is the *local* curvature: on MNIST it moves a pixel by about 4e-4 (a tenth of a
    grey level) on average, while float32 rounding of the gradients (relative 1e-7) adds only about
    1e-5 relative error. For the curvature *within the threat ball*, which is what separates
    catastrophically overfitted models from robust ones, use :func:`fd_step_for` (the diagnostics
    stage does). ``x ± h v`` is *not* clipped to [0, 1] (the curvature is a property of the
    function, and clipping would break the central difference).

    ReLU networks are piecewise linear, so their exact input Hessian is that of the softmax
    cross-entropy composed with the local linear map (plus Dirac terms on the region boundaries);
    the central difference averages the gradient change over a segment of length 2h, so it measures
    a *smoothed* curvature that includes the activation-pattern changes within h. It is not exactly
    symmetric (nor, for large h, linear in v); Lanczos uses its symmetric tridiagonal projection,
    so for large h the result is an estimate of the largest average curvature over directions.

    Returns ``{"mean", "median", "n", "n_finite", "per_example", "k", "h"}`` (per-example
    largest Ritz values). The start vector is Gaussian from ``generator``/``seed``.
    """
    if not (h > 0):
        raise HarnessError(f"h must be positive, got {h!r}", field="h")
    gen = make_generator(generator, seed)
    per_example = np.full(x.shape[0], np.nan)
    for s in batches(x.shape[0], batch_size):
        xb, yb = x[s], y[s]
        B = xb.shape[0]
        shape = xb.shape

        def hvp(v: torch.Tensor, xb=xb, yb=yb, B=B, shape=shape) -> torch.Tensor:  # this batch's
            vv = v.to(xb.dtype).reshape(shape)
            gp = input_gradient(model, xb + h * vv, yb, loss_fn)
            gm = input_gradient(model, xb - h * vv, yb, loss_fn)
            return ((gp.double() - gm.double()) / (2 * h)).reshape(B, -1)

        v0 = torch.randn(B, xb[0].numel(), generator=gen, dtype=torch.float64).to(xb.device)
        ritz = lanczos(hvp, v0, k, generator=gen)
        per_example[s] = ritz[:, -1].cpu().numpy()
    out = _summary(per_example)
    out.update(per_example=per_example, k=int(k), h=float(h))
    return out
