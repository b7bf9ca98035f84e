"""alpha-CROWN (Xu et al. 2021, "Fast and Complete"): CROWN with optimised lower slopes, and the
beta-CROWN split multipliers (Wang et al. 2021) used by :mod:`.bab`.

The lower line of an unstable ReLU (LeakyReLU) neuron is ``alpha * x`` for any ``alpha`` in
[0, 1] (``[a, 1]``): every choice is a sound relaxation, so every bound computed on the way is a
valid bound. The ops declare this in the operator table (``Op.optimisable``, ``alpha_range``,
``relax_alpha``; see :mod:`.ops.base`); nothing here knows about ReLU.

There is one set of slopes per *start node* (each pre-activation node whose bounds a
relaxation needs, and the output specification) and per relaxed node behind it, with one slope
per neuron and per row of that start (per output neuron of an intermediate layer, per row of
the specification ``C``), for the lower-bound and the upper-bound pass separately: tensors of
shape ``(2, B, rows, *shape)``. Iteration 0 uses the non-optimised slopes, i.e. it *is* CROWN;
then projected Adam steps (clamped to ``alpha_range``) maximise the sum of the final lower
bounds, gradients flowing through the intermediate bounds into their slopes. The best bound of
each row over the iterations is kept (elementwise maximum of valid bounds is valid), and each
intermediate bound is intersected with the best one seen (both are valid), so the result is
never looser than CROWN.

beta-CROWN: a split ``z >= 0`` (sign +1) or ``z <= 0`` (sign -1) of a pre-activation neuron
``z`` restricts the domain; on it ``s z >= 0``, so ``f >= L - beta s z`` for ``beta >= 0`` and
``L`` any lower bound valid on the domain. The term ``-beta s`` is added to the coefficients
of ``z`` during the backward pass (``hook`` of :func:`crown.backward_from`) and propagated
further back with the relaxations valid on the domain; beta is optimised with alpha.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from . import crown as CR
from . import ibp as I
from .sets import InputSet

Tensor = torch.Tensor


class BoxSet(InputSet):
    """An arbitrary input box ``[lower, upper]`` (B, *shape), e.g. a VNN-LIB property's."""

    def __init__(self, lower: Tensor, upper: Tensor):  # noqa: D107 - no call to InputSet.__init__
        self.lower, self.upper = lower, upper
        self.x = (lower + upper) / 2
        self.norm = "Linf"
        self.eps = ((upper - lower) / 2).reshape(lower.shape[0], -1).amax(1) if lower.numel() else \
            lower.new_zeros(lower.shape[0])


def needed_nodes(graph) -> set:
    out = graph.output
    needed = set()
    for i in graph.needs_bounds:
        if i in graph.ancestors[out]:
            needed |= graph.ancestors[i]
    return needed


class _StartRelax:
    """Relaxations for one backward pass from one start node: optimised slopes where the start
    has them (rows ``sl`` of its ``(2, B, rows, *shape)`` tensors), CROWN's elsewhere."""

    def __init__(self, graph, pre: dict, alphas: Optional[dict], sl: Optional[slice] = None,
                 create_rows: int = 0, opt: bool = True):
        self.graph, self.pre, self.alphas, self.sl = graph, pre, alphas, sl
        self.create_rows, self.opt = create_rows, opt
        self.cache: dict = {}

    def get(self, graph, j: int):
        r = self.cache.get(j)
        if r is not None:
            return r
        node = graph.nodes[j]
        bounds = [self.pre[k] for k in node.inputs]
        if self.alphas is None or not node.op.optimisable or not self.opt:
            r = node.op.relax(bounds)
        else:
            a = self.alphas.get(j)
            if a is None:  # first use: the non-optimised slopes, one per row
                init = node.op.alpha_init(bounds).detach()
                a = init.unsqueeze(0).unsqueeze(2).expand(2, init.shape[0], self.create_rows,
                                                          *init.shape[1:]).clone()
                a.requires_grad_(True)
                self.alphas[j] = a
            if self.sl is not None:
                a = a[:, :, self.sl]
            r = node.op.relax_alpha(bounds, a[0], a[1])
        self.cache[j] = r
        return r


