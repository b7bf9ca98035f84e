"""Bound rules, one small class per operator.

Every operator node of a traced model becomes one :class:`Op`. An op knows its per-example
input/output shapes (``in_shapes``, ``out_shape``; the batch dimension is never included) and
implements three rules:

``forward(*xs)``
    the concrete computation (used to check that the traced graph reproduces the model);
``ibp(*intervals)``
    interval bound propagation: given elementwise bounds ``(lower, upper)`` on each
    input-dependent input, return elementwise bounds on the output;
``backward(lA, uA, in_bounds)``
    the CROWN step: the bound being built is ``lA . out + lbias`` (a lower bound) and
    ``uA . out + ubias`` (an upper bound), with ``lA``/``uA`` of shape ``(B, S, *out_shape)``;
    return the coefficients on each input and the extra bias terms (shape ``(B, S)``), so
    that the bound stays valid one layer further back. ``None`` means "not requested".

Affine operators (linear layers, convolutions, eval-mode batch norm, pooling by averaging,
reshapes, arithmetic with constants) share :class:`AffineOp`: for an affine map
``y = L x + b`` the backward step ``A.y = (L^T A).x + A.b`` is an identity, hence exact, and
the interval step ``L mid +- |L| rad`` is the exact range of each output over the input box.
Only :class:`ReLUOp` relaxes anything.

Constants (weights, normalisation buffers) are read through getters *every* time an op runs,
so the bounds follow the live parameters of the model (and are differentiable in them).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import HarnessError

Tensor = torch.Tensor
Getter = Callable[[], object]
Shape = tuple


def _flat_sum(t: Tensor) -> Tensor:
    """Sum a (B, S, ...) tensor over everything after the first two dimensions."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def _dot(A: Tensor, c) -> Tensor:
    """``sum(A * c)`` over the per-example dims of ``A`` (B, S, *shape), for ``c`` a number or a
    tensor broadcastable to ``shape``; dims along which ``c`` is constant are summed first."""
    if not torch.is_tensor(c) or c.dim() == 0:
        return _flat_sum(A) * c
    nd = A.dim() - 2
    c = c.reshape((1,) * (nd - c.dim()) + tuple(c.shape))
    dims = [2 + d for d in range(nd) if c.shape[d] == 1 and A.shape[2 + d] != 1]
    if dims:
        A = A.sum(dim=dims, keepdim=True)
    return _flat_sum(A * c)


