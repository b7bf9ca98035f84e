"""Dense and convolutional layers: ``nn.Linear``/``F.linear`` and ``nn.Conv2d``/``F.conv2d``."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .affine import AffineOp
from .base import Getter, flat_sum, pair, register_op


@register_op
class LinearOp(AffineOp):
    """``y = x W^T + b`` (``nn.Linear`` / ``F.linear``) on the last dimension.

    Soundness: affine (see :class:`AffineOp`); ``|L| r = r |W|^T``, ``L^T A = A W``.
    """

    kind = "Linear"
    modules = (nn.Linear,)
    functions = (F.linear, torch._C._nn.linear)

    def __init__(self, weight: Getter, bias: Getter) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    @classmethod
    def from_node(cls, b, n):
        if n.op == "call_module":
            m = b.module(n)
            return cls(lambda: m.weight, lambda: m.bias), [b.single_input(n)]
        b.check_kwargs(n, ("weight", "bias"))
        x = b.single_input(n)
        w = b.const_getter(b.arg(n, 1, "weight", None))
        bias = b.const_getter(b.arg(n, 2, "bias", None))
        return cls(w, bias), [x]

    def apply(self, x, bias=True):
        return F.linear(x, self.weight(), self.bias() if bias else None)

    def apply_abs(self, r):
        return F.linear(r, self.weight().abs())

    def apply_sq(self, s2):
        w = self.weight()
        return F.linear(s2, w * w)

    def transpose(self, A):
        return A.matmul(self.weight())

    def bias_dot(self, A):
        b = self.bias()
        if b is None:
            return None
        return flat_sum(A.matmul(b).unsqueeze(-1))


@register_op
class Conv2dOp(AffineOp):
    """2-D convolution with zero padding (``nn.Conv2d`` / ``F.conv2d``).

    Soundness: affine. ``|L| r`` is the convolution with ``|W|``; ``L^T A`` is the transposed
    convolution with the same weights (``output_padding`` restores input rows/columns that
    the stride skipped, which get coefficient 0).
    """

    kind = "Conv2d"
    modules = (nn.Conv2d,)
    functions = (F.conv2d, torch.conv2d)

    def __init__(self, weight: Getter, bias: Getter, stride, padding, dilation, groups) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        if n.op == "call_module":
            m = b.module(n)
            return cls.build(b, n, lambda: m.weight, lambda: m.bias, m.stride, m.padding,
                             m.dilation, m.groups, m.padding_mode), [x]
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        b.check_kwargs(n, names[1:])
        vals = [b.arg(n, i, nm, d) for i, (nm, d) in
                enumerate(zip(names, (None, None, None, 1, 0, 1, 1), strict=False))]
        return cls.build(b, n, b.const_getter(vals[1]), b.const_getter(vals[2]),
                         *[b.literal(v) for v in vals[3:]]), [x]

    @classmethod
    def build(cls, b, n, wg, bg, stride, padding, dilation, groups, padding_mode="zeros"):
        if padding_mode != "zeros":
            b.unsupported(n, why=f"padding_mode={padding_mode!r}")
        w = wg()
        if not torch.is_tensor(w) or w.dim() != 4:
            b.unsupported(n, why="weight is not a 4-d constant")
        kh, kw = w.shape[2:]
        dilation = pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                tot = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
                if tot[0] % 2 or tot[1] % 2:
                    b.unsupported(n, why="asymmetric 'same' padding")
                padding = (tot[0] // 2, tot[1] // 2)
            else:
                b.unsupported(n, why=f"padding={padding!r}")
        return cls(wg, bg, pair(stride), pair(padding), dilation, int(groups))

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def apply(self, x, bias=True):
        return self._conv(x, self.weight(), self.bias() if bias else None)

    def apply_abs(self, r):
        return self._conv(r, self.weight().abs())

    def apply_sq(self, s2):
        w = self.weight()
        return self._conv(s2, w * w)

    def transpose(self, A):
        B, S = A.shape[:2]
        w = self.weight()
        c_in, h_in, w_in = self.in_shapes[0]
        _, h_out, w_out = self.out_shape
        kh, kw = w.shape[2:]
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oph = h_in - ((h_out - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
        opw = w_in - ((w_out - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        out = F.conv_transpose2d(A.reshape(B * S, *self.out_shape), w, None, self.stride,
                                 self.padding, (oph, opw), self.groups, self.dilation)
        return out.reshape(B, S, c_in, h_in, w_in)

    def bias_dot(self, A):
        b = self.bias()
        if b is None:
            return None
        return A.sum(dim=(3, 4)).matmul(b)
