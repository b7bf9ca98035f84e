"""Arithmetic: ``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` with constants ``c``
(:class:`ScaleShiftOp`), and sums/differences of two input-dependent tensors (:class:`AddOp`,
:class:`SubOp`); operator, ``torch.*``, ``Tensor.*`` and onnx2torch forms."""
from __future__ import annotations

import operator
from typing import Optional

import torch

from .affine import AffineOp
from .base import Getter, Op, dot, register_op

#: Tensor method -> (kind, operands reversed)
_METHOD_KIND = {"add": ("add", False), "add_": ("add", False), "__add__": ("add", False),
                "__radd__": ("add", True), "sub": ("sub", False), "sub_": ("sub", False),
                "__sub__": ("sub", False), "__rsub__": ("sub", True), "mul": ("mul", False),
                "mul_": ("mul", False), "__mul__": ("mul", False), "__rmul__": ("mul", True),
                "div": ("div", False), "div_": ("div", False), "__truediv__": ("div", False),
                "__rtruediv__": ("div", True)}
_FUNCTION_KIND = {}
for _kind, _fns in (("add", (operator.add, operator.iadd, torch.add)),
                    ("sub", (operator.sub, operator.isub, torch.sub, torch.subtract)),
                    ("mul", (operator.mul, operator.imul, torch.mul, torch.multiply)),
                    ("div", (operator.truediv, operator.itruediv, torch.div, torch.true_divide,
                             torch.divide))):
    for _f in _fns:
        _FUNCTION_KIND[_f] = _kind
_NEG_FUNCTIONS = (operator.neg, torch.neg, torch.negative)


def _of_kind(kind: str, extra=()) -> tuple:
    return tuple(f for f, k in _FUNCTION_KIND.items() if k == kind) + tuple(extra)


def _methods_of(*kinds: str) -> tuple:
    return tuple(m for m, (k, _) in _METHOD_KIND.items() if k in kinds)


def build_arith(b, n):
    """The op of an arithmetic node (any of the forms in this module's docstring)."""
    what = None
    if n.op == "call_module":  # onnx2torch's OnnxBinaryMathOperation
        m = b.module(n)
        what = type(m).__name__
        if getattr(m, "broadcast", None) == 1 and getattr(m, "axis", None) is not None:
            b.unsupported(n, what, "old-style broadcast")
        fn = m.math_op_function
        kind = {torch.add: "add", torch.sub: "sub", torch.mul: "mul"}.get(fn)
        if kind is None and getattr(fn, "__name__", "") == "_onnx_div":
            kind = "div"
        if kind is None or len(n.args) != 2:
            b.unsupported(n, what)
        rev = False
    elif n.op == "call_method":
        kind, rev = _METHOD_KIND[n.target]
    else:
        if n.target in _NEG_FUNCTIONS:
            return ScaleShiftOp("neg", lambda: -1.0, None), [b.single_input(n)]
        kind, rev = _FUNCTION_KIND[n.target], False
    b.check_kwargs(n, ())
    if len(n.args) != 2:
        b.unsupported(n, what, "unexpected call signature")
    a, c = (n.args[1], n.args[0]) if rev else (n.args[0], n.args[1])
    return _binary(b, n, kind, a, c, what)


def _binary(b, n, kind: str, a, c, what: Optional[str]):
    pa, pc = b.is_pert(a), b.is_pert(c)
    out_shape = tuple(b.value(n).shape)
    if pa and pc:
        if tuple(b.value(a).shape) != out_shape or tuple(b.value(c).shape) != out_shape:
            b.unsupported(n, what, "operands of different shapes")
        if kind == "add":
            return AddOp(), [a, c]
        if kind == "sub":
            return SubOp(), [a, c]
        b.unsupported(n, what, f"{kind} of two input-dependent tensors")
    x, c, x_first = (a, c, True) if pa else (c, a, False)
    if tuple(b.value(x).shape) != out_shape:
        b.unsupported(n, what, "a constant operand broadcasts the input-dependent tensor")
    nd = len(out_shape)
    cval = b.const_value(c)
    if torch.is_tensor(cval):
        if cval.dim() > nd or (cval.dim() == nd and cval.shape[0] != 1):
            b.unsupported(n, what, "constant with a batch dimension")
    elif not isinstance(cval, (int, float, bool)):
        b.unsupported(n, what, f"constant operand of type {type(cval).__name__}")
    get = b.per_example(b.const_getter(c), nd - 1)
    if kind == "add":
        op = ScaleShiftOp("add", None, get)
    elif kind == "sub" and x_first:
        op = ScaleShiftOp("sub", None, lambda: -get())
    elif kind == "sub":
        op = ScaleShiftOp("rsub", lambda: -1.0, get)
    elif kind == "mul":
        op = ScaleShiftOp("mul", get, None)
    elif kind == "div" and x_first:
        op = ScaleShiftOp("div", lambda: 1.0 / get(), None)
    else:
        b.unsupported(n, what, "division by an input-dependent tensor")
    return op, [x]