class Op:
    """Base class: one operator node with its bound rules."""

    kind = "op"
    diagonal = False  # maps each coordinate to exactly one coordinate (elementwise affine/reshape)
    shared_backward = False  # backward rule independent of the example (linear, no input bounds)

    def __init__(self) -> None:
        self.name = ""
        self.in_shapes: list[Shape] = []
        self.out_shape: Shape = ()

    def describe(self) -> str:
        return f"{self.kind} at node {self.name}"

    def check(self) -> None:
        """Raise if the operator is currently in a mode the rules do not cover."""

    def forward(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def ibp(self, *ivs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def backward(self, lA, uA, in_bounds):  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Affine operators
# --------------------------------------------------------------------------------------------


class AffineOp(Op):
    """``y = L x + b`` for a fixed linear map ``L`` and offset ``b``.

    Soundness: IBP uses ``L mid +- |L| rad``, which is the exact range of every output over the
    box ``mid +- rad`` (each output is maximised at a vertex). The backward step substitutes
    ``y = L x + b`` into ``A.y``, an identity, so nothing is lost.
    """

    kind = "affine"
    shared_backward = True

    def apply(self, x: Tensor, bias: bool = True) -> Tensor:  # (N, *in) -> (N, *out)
        raise NotImplementedError

    def apply_abs(self, r: Tensor) -> Tensor:
        """``|L| r`` (elementwise absolute value of the matrix of ``L``)."""
        raise NotImplementedError

    def apply_sq(self, s2: Tensor) -> Optional[Tensor]:
        """``(L * L) s2`` (elementwise square of the matrix), or None when not cheap."""
        return None

    def diag_scale(self, s: Tensor) -> Tensor:
        """For diagonal ops: the per-coordinate scale of ``L`` applied to a scale tensor."""
        raise NotImplementedError

    def transpose(self, A: Tensor) -> Tensor:
        """``L^T`` applied to every row: (B, S, *out) -> (B, S, *in)."""
        raise NotImplementedError

    def bias_dot(self, A: Tensor) -> Optional[Tensor]:
        """``A . b`` -> (B, S), or None when the op has no offset."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.apply(x)

    def ibp(self, iv):
        lo, hi = iv
        mid = (hi + lo) / 2
        rad = (hi - lo) / 2
        m = self.apply(mid)
        r = self.apply_abs(rad)
        return m - r, m + r

    def backward(self, lA, uA, in_bounds):
        if lA is not None and lA is uA:  # identical coefficients: transpose once
            la = self.transpose(lA)
            lb = self.bias_dot(lA)
            return [(la, la)], lb, lb
        la = None if lA is None else self.transpose(lA)
        ua = None if uA is None else self.transpose(uA)
        lb = None if lA is None else self.bias_dot(lA)
        ub = None if uA is None else self.bias_dot(uA)
        return [(la, ua)], lb, ub


class LinearOp(AffineOp):
    """``y = x W^T + b`` (``nn.Linear`` / ``F.linear``) on the last dimension.

    Soundness: affine (see :class:`AffineOp`); ``|L| r = r |W|^T``, ``L^T A = A W``.
    """

    kind = "Linear"

    def __init__(self, weight: Getter, bias: Getter) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

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
        return _flat_sum(A.matmul(b).unsqueeze(-1))


class Conv2dOp(AffineOp):
    """2-D convolution with zero padding (``nn.Conv2d`` / ``F.conv2d``).

    Soundness: affine. ``|L| r`` is the convolution with ``|W|``; ``L^T A`` is the transposed
    convolution with the same weights (``output_padding`` restores input rows/columns that
    the stride skipped, which get coefficient 0).
    """

    kind = "Conv2d"

    def __init__(self, weight: Getter, bias: Getter, stride, padding, dilation, groups) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

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


class BatchNormOp(AffineOp):
    """Eval-mode batch norm: ``y = x * g / sqrt(var + eps) + (beta - mean * g / sqrt(var + eps))``
    per channel (dimension 1), with the running statistics.

    Soundness: a per-channel affine map (diagonal); exact. Raises in training mode, where the
    output would depend on the batch.
    """

    kind = "BatchNorm"
    diagonal = True

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def check(self):
        m = self.module
        if m.training:
            raise HarnessError(f"{type(m).__name__} at node {self.name} is in training mode; "
                               "certified bounds need the model in eval mode (model.eval())")

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
        return _dot(A, self._scale_shift()[1])


class ScaleShiftOp(AffineOp):
    """Arithmetic with constants: ``y = x * scale + shift`` elementwise (``x + c``, ``x - c``,
    ``c - x``, ``x * c``, ``c * x``, ``x / c``, ``-x``), constants broadcast without changing
    the shape of ``x``.

    Soundness: diagonal affine map; exact.
    """

    diagonal = True

    def __init__(self, kind: str, scale: Optional[Getter], shift: Optional[Getter]) -> None:
        super().__init__()
        self.kind = kind
        self._scale, self._shift = scale, shift

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
        return None if b is None else _dot(A, b)


class ReshapeOp(AffineOp):
    """Reshape of the per-example tensor (``view``, ``reshape``, ``flatten``, ``nn.Flatten``),
    batch dimension kept. Soundness: a permutation-free re-indexing; exact."""

    kind = "Reshape"
    diagonal = True

    def apply(self, x, bias=True):
        return x.reshape(x.shape[0], *self.out_shape)

    def apply_abs(self, r):
        return self.apply(r)

    def diag_scale(self, s):
        return self.apply(s)

    def transpose(self, A):
        return A.reshape(A.shape[0], A.shape[1], *self.in_shapes[0])


class IdentityOp(AffineOp):
    """``nn.Identity``, eval-mode dropout, ``contiguous``/``clone``. Exact."""

    kind = "Identity"
    diagonal = True

    def __init__(self, module=None, kind: str = "Identity") -> None:
        super().__init__()
        self.module = module
        self.kind = kind

    def check(self):
        if self.module is not None and self.module.training:
            raise HarnessError(f"{type(self.module).__name__} at node {self.name} is in training "
                               "mode; certified bounds need the model in eval mode (model.eval())")

    def apply(self, x, bias=True):
        return x

    def apply_abs(self, r):
        return r

    def diag_scale(self, s):
        return s

    def transpose(self, A):
        return A


class AvgPool2dOp(AffineOp):
    """Average pooling (``nn.AvgPool2d``, ``F.avg_pool2d``, adaptive pooling to a divisor size).

    Soundness: linear with non-negative weights, so ``|L| r`` is the pooling of ``r``; ``L^T`` is
    the pooling's input gradient (``avg_pool2d_backward``), exact for every padding/ceil mode.
    """

    kind = "AvgPool2d"

    def __init__(self, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

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


class MeanOp(AffineOp):
    """Mean over some non-batch dimensions (``x.mean(dims)``, global average pooling).

    Soundness: linear with non-negative weights ``1/n``; ``L^T`` spreads each coefficient
    uniformly over the averaged positions. Exact.
    """

    kind = "mean"

    def __init__(self, dims: Sequence[int], keepdim: bool) -> None:
        super().__init__()
        self.dims = tuple(sorted(dims))  # dims of the full (batched) tensor, all >= 1
        self.keepdim = keepdim

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


# --------------------------------------------------------------------------------------------
# Non-affine operators
# --------------------------------------------------------------------------------------------


class ReLUOp(Op):
    """``y = max(x, 0)``, given bounds ``l <= x <= u`` on its input.

    IBP: ``[relu(l), relu(u)]`` (relu is monotone). CROWN relaxation for an unstable neuron
    (``l < 0 < u``): upper line through ``(l, 0)`` and ``(u, u)``, i.e. ``u (x - l) / (u - l)``,
    which lies above relu on ``[l, u]`` because relu is convex; lower line ``a x`` with
    ``a = 1 if u >= -l else 0`` (any ``a`` in [0, 1] lies below relu). Stable neurons are exact
    (``y = x`` when ``l >= 0``, ``y = 0`` when ``u <= 0``). For a lower bound, positive
    coefficients take the lower line and negative ones the upper line (and vice versa).
    """

    kind = "ReLU"

    def forward(self, x):
        return torch.relu(x)

    def ibp(self, iv):
        lo, hi = iv
        return torch.relu(lo), torch.relu(hi)

    @staticmethod
    def relaxation(lo: Tensor, hi: Tensor):
        """(lower slope, upper slope, upper intercept), each shaped like ``lo``."""
        unstable = (lo < 0) & (hi > 0)
        active = (lo >= 0).to(lo.dtype)
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        up_slope = torch.where(unstable, hi / width, active)
        up_icpt = torch.where(unstable, -lo * hi / width, torch.zeros_like(lo))
        low_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype), active)
        return low_slope, up_slope, up_icpt

    def backward(self, lA, uA, in_bounds, relax=None):
        d_l, d_u, b_u = relax if relax is not None else self.relaxation(*in_bounds[0])
        B = d_l.shape[0]
        gap = (d_u - d_l).unsqueeze(1)
        bu = b_u.reshape(B, -1, 1)
        d_l = d_l.unsqueeze(1)
        la = ua = lb = ub = None
        # pos * d_l + neg * d_u == A * d_l + neg * (d_u - d_l)
        if lA is not None:
            neg = lA.clamp(max=0)
            la = lA * d_l + neg * gap
            lb = neg.reshape(B, neg.shape[1], -1).bmm(bu).squeeze(-1)
        if uA is not None:
            pos = uA.clamp(min=0)
            ua = uA * d_l + pos * gap
            ub = pos.reshape(B, pos.shape[1], -1).bmm(bu).squeeze(-1)
        return [(la, ua)], lb, ub


class AddOp(Op):
    """Sum of two input-dependent tensors of the same shape (residual connections).

    Soundness: ``A.(x + y) = A.x + A.y`` exactly; IBP adds the intervals.
    """

    kind = "add"
    shared_backward = True

    def forward(self, x, y):
        return x + y

    def ibp(self, a, b):
        return a[0] + b[0], a[1] + b[1]

    def backward(self, lA, uA, in_bounds):
        return [(lA, uA), (lA, uA)], None, None


class SubOp(Op):
    """Difference of two input-dependent tensors of the same shape.

    Soundness: ``A.(x - y) = A.x + (-A).y`` exactly; IBP ``[lx - uy, ux - ly]``.
    """

    kind = "sub"
    shared_backward = True

    def forward(self, x, y):
        return x - y

    def ibp(self, a, b):
        return a[0] - b[1], a[1] - b[0]

    def backward(self, lA, uA, in_bounds):
        if lA is not None and lA is uA:
            n = -lA
            return [(lA, uA), (n, n)], None, None
        neg = (None if lA is None else -lA, None if uA is None else -uA)
        return [(lA, uA), neg], None, None