def final_pass(graph, inputs: InputSet, C: Tensor, pre: dict, alphas: Optional[dict],
               betas: Optional[dict] = None, signs: Optional[dict] = None,
               record: Optional[dict] = None) -> Tensor:
    """Lower bounds (B, S) on ``C . f`` over ``inputs`` with the relaxations built from ``pre``,
    slopes ``alphas`` (node -> (2, B, S, *shape), created on first use) and, for split
    domains, the multipliers ``betas`` (relaxed node -> (B, S, *pre_shape), >= 0) of the splits
    ``signs`` (relaxed node -> (B, *pre_shape) in {-1, 0, +1}). ``record``: filled with the
    lower-bound coefficients (detached) of every relaxed node's output and of the input."""
    out = graph.output
    S = C.shape[1]
    relax = _StartRelax(graph, pre, alphas, None, S)
    beta_at: dict = {}
    if betas:
        for j, b in betas.items():
            p = graph.nodes[j].inputs[0]
            term = -(b * signs[j].unsqueeze(1).to(b.dtype))
            beta_at[p] = term if p not in beta_at else beta_at[p] + term
    relaxed = set(graph.relaxed_nodes())

    def hook(i, la, ua):
        if la is not None and i in beta_at:
            la = la + beta_at[i]
        if record is not None and la is not None and (i in relaxed or i == 0):
            record[i] = la.detach()
        return la, ua

    use_hook = bool(beta_at) or record is not None
    A = C.reshape(C.shape[0], S, *graph.nodes[out].shape)
    lb, _ = CR.backward(graph, out, A, None, relax, inputs, hook if use_hook else None)
    return lb


