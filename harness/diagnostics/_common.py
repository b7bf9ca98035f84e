"""Small helpers shared by the diagnostics: argument checks, seeding, batched input gradients,
and sampling/projection for the Linf and L2 balls.

Every function that draws random numbers takes an explicit ``torch.Generator`` (or a ``seed`` from
which one is made) and draws on the CPU, so results do not depend on the device or on the global
RNG state.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError

NORMS = ("Linf", "L2")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(model_output, y) -> per-example losses`` (shape ``(B,)``)."""


def check_threat(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise HarnessError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}", field="norm")
    if not (eps > 0):
        raise HarnessError(f"eps must be positive, got {eps!r}", field="eps")


def check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size!r}", field="batch_size")


def make_generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    """The generator to draw from: the one given, else a fresh CPU generator seeded with ``seed``."""
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(int(seed))


def batches(n: int, batch_size: int) -> Iterator[slice]:
    check_batch_size(batch_size)
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def cross_entropy_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn | None = None, *, return_loss: bool = False):
    """Per-example ∇ₓ loss(model(x), y) for a batch (examples are independent in eval mode, so the
    gradient of the summed loss is the per-example gradient). Parameters' ``.grad`` are untouched."""
    loss_fn = loss_fn or cross_entropy_per_example
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(model(x), y)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    if return_loss:
        return grad.detach(), losses.detach()
    return grad.detach()


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of a batch, shape ``(B,)``."""
    flat = t.reshape(t.shape[0], -1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm``-size: sign(g) for Linf, g/‖g‖₂ for L2
    (zero where the gradient is zero)."""
    if norm == "Linf":
        return grad.sign()
    n = flat_norm(grad, "L2")
    return grad / _bview(n.clamp_min(1e-12), grad) * _bview((n > 0).to(grad.dtype), grad)


def sample_ball(shape: torch.Size | tuple[int, ...], eps: float, norm: str,
                generator: torch.Generator, *, dtype=torch.float32) -> torch.Tensor:
    """Points uniform in the ``norm`` ball of radius ``eps`` (on the CPU).

    Linf: uniform in the box [-eps, eps]^d. L2: uniform in the ball, as a uniform direction
    (a normalised Gaussian) times ``eps * U**(1/d)``.
    """
    if norm == "Linf":
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * eps
    g = torch.randn(shape, generator=generator, dtype=dtype)
    d = g[0].numel()
    g = g / _bview(flat_norm(g, "L2").clamp_min(1e-12), g)
    r = torch.rand(shape[0], generator=generator, dtype=dtype) ** (1.0 / d) * eps
    return g * _bview(r, g)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ``norm`` ball of radius ``eps`` around ``x``, then clip to [0, 1].

    For Linf both sets are boxes, so this is the exact projection onto their intersection. For L2
    it is the usual ball-then-box approximation; the result is always feasible (clipping only
    moves coordinates towards ``x``, which lies in [0, 1], so it never leaves the ball).
    """
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = flat_norm(delta, "L2")
        delta = delta * _bview((eps / n.clamp_min(1e-12)).clamp(max=1.0), delta)
    return (x + delta).clamp(0.0, 1.0)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    out = [model(x[s]).argmax(dim=1) for s in batches(x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)
