"""Eval-mode batch normalisation (``nn.BatchNorm1d``, ``nn.BatchNorm2d``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .affine import AffineOp
from .base import dot, register_op, unsupported_mode


@register_op
class BatchNormOp(AffineOp):
    """Eval-mode batch norm: ``y = x * g / sqrt(var + eps) + (beta - mean * g / sqrt(var + eps))``
    per channel (dimension 1), with the running statistics.

    Soundness: a per-channel affine map (diagonal); exact. Raises in training mode, where the
    output would depend on the batch.
    """

    kind = "BatchNorm"
    modules = (nn.BatchNorm1d, nn.BatchNorm2d)
    diagonal = True

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    @classmethod
    def from_node(cls, b, n):
        m = b.module(n)
        x = b.single_input(n)
        if m.running_mean is None or m.running_var is None:
            b.unsupported(n, type(m).__name__, "batch norm without running statistics")
        op = cls(m)
        if m.training:
            op.name = n.name
            op.check()
        return op, [x]

    def check(self):
        if self.module.training:
            unsupported_mode(self, self.module)

    def _scale_shift(self):
        m = self.module
        inv = torch.rsqrt(m.running_var + m.eps)
        g = inv if m.weight is None else m.weight * inv
        sh = -m.running_mean * g
        if m.bias is not None:
            sh = sh + m.bias
        extra = (1,) * (len(self.out_shape) - 1)
        return g.reshape(-1, *extra), sh.reshape(-1, *extra)

    def apply(self, x, bias=True):
        g, sh = self._scale_shift()
        return x * g + sh if bias else x * g

    def apply_abs(self, r):
        return r * self._scale_shift()[0].abs()

    def diag_scale(self, s):
        return s * self._scale_shift()[0]

    def transpose(self, A):
        return A * self._scale_shift()[0]

    def bias_dot(self, A):
        return dot(A, self._scale_shift()[1])