@register_op
class ScaleShiftOp(AffineOp):
    """Arithmetic with constants: ``y = x * scale + shift`` elementwise (``x + c``, ``x - c``,
    ``c - x``, ``x * c``, ``c * x``, ``x / c``, ``-x``), constants broadcast without changing
    the shape of ``x``. Also builds :class:`AddOp`/:class:`SubOp` for two input-dependent
    operands (see :func:`build_arith`).

    Soundness: diagonal affine map; exact.
    """

    modules = ("OnnxBinaryMathOperation",)
    functions = _of_kind("mul") + _of_kind("div") + _NEG_FUNCTIONS
    methods = _methods_of("mul", "div") + ("neg",)
    diagonal = True

    def __init__(self, kind: str, scale: Optional[Getter], shift: Optional[Getter]) -> None:
        super().__init__()
        self.kind = kind
        self._scale, self._shift = scale, shift

    @classmethod
    def from_node(cls, b, n):
        if n.op == "call_method" and n.target == "neg":
            return cls("neg", lambda: -1.0, None), [b.single_input(n)]
        return build_arith(b, n)

    def scale(self):
        return None if self._scale is None else self._scale()

    def shift(self):
        return None if self._shift is None else self._shift()

    def apply(self, x, bias=True):
        s, b = self.scale(), self.shift()
        y = x if s is None else x * s
        return y + b if (bias and b is not None) else y

    def apply_abs(self, r):
        s = self.scale()
        return r if s is None else r * abs(s)

    def diag_scale(self, s):
        c = self.scale()
        return s if c is None else s * c

    def transpose(self, A):
        s = self.scale()
        return A if s is None else A * s

    def bias_dot(self, A):
        b = self.shift()
        return None if b is None else dot(A, b)


@register_op
class AddOp(Op):
    """Sum of two input-dependent tensors of the same shape (residual connections); the same
    targets with a constant operand build a :class:`ScaleShiftOp`.

    Soundness: ``A.(x + y) = A.x + A.y`` exactly; IBP adds the intervals.
    """

    kind = "add"
    functions = _of_kind("add")
    methods = _methods_of("add")
    shared_backward = True

    @classmethod
    def from_node(cls, b, n):
        return build_arith(b, n)

    def forward(self, x, y):
        return x + y

    def ibp(self, a, b):
        return a[0] + b[0], a[1] + b[1]

    def backward(self, lA, uA, relax):
        return [(lA, uA), (lA, uA)], None, None


@register_op
class SubOp(Op):
    """Difference of two input-dependent tensors of the same shape; the same targets with a
    constant operand build a :class:`ScaleShiftOp`.

    Soundness: ``A.(x - y) = A.x + (-A).y`` exactly; IBP ``[lx - uy, ux - ly]``.
    """

    kind = "sub"
    functions = _of_kind("sub")
    methods = _methods_of("sub")
    shared_backward = True

    @classmethod
    def from_node(cls, b, n):
        return build_arith(b, n)

    def forward(self, x, y):
        return x - y

    def ibp(self, a, b):
        return a[0] - b[1], a[1] - b[0]

    def backward(self, lA, uA, relax):
        if lA is not None and lA is uA:
            n = -lA
            return [(lA, uA), (n, n)], None, None
        neg = (None if lA is None else -lA, None if uA is None else -uA)
        return [(lA, uA), neg], None, None
