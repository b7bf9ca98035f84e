"""CROWN: backward propagation of linear bounds (Zhang et al. 2018), and CROWN-IBP.

A bound on ``A . v_target`` is pushed backward through the graph, node by node in reverse
topological order, with each op's ``backward`` rule (exact for affine ops, a linear relaxation
for ops that declare ``needs_input_bounds``, built by ``op.relax`` from bounds on their
inputs); coefficients from several consumers of a node add up (residual connections). At the
input the linear function is concretised over the input set (:meth:`InputSet.concretize`).

Intermediate bounds (the pre-activation bounds each relaxation needs):

``crown``
    full CROWN: for every node whose bounds a relaxation needs, in topological order, run the
    same backward pass from that node with an identity specification. Only the neurons the
    consumers' relaxations are sensitive to (``op.loose``: e.g. ReLU neurons whose sign the IBP
    box, computed from the already-tightened earlier layers, leaves open) are tightened, since
    the relaxation of the others is exact whatever their bounds; the CROWN box is intersected
    with the IBP box (both are sound, so their intersection is). Where IBP is exact (e.g. the
    first layer) CROWN cannot improve and is skipped.
``crown-ibp``
    IBP intermediate bounds, CROWN only for the final specification.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ibp as I
from .sets import InputSet

Tensor = torch.Tensor


class _Relax:
    """Per-call cache of the relaxations of ops that need input bounds (an op's input bounds
    are final once computed)."""

    def __init__(self, pre: dict):
        self.pre = pre
        self.cache: dict = {}

    def get(self, graph, i: int):
        r = self.cache.get(i)
        if r is None:
            node = graph.nodes[i]
            r = self.cache[i] = node.op.relax([self.pre[j] for j in node.inputs])
        return r


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _accumulate(acc: dict, j: int, a_l: Optional[Tensor], a_u: Optional[Tensor]) -> None:
    """Add a coefficient pair into ``acc[j]``, keeping lower/upper shared when both are."""
    if j not in acc:
        acc[j] = [a_l, a_u]
        return
    old_l, old_u = acc[j]
    if old_l is old_u and a_l is a_u and a_l is not None:
        t = _add(old_l, a_l)
        acc[j] = [t, t]
    else:
        acc[j] = [_add(old_l, a_l), _add(old_u, a_u)]


def backward(graph, target: int, lA: Optional[Tensor], uA: Optional[Tensor], relax: _Relax,
             inputs: InputSet, hook=None) -> tuple:
    """Lower/upper bounds (B, S) on ``A . v_target`` for ``A = lA`` / ``uA`` of shape
    (B, S, *shape_target); either may be None (not computed)."""
    ref = lA if lA is not None else uA
    zero = torch.zeros(ref.shape[:2], dtype=ref.dtype, device=ref.device)
    return backward_from(graph, target, {target: [lA, uA]}, zero, zero, relax, inputs,
                         lA is not None, uA is not None, hook)


def backward_from(graph, top: int, acc: dict, lbias: Tensor, ubias: Tensor, relax: _Relax,
                  inputs: InputSet, want_lower: bool, want_upper: bool, hook=None) -> tuple:
    """Continue a backward pass: ``acc`` maps nodes (ancestors of ``top``) to coefficient pairs
    ``[lA, uA]``; the bound so far is ``sum_n A_n . v_n + bias``.

    ``hook(i, lA, uA) -> (lA, uA)``, when given, sees (and may change) the complete
    coefficients of every node ``i`` (the input included) before they are pushed further back:
    beta-CROWN adds its split multipliers there, branching heuristics read them."""
    for i in sorted(graph.ancestors[top], reverse=True):
        if i not in acc:
            continue
        if i == 0:
            if hook is not None:
                acc[0] = list(hook(0, *acc[0]))
            continue
        la, ua = acc.pop(i)
        if hook is not None:
            la, ua = hook(i, la, ua)
        if la is None and ua is None:
            continue
        node = graph.nodes[i]
        r = relax.get(graph, i) if node.op.needs_input_bounds else None
        ins, lb, ub = node.op.backward(la, ua, r)
        if lb is not None:
            lbias = lbias + lb
        if ub is not None:
            ubias = ubias + ub
        for j, (a_l, a_u) in zip(node.inputs, ins, strict=False):
            _accumulate(acc, j, a_l, a_u)
    A0 = acc.get(0, [None, None])
    if want_lower and want_upper and A0[0] is not None and A0[0] is A0[1]:
        c, r = inputs.center_radius(A0[0])
        return c - r + lbias, c + r + ubias
    lo = hi = None
    if want_lower:
        lo = lbias if A0[0] is None else inputs.concretize(A0[0], -1) + lbias
    if want_upper:
        hi = ubias if A0[1] is None else inputs.concretize(A0[1], +1) + ubias
    return lo, hi


def _identity_rows(graph, i: int, idx: Tensor, relax: _Relax, inputs: InputSet,
                   cache: Optional[dict] = None, key=None) -> tuple:
    """Lower and upper bounds (B, k) on the neurons ``idx`` (B, k) (flat indices) of node ``i``.

    Until the backward pass crosses a relaxed op (ReLU, ...), the coefficients do not depend on
    the example (affine ops and sums are the same for all of them: ``op.shared_backward``).
    That part is computed once for the distinct neurons of the chunk (batch dimension 1,
    lower = upper coefficients), then gathered per example at the ops where it stops (and the
    input); the rest of the pass is per example. The backward rules are linear up to there, so
    splitting a node's coefficients into a shared and a per-example part and processing each is
    exact, and every such op and the input see their complete coefficients before being
    processed.

    ``cache`` (a dict) with a ``key``: the example-independent part for these rows is stored
    there and reused by later calls with the same key (alpha-CROWN iterations: the same rows,
    the same weights), since it depends on neither the slopes nor the bounds.
    """
    if cache is not None and key in cache:
        acc0, b = cache[key]
        return backward_from(graph, i, {j: list(v) for j, v in acc0.items()}, b, b, relax, inputs, True, True)
    node = graph.nodes[i]
    dt, dev = inputs.x.dtype, inputs.x.device
    uniq, pos = torch.unique(idx, return_inverse=True)
    U = uniq.numel()
    E = torch.zeros(U, node.numel, dtype=dt, device=dev)
    E[torch.arange(U, device=dev), uniq] = 1.0
    shared: dict = {i: E.reshape(1, U, *node.shape)}
    bias = torch.zeros(1, U, dtype=dt, device=dev)
    frontier: dict = {}
    for j in sorted(graph.ancestors[i], reverse=True):
        if j not in shared:
            continue
        A = shared.pop(j)
        op = graph.nodes[j].op
        if j == 0 or not op.shared_backward:
            frontier[j] = A
            continue
        ins, lb, _ = op.backward(A, A, None)
        if lb is not None:
            bias = bias + lb
        for k, (a, _) in zip(graph.nodes[j].inputs, ins, strict=False):
            shared[k] = a if k not in shared else shared[k] + a
    acc: dict = {}
    for j, A in frontier.items():
        g = A[0][pos]  # (B, k, *shape_j)
        acc[j] = [g, g]
    b = bias[0][pos]
    if cache is not None:  # detached: the slopes' gradients never pass through this part
        acc = {j: [v[0].detach(), v[1].detach()] for j, v in acc.items()}
        b = b.detach()
        cache[key] = ({j: list(v) for j, v in acc.items()}, b)
    return backward_from(graph, i, acc, b, b, relax, inputs, True, True)


def _max_ancestor_numel(graph, i: int) -> int:
    return max(graph.nodes[j].numel for j in graph.ancestors[i])


def make_refine(graph, inputs: InputSet, max_elements: int):
    """The ``refine`` hook of :func:`ibp.propagate` for full CROWN intermediate bounds."""
    holder: dict = {}

    def refine(i: int, lo: Tensor, hi: Tensor, pre: dict):
        relax = holder.get("relax")
        if relax is None or relax.pre is not pre:
            relax = holder["relax"] = _Relax(pre)
        B = lo.shape[0]
        lf, hf = lo.reshape(B, -1), hi.reshape(B, -1)
        n = lf.shape[1]
        loose = graph.loose(i, lo, hi).reshape(B, -1)
        count = int(loose.sum(1).max()) if n else 0
        if count == 0:
            return lo, hi
        # per example: the loose neurons first (stable sort keeps index order)
        order = torch.argsort((~loose).to(torch.int8), dim=1, stable=True)[:, :count]
        chunk = max(1, max_elements // max(1, B * _max_ancestor_numel(graph, i)))
        new_l, new_h = [], []
        for s in range(0, count, chunk):
            cl, ch = _identity_rows(graph, i, order[:, s:s + chunk], relax, inputs)
            new_l.append(cl)
            new_h.append(ch)
        cl, ch = torch.cat(new_l, 1), torch.cat(new_h, 1)
        # rows past an example's own loose count point at other neurons: still valid bounds
        lf = lf.scatter(1, order, torch.maximum(lf.gather(1, order), cl))
        hf = hf.scatter(1, order, torch.minimum(hf.gather(1, order), ch))
        return lf.reshape(lo.shape), hf.reshape(hi.shape)

    return refine


def crown_bounds(graph, inputs: InputSet, C: Tensor, method: str, lower: bool, upper: bool,
                 max_elements: int) -> tuple:
    """Bounds (B, S) on ``C . f`` with CROWN ("crown") or CROWN-IBP ("crown-ibp")."""
    out = graph.output
    needed = set()
    for i in graph.needs_bounds:
        if i in graph.ancestors[out]:
            needed |= graph.ancestors[i]
    refine = make_refine(graph, inputs, max_elements) if method == "crown" else None
    _, pre = I.propagate(graph, inputs, refine=refine, needed=needed)
    relax = _Relax(pre)
    A = C.reshape(C.shape[0], C.shape[1], *graph.nodes[out].shape)
    return backward(graph, out, A if lower else None, A if upper else None, relax, inputs)
