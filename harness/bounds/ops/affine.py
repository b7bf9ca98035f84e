"""The affine base class: ``y = L x + b`` for a fixed linear map ``L`` and offset ``b``.

Linear layers, convolutions, eval-mode batch norm, pooling by averaging, reshapes and
arithmetic with constants all derive from :class:`AffineOp`. For an affine map the backward
step ``A.y = (L^T A).x + A.b`` is an identity, hence exact, and the interval step
``L mid +- |L| rad`` is the exact range of each output over the input box. IBP on the L2 ball
also uses ``apply_sq``/``diag_scale`` (see :mod:`harness.bounds.ibp`).
"""
from __future__ import annotations

from typing import Optional

from .base import Op, Tensor


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

    def ibp_flags(self, flags):
        # exact per coordinate when each output reads one coordinate (diagonal), or when the
        # input set is the whole box (each output's extremes sit at a vertex of the box)
        exact, indep = flags[0]
        return exact and (self.diagonal or indep), indep and self.diagonal

    def backward(self, lA, uA, relax):
        if lA is not None and lA is uA:  # identical coefficients: transpose once
            la = self.transpose(lA)
            lb = self.bias_dot(lA)
            return [(la, la)], lb, lb
        la = None if lA is None else self.transpose(lA)
        ua = None if uA is None else self.transpose(uA)
        lb = None if lA is None else self.bias_dot(lA)
        ub = None if uA is None else self.bias_dot(uA)
        return [(la, ua)], lb, ub
