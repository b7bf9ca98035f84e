"""LeakyReLU: ``nn.LeakyReLU``, ``F.leaky_relu`` with ``negative_slope`` in [0, 1]."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ElementwiseRelaxedOp, Tensor, register_op


@register_op
class LeakyReLUOp(ElementwiseRelaxedOp):
    """``y = x if x >= 0 else a x`` with slope ``a`` in [0, 1], given ``l <= x <= u``.

    The relaxation of the CROWN paper (Zhang et al. 2018, general activations) and of
    auto_LiRPA's ``BoundLeakyRelu``; for ``a = 0`` it is exactly the ReLU relaxation.

    - Stable neurons are exact: ``y = x`` when ``l >= 0``, ``y = a x`` when ``u <= 0``.
    - Unstable neurons (``l < 0 < u``), upper line: the chord through ``(l, a l)`` and
      ``(u, u)``, slope ``(u - a l) / (u - l)``, intercept ``-(1 - a) l u / (u - l) >= 0``.
      Sound because the function is convex for ``a <= 1`` (its slope goes from ``a`` up to 1),
      so it lies below every chord on ``[l, u]``.
    - Unstable neurons, lower line: ``s x`` with ``s = 1 if u >= -l else a``. Any ``s`` in
      ``[a, 1]`` is sound: for ``x >= 0``, ``s x <= x``; for ``x < 0``, ``s x <= a x``. The
      choice keeps the larger part of the interval exact (the adaptive rule of CROWN).
    - IBP: ``[f(l), f(u)]`` (f is non-decreasing for ``a >= 0``).

    Slopes outside [0, 1] are refused: for ``a < 0`` the function is not monotone (the IBP rule
    above would be wrong) and for ``a > 1`` it is concave (the chord would be a lower bound).
    """

    kind = "LeakyReLU"
    modules = (nn.LeakyReLU,)
    functions = (F.leaky_relu, torch._C._nn.leaky_relu, getattr(F, "leaky_relu_", None),
                 getattr(torch._C._nn, "leaky_relu_", None))
    monotone = True
    #: alpha-CROWN: any lower slope in ``[a, 1]`` is sound (see above)
    optimisable = True

    def alpha_range(self):
        return self.slope, 1.0

    def unstable(self, in_bounds):
        lo, hi = in_bounds[0]
        if self.slope == 1.0:
            return torch.zeros_like(lo, dtype=torch.bool)
        return (lo < 0) & (hi > 0)

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.slope = float(negative_slope)

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        if n.op == "call_module":
            slope = b.module(n).negative_slope
        else:
            b.check_kwargs(n, ("negative_slope", "inplace"))
            slope = b.literal(b.arg(n, 1, "negative_slope", 0.01))
        if not isinstance(slope, (int, float)) or not (0.0 <= float(slope) <= 1.0):
            b.unsupported(n, why=f"negative_slope={slope!r} outside [0, 1]")
        return cls(float(slope)), [x]

    def forward(self, x):
        return F.leaky_relu(x, self.slope)

    def relaxation(self, lo: Tensor, hi: Tensor):
        """(lower slope, None, upper slope, upper intercept), each shaped like ``lo``."""
        a = self.slope
        unstable = (lo < 0) & (hi > 0)
        stable_slope = torch.where(lo >= 0, torch.ones_like(lo), torch.full_like(lo, a))
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        up_slope = torch.where(unstable, (hi - a * lo) / width, stable_slope)
        up_icpt = torch.where(unstable, (1.0 - a) * (-lo * hi) / width, torch.zeros_like(lo))
        adaptive = torch.where(hi >= -lo, torch.ones_like(lo), torch.full_like(lo, a))
        low_slope = torch.where(unstable, adaptive, stable_slope)
        return low_slope, None, up_slope, up_icpt

    def loose(self, k, lower, upper):
        if self.slope == 1.0:  # the identity: exact whatever the bounds
            return torch.zeros_like(lower, dtype=torch.bool)
        return (lower < 0) & (upper > 0)
