"""Input sets: the Linf box clipped to [0, 1], and the L2 ball.

The L2 ball is *not* intersected with [0, 1]: bounding over the whole ball bounds over any
subset of it, so this is sound (only slightly loose near the image boundary), and it keeps
the dual-norm concretisation exact.
"""
from __future__ import annotations

import torch

from harness.core.errors import HarnessError

Tensor = torch.Tensor


def parse_norm(norm: str) -> str:
    key = str(norm).strip().lower()
    if key in ("linf", "l_inf", "inf", "l-inf"):
        return "Linf"
    if key in ("l2", "2", "l_2"):
        return "L2"
    raise HarnessError(f"unknown norm {norm!r}; use 'Linf' or 'L2'")


def as_eps(eps, batch: int, dtype, device) -> Tensor:
    """``eps`` (a number, a 0-d tensor or a (B,) tensor) as a (B,) tensor, checked >= 0."""
    if torch.is_tensor(eps):
        e = eps.detach().to(device=device, dtype=dtype)
        if e.dim() == 0:
            e = e.expand(batch)
        elif e.shape != (batch,):
            raise HarnessError(f"eps must be a number or a tensor of shape ({batch},), got "
                               f"{tuple(e.shape)}")
    else:
        try:
            e = torch.full((batch,), float(eps), dtype=dtype, device=device)
        except (TypeError, ValueError):
            raise HarnessError(f"eps must be a number or a tensor, got {eps!r}")
    if bool(torch.isnan(e).any()) or bool((e < 0).any()) or bool(torch.isinf(e).any()):
        raise HarnessError("eps must be finite and >= 0")
    return e


class InputSet:
    """The perturbation set around a batch ``x`` (B, *shape) with per-example radius ``eps``."""

    def __init__(self, x: Tensor, eps: Tensor, norm: str):
        self.x = x
        self.eps = eps
        self.norm = parse_norm(norm)
        if self.norm == "Linf":
            e = eps.view(-1, *([1] * (x.dim() - 1)))
            self.lower = (x - e).clamp(0.0, 1.0)
            self.upper = (x + e).clamp(0.0, 1.0)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def eps_view(self, ndim: int) -> Tensor:
        """eps shaped (B, 1, ..., 1) with ``ndim`` dimensions in all."""
        return self.eps.view(-1, *([1] * (ndim - 1)))

    def concretize(self, A: Tensor, sign: int) -> Tensor:
        """min (sign=-1) or max (sign=+1) of ``A . x'`` over the set; ``A`` is (B, S, *shape)."""
        c, r = self.center_radius(A)
        return c + sign * r

    def center_radius(self, A: Tensor) -> tuple[Tensor, Tensor]:
        """``(c, r)`` (B, S) with ``{A . x'} = [c - r, c + r]`` over the set.

        Linf box: ``c = A.mid``, ``r = |A|.rad`` (attained at a vertex). L2 ball (Hoelder, dual
        norm): ``c = A.x``, ``r = eps * ||A||_2``.
        """
        Af = A.reshape(A.shape[0], A.shape[1], -1)
        if self.norm == "Linf":
            mid = ((self.upper + self.lower) / 2).reshape(self.batch, -1, 1)
            rad = ((self.upper - self.lower) / 2).reshape(self.batch, -1, 1)
            return Af.bmm(mid).squeeze(-1), Af.abs().bmm(rad).squeeze(-1)
        center = self.x.reshape(self.batch, -1, 1)
        return Af.bmm(center).squeeze(-1), self.eps.unsqueeze(1) * _l2(Af)


def _l2(t: Tensor) -> Tensor:
    """Row L2 norms over the last dimension, with a gradient that is 0 (not NaN) at 0."""
    sq = (t * t).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def safe_sqrt(q: Tensor) -> Tensor:
    pos = q > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, q, torch.ones_like(q))),
                       torch.zeros_like(q))