class AlphaCrown:
    """alpha-CROWN bounds on ``C . f + d`` over an input box (see the module docstring).

    ``C`` (B, S, K), ``d`` (B, S) or None. ``intermediate``: optimise the slopes of the
    intermediate bounds too (else they are CROWN's, computed once). ``max_alpha_elements`` caps
    the floats of the intermediate slopes; starts past it keep CROWN's slopes.
    """

    def __init__(self, graph, inputs: InputSet, C: Tensor, d: Optional[Tensor] = None, *,
                 intermediate: bool = True, max_elements: int = 2 ** 24,
                 max_alpha_elements: int = 2 ** 26):
        self.graph, self.inputs, self.C = graph, inputs, C
        self.d = d
        self.intermediate = intermediate
        self.max_elements = int(max_elements)
        self.max_alpha_elements = int(max_alpha_elements)
        self.needed = needed_nodes(graph)
        self.rows: dict = {}            # start node -> (B, count) flat neuron indices
        self.alphas: dict = {}          # start node -> {relaxed node: (2, B, rows, *shape)}
        self.final_alphas: dict = {}
        self.best_pre: dict = {}
        self.alpha_elements = 0
        self._shared: dict = {}         # (start, chunk) -> the example-independent backward part
        self._fixed_pre: Optional[dict] = None  # intermediate bounds when none is optimised

    # ---- one pass ---------------------------------------------------------------------------

    def _refine(self, i: int, lo: Tensor, hi: Tensor, pre: dict):
        graph, inputs = self.graph, self.inputs
        B = lo.shape[0]
        lf, hf = lo.reshape(B, -1), hi.reshape(B, -1)
        if i not in self.rows:
            loose = graph.loose(i, lo, hi).reshape(B, -1)
            count = int(loose.sum(1).max()) if lf.shape[1] else 0
            self.rows[i] = torch.argsort((~loose).to(torch.int8), dim=1, stable=True)[:, :count]
            per = count * B * sum(graph.nodes[j].numel for j in graph.relaxed_nodes()
                                  if j in graph.ancestors[i] and graph.nodes[j].op.optimisable) * 2
            if self.intermediate and count and self.alpha_elements + per <= self.max_alpha_elements:
                self.alphas[i] = {}
                self.alpha_elements += per
        order = self.rows[i]
        count = order.shape[1]
        if count:
            chunk = max(1, self.max_elements // max(1, B * CR._max_ancestor_numel(graph, i)))
            alphas = self.alphas.get(i)
            new_l, new_h = [], []
            for s in range(0, count, chunk):
                sl = slice(s, min(count, s + chunk))
                relax = _StartRelax(graph, pre, alphas, sl, count)
                cl, ch = CR._identity_rows(graph, i, order[:, sl], relax, inputs, self._shared, (i, s))
                new_l.append(cl)
                new_h.append(ch)
            cl, ch = torch.cat(new_l, 1), torch.cat(new_h, 1)
            lf = lf.scatter(1, order, torch.maximum(lf.gather(1, order), cl))
            hf = hf.scatter(1, order, torch.minimum(hf.gather(1, order), ch))
        best = self.best_pre.get(i)
        if best is not None:
            lf = torch.maximum(lf, best[0])
            hf = torch.minimum(hf, best[1])
        self.best_pre[i] = (lf.detach(), hf.detach())
        return lf.reshape(lo.shape), hf.reshape(hi.shape)

    def intermediate_bounds(self) -> dict:
        """The intermediate bounds with the current slopes. Where no intermediate slope is
        optimised (``intermediate=False``, or every start past ``max_alpha_elements``) they do
        not change between iterations: computed once, without gradients, and reused."""
        if self._fixed_pre is not None:
            return self._fixed_pre
        _, pre = I.propagate(self.graph, self.inputs, refine=self._refine, needed=self.needed)
        if not self.alphas:
            self._fixed_pre = {k: (v[0].detach(), v[1].detach()) for k, v in pre.items()}
            return self._fixed_pre
        return pre

    def bound(self, pre: Optional[dict] = None, record: Optional[dict] = None) -> tuple[Tensor, dict]:
        if pre is None:
            pre = self.intermediate_bounds()
        lb = final_pass(self.graph, self.inputs, self.C, pre, self.final_alphas, record=record)
        if self.d is not None:
            lb = lb + self.d
        return lb, pre

    def params(self) -> list[tuple[Tensor, tuple]]:
        out = []
        for group in [self.final_alphas, *self.alphas.values()]:
            for j, a in group.items():
                out.append((a, self.graph.nodes[j].op.alpha_range()))
        return out

    # ---- optimisation ------------------------------------------------------------------------

    def run(self, iters: int = 20, lr: float = 0.5, lr_decay: float = 0.98, patience: int = 5,
            stop: Optional[Callable[[Tensor], bool]] = None, deadline: Optional[float] = None,
            weight: Optional[Tensor] = None) -> tuple[Tensor, dict]:
        """Optimise; returns (best lower bounds (B, S), best intermediate bounds {node: (lo, hi)}
        (flat, detached)). ``stop(best)`` ends early (e.g. every row proved); ``weight`` (B, S)
        weights the rows in the objective (0 for rows that need no work)."""
        with torch.enable_grad():
            lb, pre = self.bound()
            best = lb.detach().clone()
            best_pre = {k: (v[0].detach(), v[1].detach()) for k, v in pre.items()}
            params = self.params()
            if iters <= 0 or not params or (stop is not None and stop(best)):
                return best, best_pre
            opt = torch.optim.Adam([p for p, _ in params], lr=lr)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, lr_decay)
            stale = 0
            for _ in range(iters):
                w = weight if weight is not None else 1.0
                loss = -(lb * w).sum()
                # only the slopes' (multipliers') gradients: never the model's weights (no
                # side effect on their .grad, and no work spent on them)
                ps = [p for p, _ in params]
                for p, gp in zip(ps, torch.autograd.grad(loss, ps, allow_unused=True), strict=True):
                    p.grad = gp
                opt.step()
                sched.step()
                with torch.no_grad():
                    for p, (a, b) in params:
                        p.clamp_(a, b)
                lb, pre = self.bound()
                new = torch.maximum(best, lb.detach())
                gain = float((new - best).sum())
                best = new
                for k, v in pre.items():
                    best_pre[k] = (v[0].detach(), v[1].detach())
                if stop is not None and stop(best):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                stale = stale + 1 if gain <= 1e-7 * (1.0 + float(best.abs().sum())) else 0
                if stale >= patience:
                    break
                params_now = self.params()
                if len(params_now) != len(params):  # pragma: no cover - created lazily once
                    break
        return best, best_pre


def alpha_crown_bounds(graph, inputs: InputSet, C: Tensor, *, iters: int = 20, lr: float = 0.5,
                       intermediate: bool = True, max_elements: int = 2 ** 24) -> Tensor:
    """Lower bounds (B, S) on ``C . f`` with alpha-CROWN (see :class:`AlphaCrown`)."""
    eng = AlphaCrown(graph, inputs, C, intermediate=intermediate, max_elements=max_elements)
    lb, _ = eng.run(iters=iters, lr=lr)
    return lb


def relaxed_pre(graph) -> list[tuple[int, int]]:
    """(relaxed optimisable node, its pre-activation node) pairs: the splittable layers."""
    return [(j, graph.nodes[j].inputs[0]) for j in graph.relaxed_nodes()
            if graph.nodes[j].op.optimisable]


__all__ = ["AlphaCrown", "BoxSet", "alpha_crown_bounds", "final_pass", "needed_nodes", "relaxed_pre"]
