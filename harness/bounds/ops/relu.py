"""ReLU: ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()`` (and in-place forms)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ElementwiseRelaxedOp, Tensor, register_op


@register_op
class ReLUOp(ElementwiseRelaxedOp):
    """``y = max(x, 0)``, given bounds ``l <= x <= u`` on its input.

    IBP: ``[relu(l), relu(u)]`` (relu is monotone). CROWN relaxation for an unstable neuron
    (``l < 0 < u``): upper line through ``(l, 0)`` and ``(u, u)``, i.e. ``u (x - l) / (u - l)``,
    which lies above relu on ``[l, u]`` because relu is convex; lower line ``a x`` with
    ``a = 1 if u >= -l else 0`` (any ``a`` in [0, 1] lies below relu). Stable neurons are exact
    (``y = x`` when ``l >= 0``, ``y = 0`` when ``u <= 0``), so only unstable neurons are
    :meth:`loose`.
    """

    kind = "ReLU"
    modules = (nn.ReLU,)
    functions = (F.relu, torch.relu, getattr(torch, "relu_", None), getattr(F, "relu_", None))
    methods = ("relu", "relu_")
    monotone = True
    #: alpha-CROWN: the lower line ``a x`` of an unstable neuron is sound for any ``a`` in [0, 1]
    #: (``a x <= x`` for ``x >= 0`` and ``a x <= 0`` for ``x < 0``)
    optimisable = True

    def alpha_range(self):
        return 0.0, 1.0

    @classmethod
    def from_node(cls, b, n):
        if n.op == "call_function":
            b.check_kwargs(n, ("inplace",))
        return cls(), [b.single_input(n)]

    def forward(self, x):
        return torch.relu(x)

    def ibp(self, iv):
        lo, hi = iv
        return torch.relu(lo), torch.relu(hi)

    def relaxation(self, lo: Tensor, hi: Tensor):
        """(lower slope, None, upper slope, upper intercept), each shaped like ``lo``."""
        unstable = (lo < 0) & (hi > 0)
        active = (lo >= 0).to(lo.dtype)
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        up_slope = torch.where(unstable, hi / width, active)
        up_icpt = torch.where(unstable, -lo * hi / width, torch.zeros_like(lo))
        low_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype), active)
        return low_slope, None, up_slope, up_icpt

    def loose(self, k, lower, upper):
        return (lower < 0) & (upper > 0)
