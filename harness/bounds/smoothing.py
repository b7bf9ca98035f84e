"""Randomized smoothing for L2 (Cohen, Rosenfeld & Kolter 2019): PREDICT and CERTIFY.

The smoothed classifier is ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``.
If a lower confidence bound ``p_A_lower`` on the top class's probability exceeds 1/2, then ``g``
is constant on the L2 ball of radius ``sigma * Phi^-1(p_A_lower)`` around ``x`` (with
probability at least ``1 - alpha`` over the sampling).

Everything is deterministic given the ``generator`` (a ``torch.Generator``; a fresh one seeded
with 0 when None). Noise is drawn on the generator's device and moved to the input's device.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from harness.core.errors import HarnessError

ABSTAIN = -1
Tensor = torch.Tensor


def _gen(generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _check(sigma: float, n: int, alpha: float, batch_size: int) -> None:
    if not sigma > 0:
        raise HarnessError(f"smoothing sigma must be > 0, got {sigma}")
    if int(n) < 1 or int(batch_size) < 1:
        raise HarnessError("smoothing needs n >= 1 and batch_size >= 1")
    if not 0 < alpha < 1:
        raise HarnessError(f"smoothing alpha must be in (0, 1), got {alpha}")


@torch.no_grad()
def sample_counts(model, x1: Tensor, sigma: float, num: int, batch_size: int,
                  generator: torch.Generator) -> Tensor:
    """Class counts (K,) of ``argmax f(x1 + delta)`` over ``num`` Gaussian draws (x1: one example)."""
    counts: Optional[Tensor] = None
    left = int(num)
    while left > 0:
        b = min(int(batch_size), left)
        noise = torch.randn((b, *x1.shape), generator=generator, device=generator.device,
                            dtype=x1.dtype).to(x1.device)
        logits = model(x1.unsqueeze(0) + sigma * noise)
        if counts is None:
            counts = torch.zeros(logits.shape[1], dtype=torch.long, device=logits.device)
        counts += torch.bincount(logits.argmax(1), minlength=counts.numel())
        left -= b
    return counts.cpu()


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if n_a <= 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def predict(model, x: Tensor, sigma: float, n: int, alpha: float, batch_size: int = 1000,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """Cohen et al.'s PREDICT for each example of the batch ``x``: the top class of ``n`` noisy
    predictions, or ABSTAIN when a two-sided binomial test of its count against the runner-up's
    is not significant at level ``alpha``. Returns (B,) long."""
    _check(sigma, n, alpha, batch_size)
    gen = _gen(generator)
    out = []
    for k in range(x.shape[0]):
        counts = sample_counts(model, x[k], sigma, n, batch_size, gen)
        top = torch.topk(counts, min(2, counts.numel()))
        n_a = int(top.values[0])
        n_b = int(top.values[1]) if counts.numel() > 1 else 0
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            out.append(ABSTAIN)
        else:
            out.append(int(top.indices[0]))
    return torch.tensor(out, dtype=torch.long)


def certify(model, x: Tensor, sigma: float, n0: int = 100, n: int = 100000,
            alpha: float = 0.001, batch_size: int = 1000,
            generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Cohen et al.'s CERTIFY for each example: pick the top class from ``n0`` draws, bound its
    probability from below with ``n`` fresh draws (Clopper-Pearson, level ``alpha``).

    Returns ``(prediction (B,) long, radius (B,) float64)``; ABSTAIN with radius 0 when the
    lower bound is below 1/2.
    """
    _check(sigma, n, alpha, batch_size)
    if int(n0) < 1:
        raise HarnessError("smoothing needs n0 >= 1")
    gen = _gen(generator)
    preds, radii = [], []
    for k in range(x.shape[0]):
        c_a = int(sample_counts(model, x[k], sigma, n0, batch_size, gen).argmax())
        n_a = int(sample_counts(model, x[k], sigma, n, batch_size, gen)[c_a])
        p_a = lower_confidence_bound(n_a, int(n), alpha)
        if p_a < 0.5:
            preds.append(ABSTAIN)
            radii.append(0.0)
        else:
            preds.append(c_a)
            radii.append(float(sigma * norm.ppf(p_a)))
    return torch.tensor(preds, dtype=torch.long), torch.tensor(radii, dtype=torch.float64)


def acr_macer(radius, correct) -> float:
    """Average certified radius (as in MACER, Zhai et al. 2020): the mean over all examples of
    the certified radius, counting 0 for wrong or abstained predictions."""
    r = np.asarray(radius.cpu() if torch.is_tensor(radius) else radius, dtype=np.float64)
    c = np.asarray(correct.cpu() if torch.is_tensor(correct) else correct, dtype=bool)
    if r.shape != c.shape:
        raise HarnessError(f"acr_macer: radius {r.shape} and correct {c.shape} differ in shape")
    if r.size == 0:
        return 0.0
    return float(np.where(c, np.clip(r, 0.0, None), 0.0).mean())
