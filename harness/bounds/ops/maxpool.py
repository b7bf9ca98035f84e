"""Max pooling: ``nn.MaxPool2d``, ``F.max_pool2d`` (any kernel, stride, padding, dilation,
ceil mode; overlapping windows included)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Op, Tensor, bias_dot, pair, register_op

_INF = float("inf")


@register_op
class MaxPool2dOp(Op):
    """``y_o = max_{j in W_o} x_j`` over each pooling window ``W_o``, given ``l <= x <= u``.

    IBP: ``[maxpool(l), maxpool(u)]``, the exact range of every output when the input set is
    the whole box (max is non-decreasing in each argument, and both corners are in the box).

    CROWN relaxation (the non-optimised one of auto_LiRPA's ``BoundMaxPool`` and of DeepPoly's
    max pooling), per window, with ``k`` the input of the window with the largest lower bound:

    - lower: ``y_o >= x_k``. Sound: the max is at least any one of its arguments.
    - upper, when the window is *decided* (``l_k >= u_j`` for every other ``j`` in it):
      ``y_o <= x_k``; then ``x_k >= l_k >= u_j >= x_j``, so ``y_o = x_k`` exactly.
    - upper otherwise: the constant ``y_o <= U_o = max_{j in W_o} u_j``. Sound: every argument
      is at most its upper bound. (A linear upper bound such as ``x_k + (max_{j != k} u_j - l_k)``
      is also sound, but it is never below ``U_o`` where ``x_k`` is near ``u_k``, and CROWN
      keeps one line per neuron; the constant is the choice of auto_LiRPA and DeepPoly.)

    For a lower bound, positive coefficients take the lower relaxation and negative ones the
    upper one (and vice versa): each term ``A_o y_o`` is then bounded on the right side for
    every input in the box, hence the sum. The coefficient of ``y_o`` moves onto ``x_k``
    (summed where windows overlap and pick the same input); padding never wins (it is -inf).

    Only inputs of undecided windows that are not dominated (``u_j >= l_k``) influence the
    relaxation, so full CROWN tightens only those (:meth:`loose`).
    """

    kind = "MaxPool2d"
    modules = (nn.MaxPool2d,)
    functions = (F.max_pool2d, torch.max_pool2d)
    needs_input_bounds = True

    def __init__(self, kernel, stride, padding, dilation, ceil_mode) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.dilation, self.ceil_mode = dilation, bool(ceil_mode)
        self._tables: dict = {}

    @classmethod
    def from_node(cls, b, n):
        x = b.single_input(n)
        if b.value(x).dim() != 4:
            b.unsupported(n, why="max pooling of a non-4d tensor")
        if n.op == "call_module":
            m = b.module(n)
            k = pair(m.kernel_size)
            stride = k if m.stride is None else pair(m.stride)
            return cls(k, stride, pair(m.padding), pair(m.dilation), m.ceil_mode), [x]
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices")
        b.check_kwargs(n, names[1:])
        v = [None] + [b.literal(b.arg(n, i, nm, d)) for i, (nm, d) in
                      enumerate(zip(names, (None, None, None, 0, 1, False, False), strict=False)) if i]
        if v[6]:
            b.unsupported(n, why="return_indices=True")
        k = pair(v[1])
        empty = v[2] is None or (isinstance(v[2], (list, tuple)) and len(v[2]) == 0)
        return cls(k, k if empty else pair(v[2]), pair(v[3]), pair(v[4]), bool(v[5])), [x]

    # ---- concrete and interval rules -----------------------------------------------------------

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def ibp(self, iv):
        lo, hi = iv
        return self.forward(lo), self.forward(hi)

    def ibp_flags(self, flags):
        exact, indep = flags[0]
        return exact and indep, False

    # ---- relaxation ----------------------------------------------------------------------------

    def _table(self, device) -> Tensor:
        """(K, L) long: for each slot of each window (K = kh*kw slots, L = Ho*Wo windows), the
        flat input position in H*W, or H*W for padding."""
        t = self._tables.get(device)
        if t is None:
            _, H, W = self.in_shapes[0]
            _, Ho, Wo = self.out_shape
            (kh, kw), (sh, sw) = self.kernel, self.stride
            (ph, pw), (dh, dw) = self.padding, self.dilation
            need_h = (Ho - 1) * sh + dh * (kh - 1) + 1  # padded size the windows reach
            need_w = (Wo - 1) * sw + dw * (kw - 1) + 1  # (ceil mode may pass the padding)
            extra_h, extra_w = max(0, need_h - H - 2 * ph), max(0, need_w - W - 2 * pw)
            pos = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
            pos = F.pad(pos, (pw, pw + extra_w, ph, ph + extra_h), value=float(H * W))
            cols = F.unfold(pos, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
            hp, wp = pos.shape[2:]
            nh = (hp - dh * (kh - 1) - 1) // sh + 1
            nw = (wp - dw * (kw - 1) - 1) // sw + 1
            cols = cols.reshape(kh * kw, nh, nw)[:, :Ho, :Wo]
            t = self._tables[device] = cols.reshape(kh * kw, Ho * Wo).round().long().to(device)
        return t

    def _windows(self, t: Tensor) -> Tensor:
        """(B, C, K, L): the values of ``t`` (B, C, H, W) in each window slot, -inf on padding."""
        B, C, H, W = t.shape
        flat = torch.cat([t.reshape(B, C, H * W), t.new_full((B, C, 1), -_INF)], 2)
        return flat[:, :, self._table(t.device)]

    def _decide(self, lo: Tensor, hi: Tensor):
        cl, cu = self._windows(lo), self._windows(hi)
        lk, kloc = cl.max(2)                          # (B, C, L): largest lower bound, its slot
        others = cu.scatter(2, kloc.unsqueeze(2), -_INF).max(2).values
        decided = lk >= others                        # single-input windows: others = -inf
        return cu, lk, kloc, decided

    def relax(self, in_bounds):
        """``(k, decided, U)``, each (B, C, L): the chosen input (flat position in H*W), whether
        the window is decided, and the window's largest upper bound."""
        lo, hi = in_bounds[0]
        cu, _, kloc, decided = self._decide(lo, hi)
        B, C = lo.shape[:2]
        table = self._table(lo.device)
        k = table.expand(B, C, *table.shape).gather(2, kloc.unsqueeze(2)).squeeze(2)
        return k, decided, cu.max(2).values

    def loose(self, k, lower, upper):
        cu, lk, _, decided = self._decide(lower, upper)
        B, C, H, W = lower.shape
        matters = ((~decided).unsqueeze(2) & (cu >= lk.unsqueeze(2))).to(lower.dtype)
        table = self._table(lower.device)
        hits = lower.new_zeros(B, C, H * W + 1).scatter_add_(
            2, table.reshape(1, 1, -1).expand(B, C, -1), matters.reshape(B, C, -1))
        return (hits[:, :, :H * W] > 0).reshape(B, C, H, W)

    def backward(self, lA, uA, relax):
        k, decided, U = relax
        und = ~decided.unsqueeze(1)                   # (B, 1, C, L)

        def side(A, sign):
            if A is None:
                return None, None
            B, S = A.shape[:2]
            Af = A.reshape(B, S, *k.shape[1:])
            # sign -1 (lower bound): positive parts follow x_k, negative parts take U (undecided)
            to_u = Af.clamp(max=0) if sign < 0 else Af.clamp(min=0)
            const = torch.where(und, to_u, torch.zeros_like(Af))
            coef = Af - const
            C, L = k.shape[1:]
            _, H, W = self.in_shapes[0]
            out = Af.new_zeros(B, S, C, H * W).scatter_add_(
                3, k.unsqueeze(1).expand(B, S, C, L), coef)
            return out.reshape(B, S, C, H, W), bias_dot(const, U)

        la, lb = side(lA, -1)
        ua, ub = side(uA, +1)
        return [(la, ua)], lb, ub
