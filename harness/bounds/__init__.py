"""Certified robustness bounds: IBP, CROWN and CROWN-IBP, written for this harness (the ideas of
auto_LiRPA, none of its code).

A model is traced once with torch.fx into a graph of bound ops (:mod:`.graph`); each node's op
comes from the operator table in :mod:`.ops` (affine layers, pooling, arithmetic, ReLU,
LeakyReLU, MaxPool2d; adding one is a class in one file, registered in one line). Bounds are
always computed on a specification ``C . f`` (margins ``f_y - f_j``):

>>> bm = BoundedModel(model, input_shape=(1, 28, 28))
>>> lb, ub = bm.bounds(x, 0.1, norm="Linf", method="ibp", C=margin_spec(y, 10))
>>> ok = bm.certify(x, y, 0.1, norm="Linf", method="crown")
>>> r, calls = certified_radius(bm, x, y, eps_max=0.3, norm="Linf", method="crown", tol=1e-3)

Randomized smoothing (Cohen et al. 2019) lives in :mod:`.smoothing`; alpha-CROWN (optimised
slopes, declared per op in the operator table) in :mod:`.alpha`; complete verification of one
property (IBP -> CROWN -> alpha-CROWN -> attack -> beta-CROWN branch and bound, ``verify``,
``Budget``, ``Verdict``, ``robustness_spec``, ``check_counterexample``) in :mod:`.bab`.
"""
from __future__ import annotations

from .bounded import METHODS, BoundedModel, check_affordable, estimate_cost, margin_spec, other_classes
from .radius import certified_radius

__all__ = [
    "BoundedModel",
    "METHODS",
    "certified_radius",
    "check_affordable",
    "estimate_cost",
    "margin_spec",
    "other_classes",
]
