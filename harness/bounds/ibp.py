"""Interval bound propagation (IBP), differentiable (plain torch ops, no ``no_grad``).

Each node carries one of two states:

:class:`Box`
    elementwise bounds ``lower <= v <= upper``, with two flags: ``exact`` (every bound is the
    true min/max over the input set) and ``indep`` (the set of values is the full product box:
    each coordinate is a monotone function of its own input coordinate; true for the Linf input
    box and after elementwise ops). An affine op on an ``indep`` exact box gives exact bounds.
:class:`Ball`
    for the L2 ball: ``v = center + scale * R(delta)`` with ``||delta||_2 <= eps`` and ``R`` a
    reshape, i.e. an elementwise-affine image of the input. This is kept through the
    normalisation (sub/div by buffers), batch norm, reshapes. The first general linear map ``W``
    (``Linear``/``Conv2d``) then gets the exact per-neuron range via row norms (dual norm):
    ``W center +- eps * sqrt((W*W) (scale*scale))``. Any other op first turns a Ball into its
    exact box ``center +- eps*|scale|`` (sound, since the ball lies in that box).

The final layer can be merged with the specification ``C`` (as in CROWN-IBP): when the output
node is affine, ``C.y = (C L).x + C.b`` is bounded directly from the box of its input, which is
never looser than bounding ``C`` times the output box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from . import ops as O
from .sets import InputSet, safe_sqrt

Tensor = torch.Tensor


@dataclass
class Box:
    lower: Tensor
    upper: Tensor
    exact: bool = False
    indep: bool = False


@dataclass
class Ball:
    center: Tensor
    scale: Tensor
    eps: Tensor  # (B,)

    def box(self) -> Box:
        r = self.eps.view(-1, *([1] * (self.center.dim() - 1))) * self.scale.abs()
        return Box(self.center - r, self.center + r, exact=True, indep=False)


State = Union[Box, Ball]


def to_box(s: State) -> Box:
    return s.box() if isinstance(s, Ball) else s


def input_state(inputs: InputSet) -> State:
    if inputs.norm == "Linf":
        return Box(inputs.lower, inputs.upper, exact=True, indep=True)
    return Ball(inputs.x, torch.ones_like(inputs.x), inputs.eps)


def step(op: O.Op, ins: list) -> State:
    """IBP through one op: its interval rule on the input boxes, with the exactness flags it
    reports (:meth:`Op.ibp_flags`). Affine ops also carry an L2 :class:`Ball` exactly."""
    if isinstance(op, O.AffineOp) and isinstance(ins[0], Ball):
        s = ins[0]
        if op.diagonal:
            return Ball(op.apply(s.center), op.diag_scale(s.scale), s.eps)
        sq = op.apply_sq(s.scale * s.scale)
        if sq is not None:
            c = op.apply(s.center)
            r = s.eps.view(-1, *([1] * (c.dim() - 1))) * safe_sqrt(sq)
            return Box(c - r, c + r, exact=True, indep=False)
    boxes = [to_box(s) for s in ins]
    lo, hi = op.ibp(*[(b.lower, b.upper) for b in boxes])
    exact, indep = op.ibp_flags([(b.exact, b.indep) for b in boxes])
    return Box(lo, hi, exact=exact, indep=indep)


Refine = Callable[[int, Tensor, Tensor, dict], tuple]


def propagate(graph, inputs: InputSet, refine: Optional[Refine] = None,
              needed: Optional[set] = None) -> tuple[list, dict]:
    """IBP over the graph. Returns (states per node, {node: (lower, upper)} for the nodes whose
    bounds a relaxation needs, ``graph.needs_bounds``: the pre-activation bounds).

    ``refine(i, lower, upper, bounds)`` may tighten the box of such a node ``i`` (CROWN); it is
    called only where IBP is not already exact. ``needed``: nodes to compute (default all).
    """
    states: list = [None] * len(graph.nodes)
    states[0] = input_state(inputs)
    pre: dict = {}
    if 0 in graph.needs_bounds:  # an activation applied to the input itself
        b = to_box(states[0])
        pre[0] = (b.lower, b.upper)
    for i in range(1, len(graph.nodes)):
        if needed is not None and i not in needed:
            continue
        node = graph.nodes[i]
        st = step(node.op, [states[j] for j in node.inputs])
        if i in graph.needs_bounds:
            box = to_box(st)
            if refine is not None and not box.exact:
                lo, hi = refine(i, box.lower, box.upper, pre)
                box = Box(lo, hi)
                st = box
            pre[i] = (box.lower, box.upper)
        states[i] = st
    return states, pre


def spec_bounds(graph, states: list, C: Optional[Tensor], lower: bool = True,
                upper: bool = True) -> tuple:
    """Bounds on ``C . f`` (B, S) from IBP states, or on ``f`` (B, K) when ``C`` is None."""
    out = graph.nodes[graph.output]
    if C is None:
        b = to_box(states[graph.output])
        return (b.lower if lower else None), (b.upper if upper else None)
    if isinstance(out.op, O.AffineOp):
        s = states[out.inputs[0]]
        A = out.op.transpose(C)
        bias = out.op.bias_dot(C)
        Af = A.reshape(A.shape[0], A.shape[1], -1)
        if isinstance(s, Ball):
            c = Af.bmm(s.center.reshape(s.center.shape[0], -1, 1)).squeeze(-1)
            sc = s.scale.expand_as(s.center).reshape(s.center.shape[0], 1, -1)
            r = s.eps.unsqueeze(1) * safe_sqrt(((Af * sc) ** 2).sum(-1))
        else:
            mid = ((s.upper + s.lower) / 2).reshape(s.lower.shape[0], -1, 1)
            rad = ((s.upper - s.lower) / 2).reshape(s.lower.shape[0], -1, 1)
            c = Af.bmm(mid).squeeze(-1)
            r = Af.abs().bmm(rad).squeeze(-1)
        if bias is not None:
            c = c + bias
        return (c - r if lower else None), (c + r if upper else None)
    b = to_box(states[graph.output])
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    lo = hi = None
    if lower:
        lo = Cp.bmm(b.lower.unsqueeze(-1)).squeeze(-1) + Cn.bmm(b.upper.unsqueeze(-1)).squeeze(-1)
    if upper:
        hi = Cp.bmm(b.upper.unsqueeze(-1)).squeeze(-1) + Cn.bmm(b.lower.unsqueeze(-1)).squeeze(-1)
    return lo, hi
