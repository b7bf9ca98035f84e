"""Pooling by averaging: ``nn.AvgPool2d``/``F.avg_pool2d``, adaptive average pooling to a divisor
size, ``x.mean(dims)`` and onnx2torch's global average pooling."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .affine import AffineOp
from .base import pair, register_op

_AVGPOOL = (F.avg_pool2d, torch._C._nn.avg_pool2d)
_ADAPTIVE = (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d)


@register_op
class AvgPool2dOp(AffineOp):
    """Average pooling (``nn.AvgPool2d``, ``F.avg_pool2d``, adaptive pooling to a divisor size).

    Soundness: linear with non-negative weights, so ``|L| r`` is the pooling of ``r``; ``L^T`` is
    the pooling's input gradient (``avg_pool2d_backward``), exact for every padding/ceil mode.
    """

    kind = "AvgPool2d"
    modules = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    functions = _AVGPOOL + _ADAPTIVE

    def __init__(self, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        if n.op == "call_module":
            m = b.module(n)
            if type(m) is nn.AdaptiveAvgPool2d:
                return cls.adaptive(b, n, x, type(m).__name__), [x]
            return cls(pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size),
                       pair(m.padding), m.ceil_mode, m.count_include_pad,
                       m.divisor_override), [x]
        if b.value(x).dim() != 4:
            b.unsupported(n, why=f"{getattr(n.target, '__name__', 'pooling')} on a non-4d tensor")
        if n.target in _ADAPTIVE:
            return cls.adaptive(b, n, x, None), [x]
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode",
                 "count_include_pad", "divisor_override")
        b.check_kwargs(n, names[1:])
        v = [None] + [b.literal(b.arg(n, i, nm, d)) for i, (nm, d) in
                      enumerate(zip(names, (None, None, None, 0, False, True, None), strict=False)) if i]
        k = pair(v[1])
        empty = v[2] is None or (isinstance(v[2], (list, tuple)) and len(v[2]) == 0)
        stride = k if empty else pair(v[2])
        return cls(k, stride, pair(v[3]), bool(v[4]), bool(v[5]), v[6]), [x]

    @classmethod
    def adaptive(cls, b, n, x, what):
        h, w = b.value(x).shape[2:]
        oh, ow = b.value(n).shape[2:]
        if h % oh or w % ow:
            b.unsupported(n, what, "adaptive pooling to a size that does not divide the input")
        k = (h // oh, w // ow)
        return cls(k, k, (0, 0), False, True, None)

    def apply(self, x, bias=True):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def apply_abs(self, r):
        return self.apply(r)

    def transpose(self, A):
        B, S = A.shape[:2]
        shape = self.in_shapes[0]
        like = A.new_zeros(()).expand(B * S, *shape)
        g = torch.ops.aten.avg_pool2d_backward(
            A.reshape(B * S, *self.out_shape), like, list(self.kernel), list(self.stride),
            list(self.padding), self.ceil_mode, self.count_include_pad, self.divisor_override)
        return g.reshape(B, S, *shape)


@register_op
class MeanOp(AffineOp):
    """Mean over some non-batch dimensions (``x.mean(dims)``, global average pooling).

    Soundness: linear with non-negative weights ``1/n``; ``L^T`` spreads each coefficient
    uniformly over the averaged positions. Exact.
    """

    kind = "mean"
    modules = ("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape")
    functions = (torch.mean,)
    methods = ("mean",)

    def __init__(self, dims: Sequence[int], keepdim: bool) -> None:
        super().__init__()
        self.dims = tuple(sorted(dims))  # dims of the full (batched) tensor, all >= 1
        self.keepdim = keepdim

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        nd = b.value(x).dim()
        if n.op == "call_module":  # onnx2torch global average pooling
            return cls(range(2, nd), keepdim=True), [x]
        b.check_kwargs(n, ("dim", "keepdim"))
        dim = b.literal(b.arg(n, 1, "dim", None))
        keepdim = b.literal(b.arg(n, 2, "keepdim", False))
        if dim is None:
            b.unsupported(n, why="mean over the batch dimension")
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = [d % nd for d in dims]
        if 0 in dims:
            b.unsupported(n, why="mean over the batch dimension")
        return cls(dims, bool(keepdim)), [x]

    def apply(self, x, bias=True):
        return x.mean(dim=self.dims, keepdim=self.keepdim)

    def apply_abs(self, r):
        return self.apply(r)

    def transpose(self, A):
        B, S = A.shape[:2]
        shape = self.in_shapes[0]
        kept = [1 if (d + 1) in self.dims else n for d, n in enumerate(shape)]
        count = 1
        for d in self.dims:
            count *= shape[d - 1]
        return (A.reshape(B, S, *kept) / count).expand(B, S, *shape)
