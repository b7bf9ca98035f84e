"""A hand-written attack ladder: FGSM and PGD.

These attacks are written by hand on purpose. They are a simple, transparent *reference* to compare
AutoAttack against, not a replacement for it: when the gradient attacks (FGSM, PGD-20) report a much
higher robust accuracy than AutoAttack, or FGSM a much higher one than PGD, the gradients of the
model are not a good guide to its worst case (gradient masking, catastrophic overfitting); see
:mod:`harness.diagnostics.rules`.

Conventions (all functions):

- ``model`` maps NCHW float inputs in [0, 1] to logits and is in eval mode;
- ``norm`` is ``"Linf"`` or ``"L2"`` and ``eps`` the radius, in the [0, 1] pixel scale;
- the loss is the cross-entropy of the logits with the true label;
- every iterate lies in the ``eps``-ball around ``x`` intersected with [0, 1];
- inputs are processed in batches of ``batch_size``;
- randomness (PGD's random start) comes from an explicit ``generator`` (or one seeded with
  ``seed``), drawn on the CPU, so results are reproducible and device independent.
"""
from __future__ import annotations

import torch

from harness.core.errors import HarnessError

from ._common import (
    LossFn,
    ascent_direction,
    batches,
    check_threat,
    input_gradient,
    make_generator,
    predict,
    project,
    sample_ball,
)

__all__ = ["fgsm", "pgd", "robust_flags", "attack_ladder"]


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
         *, batch_size: int = 256, loss_fn: LossFn | None = None) -> torch.Tensor:
    """Fast gradient (sign) method: one step of size ``eps`` from ``x`` itself (zero start).

    Linf: ``x + eps * sign(∇ₓL)``; L2: ``x + eps * ∇ₓL / ‖∇ₓL‖₂`` (the normalised-gradient step,
    "fast gradient method"); then clipped to [0, 1]. Where the gradient is exactly zero the point
    does not move. Returns ``x_adv`` (same shape as ``x``).
    """
    check_threat(norm, eps)
    out = torch.empty_like(x)
    for s in batches(x.shape[0], batch_size):
        xb, yb = x[s], y[s]
        g = input_gradient(model, xb, yb, loss_fn)
        out[s] = project(xb + eps * ascent_direction(g, norm), xb, eps, norm)
    return out


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
        steps: int = 20, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None, *, seed: int = 0, batch_size: int = 256,
        loss_fn: LossFn | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) on the cross-entropy loss.

    ``steps`` steps of size ``step_size`` (default ``2.5 * eps / steps``, so that the iterates can
    cross the ball from one face to the other) along sign(∇) (Linf) or ∇/‖∇‖₂ (L2), each followed by
    the projection onto the ``eps``-ball ∩ [0, 1]. With ``random_start`` the first iterate is drawn
    uniformly in the ball (from ``generator``, else a CPU generator seeded with ``seed``) and clipped
    to [0, 1].

    Returns ``x_adv``: per example, the first iterate (the random start included) that the model
    misclassifies if there is one, so that an example counts as broken if *any* iterate broke it;
    else the last iterate.
    """
    check_threat(norm, eps)
    if steps < 1:
        raise HarnessError(f"steps must be >= 1, got {steps}", field="steps")
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    gen = make_generator(generator, seed)
    out = torch.empty_like(x)
    for s in batches(x.shape[0], batch_size):
        xb, yb = x[s], y[s]
        if random_start:
            noise = sample_ball(xb.shape, eps, norm, gen, dtype=xb.dtype).to(xb.device)
            x_adv = project(xb + noise, xb, eps, norm)
        else:
            x_adv = xb.clone()
        best = x_adv.clone()
        with torch.no_grad():  # the random start may already be adversarial
            found = model(x_adv).argmax(dim=1) != yb if random_start else \
                torch.zeros(xb.shape[0], dtype=torch.bool, device=xb.device)
        for _ in range(steps):
            g = input_gradient(model, x_adv, yb, loss_fn)
            x_adv = project(x_adv + step_size * ascent_direction(g, norm), xb, eps, norm)
            with torch.no_grad():
                wrong = model(x_adv).argmax(dim=1) != yb
            new = wrong & ~found
            best[new] = x_adv[new]
            found |= wrong
        best[~found] = x_adv[~found]
        out[s] = best
    return out


@torch.no_grad()
def robust_flags(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, *,
                 batch_size: int = 256) -> torch.Tensor:
    """Boolean tensor: True where the model still classifies ``x_adv`` correctly."""
    return predict(model, x_adv, batch_size) == y


def attack_ladder(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  norm: str = "Linf", *, pgd_steps: int = 20, seed: int = 0,
                  generator: torch.Generator | None = None, batch_size: int = 256) -> dict:
    """Clean, FGSM and PGD-``pgd_steps`` accuracy on ``(x, y)``.

    An example counts as robust under an attack only if it is classified correctly both clean and
    at the attack's output (as in AutoAttack, which starts from the correctly classified points).
    Returns ``{"n", "clean", "fgsm", "pgd", "pgd_steps", "flags": {"clean", "fgsm", "pgd"}}`` with
    accuracies as floats and per-example boolean numpy arrays under ``flags``.
    """
    check_threat(norm, eps)
    clean = robust_flags(model, x, y, batch_size=batch_size)
    f = clean & robust_flags(model, fgsm(model, x, y, eps, norm, batch_size=batch_size), y,
                             batch_size=batch_size)
    x_pgd = pgd(model, x, y, eps, norm, steps=pgd_steps, generator=generator, seed=seed,
                batch_size=batch_size)
    p = clean & robust_flags(model, x_pgd, y, batch_size=batch_size)
    n = int(x.shape[0])

    def acc(t):
        return int(t.sum().item()) / n if n else float("nan")

    return {
        "n": n, "clean": acc(clean), "fgsm": acc(f), "pgd": acc(p), "pgd_steps": int(pgd_steps),
        "flags": {"clean": clean.cpu().numpy(), "fgsm": f.cpu().numpy(), "pgd": p.cpu().numpy()},
    }
