"""Reshapes and identities: ``view``/``reshape``/``flatten``/``nn.Flatten``/``nn.Unflatten``,
``nn.Identity``, eval-mode dropout, ``contiguous``/``clone`` (and their onnx2torch forms)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .affine import AffineOp
from .base import register_op, unsupported_mode


@register_op
class ReshapeOp(AffineOp):
    """Reshape of the per-example tensor (``view``, ``reshape``, ``flatten``, ``nn.Flatten``),
    batch dimension kept. Soundness: a permutation-free re-indexing; exact.

    Shape arguments may be computed from the input's shape (``x.view(x.size(0), -1)``): the
    recorded per-example output shape is used, so only input-dependent *values* are refused.
    """

    kind = "Reshape"
    modules = (nn.Flatten, nn.Unflatten, "OnnxReshape", "OnnxFlatten")
    functions = (torch.flatten, torch.reshape)
    methods = ("view", "reshape", "flatten")
    shape_args = True
    diagonal = True

    @classmethod
    def from_node(cls, b, n):
        if n.op == "call_module" and not b.is_onnx(n):
            return cls(), [b.single_input(n)]
        x = b.single_pert(n, n.args[0] if n.args else None)
        b.shape_args_ok(n, x)
        return cls(), [x]

    def apply(self, x, bias=True):
        return x.reshape(x.shape[0], *self.out_shape)

    def apply_abs(self, r):
        return self.apply(r)

    def diag_scale(self, s):
        return self.apply(s)

    def transpose(self, A):
        return A.reshape(A.shape[0], A.shape[1], *self.in_shapes[0])


_DROPOUT = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


@register_op
class IdentityOp(AffineOp):
    """``nn.Identity``, eval-mode dropout, ``contiguous``/``clone``. Exact."""

    kind = "Identity"
    modules = (nn.Identity, *_DROPOUT, "OnnxCopyIdentity")
    functions = (F.dropout,)
    methods = ("contiguous", "clone")
    diagonal = True

    def __init__(self, module=None, kind: str = "Identity") -> None:
        super().__init__()
        self.module = module
        self.kind = kind

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        if n.op == "call_module":
            m = b.module(n)
            tname = type(m).__name__
            if isinstance(m, _DROPOUT):
                op = cls(m, kind=tname)
                if m.training:
                    op.name = n.name
                    op.check()
                return op, [x]
            return cls(kind=tname), [x]
        if n.op == "call_method":
            return cls(kind=n.target), [x]
        if b.literal(b.arg(n, 2, "training", True)):
            b.unsupported(n, why="dropout with training=True")
        return cls(kind="dropout"), [x]

    def check(self):
        if self.module is not None and self.module.training:
            unsupported_mode(self, self.module)

    def apply(self, x, bias=True):
        return x

    def apply_abs(self, r):
        return r

    def diag_scale(self, s):
        return s

    def transpose(self, A):
        return A
