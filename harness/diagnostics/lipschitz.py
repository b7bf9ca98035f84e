"""Empirical local Lipschitz constant (Yang et al. 2020, "A Closer Look at Accuracy vs. Robustness").

    L(f, X) = mean over x in X of  max over x' in B(x, eps) ∩ [0, 1]^d of  ‖f(x) − f(x')‖₁ / ‖x − x'‖

with ‖·‖ the threat model's norm (‖·‖∞ for Linf, as in the paper; ‖·‖₂ for L2). Yang et al. find
that robust models have a small local Lipschitz constant on both train and test data, and that
the gap between the two tracks the robust generalisation gap.

Choices, following the released code (``lolip/utils.py: estimate_local_lip_v2``) in spirit:

- ``f`` is the model's **logits** by default. The released code applies the ratio to the model's
  raw output, and their architectures return logits (the ``log_softmax`` is commented out); the
  harness's models also return logits. The softmax alternative (``output="softmax"``) saturates
  on confidently classified points and hides differences between models, but it is offered.
- The inner maximisation is sign-gradient ascent (Linf; normalised-gradient ascent for L2) on the
  ratio itself: ``steps = 10`` steps of size ``eps / 4`` from a uniform random start of radius
  ``1e-3 * eps`` (the paper's code starts from a 1e-3 Gaussian and uses 10 steps), each step
  projected onto the ball ∩ [0, 1]. The radius-``eps/4`` steps reach the boundary of the ball in
  four steps, where the ratio of a locally linear model is maximal.
- We keep the **largest ratio seen over all iterates** (and restarts), not only the last, so the
  estimate never decreases with more steps. Every value is a ratio at a feasible point, so the
  estimate is a lower bound on the true local Lipschitz constant.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError

from ._common import ascent_direction, batches, check_threat, flat_norm, make_generator, project, sample_ball

__all__ = ["local_lipschitz", "lipschitz_report"]

OUTPUTS = ("logits", "softmax")


def _ratio(model, x, x_adv, fx, norm, output):
    fa = model(x_adv)
    if output == "softmax":
        fa = F.softmax(fa, dim=1)
    top = (fa - fx).reshape(fa.shape[0], -1).abs().sum(1)
    down = flat_norm(x_adv - x, norm)
    return torch.where(down > 0, top / down.clamp_min(1e-30), torch.zeros_like(top))


def local_lipschitz(model: torch.nn.Module, x: torch.Tensor, eps: float, norm: str = "Linf", *,
                    steps: int = 10, step_size: float | None = None,
                    init_radius: float | None = None, restarts: int = 1,
                    output: str = "logits", generator: torch.Generator | None = None,
                    seed: int = 0, batch_size: int = 256) -> dict:
    """Per-example empirical local Lipschitz constant of ``model`` at ``x`` (see the module doc).

    ``step_size`` defaults to ``eps / 4``, ``init_radius`` to ``1e-3 * eps``; ``restarts``
    independent starts, keeping the best. Returns ``{"mean", "median", "n", "per_example",
    "output", "steps", "step_size", "init_radius", "restarts"}``.
    """
    check_threat(norm, eps)
    if output not in OUTPUTS:
        raise HarnessError(f"output must be one of {OUTPUTS}, got {output!r}", field="output")
    step_size = eps / 4 if step_size is None else float(step_size)
    init_radius = 1e-3 * eps if init_radius is None else float(init_radius)
    gen = make_generator(generator, seed)
    per_example = np.zeros(x.shape[0])
    for s in batches(x.shape[0], batch_size):
        xb = x[s]
        with torch.no_grad():
            fx = model(xb)
            if output == "softmax":
                fx = F.softmax(fx, dim=1)
        best = torch.zeros(xb.shape[0], dtype=torch.float64)
        for _ in range(max(1, int(restarts))):
            start = sample_ball(xb.shape, init_radius, norm, gen, dtype=xb.dtype).to(xb.device)
            x_adv = project(xb + start, xb, eps, norm)
            for it in range(int(steps) + 1):
                x_adv = x_adv.detach().requires_grad_(it < steps)
                with torch.enable_grad() if it < steps else torch.no_grad():
                    r = _ratio(model, xb, x_adv, fx, norm, output)
                best = torch.maximum(best, r.detach().double().cpu())
                if it == steps:
                    break
                (g,) = torch.autograd.grad(r.sum(), x_adv)
                x_adv = project(x_adv.detach() + step_size * ascent_direction(g, norm), xb, eps,
                                norm)
        per_example[s] = best.numpy()
    return {
        "mean": float(per_example.mean()) if per_example.size else float("nan"),
        "median": float(np.median(per_example)) if per_example.size else float("nan"),
        "n": int(per_example.size), "per_example": per_example, "output": output,
        "steps": int(steps), "step_size": float(step_size), "init_radius": float(init_radius),
        "restarts": int(restarts),
    }


def lipschitz_report(model: torch.nn.Module, x_test: torch.Tensor, eps: float,
                     norm: str = "Linf", *, x_train: torch.Tensor | None = None,
                     **kwargs) -> dict:
    """Local Lipschitz constant on test (and, when given, train) inputs.

    Returns ``{"test", "train", "gap", "n_test", "n_train", "output"}``: means over the points;
    ``gap`` = test − train (positive when the model is less smooth on unseen data; Yang et al.
    report both values side by side). ``train``/``gap`` are None without ``x_train``. Extra
    keyword arguments go to :func:`local_lipschitz`.
    """
    te = local_lipschitz(model, x_test, eps, norm, **kwargs)
    out = {"test": te["mean"], "train": None, "gap": None, "n_test": te["n"], "n_train": 0,
           "output": te["output"], "steps": te["steps"], "step_size": te["step_size"]}
    if x_train is not None:
        tr = local_lipschitz(model, x_train, eps, norm, **kwargs)
        out.update(train=tr["mean"], gap=te["mean"] - tr["mean"], n_train=tr["n"])
    return out
