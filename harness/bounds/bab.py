"""Complete verification of one property: IBP -> CROWN -> alpha-CROWN -> attack -> beta-CROWN
branch and bound (Wang et al. 2021), with every counterexample checked in float64.

A property is an input box ``[lo, hi]`` and an UNSAFE output set, a disjunction over ``k`` of
conjunctions ``{y : C_k y + d_k <= 0 (every row)}`` (VNN-LIB's asserted output condition).
``verified`` means no input of the box reaches any unsafe conjunction: for every ``k`` some row
of ``C_k y + d_k`` has a lower bound > 0. ``falsified`` comes with an input that a float64
forward pass shows inside the box and inside an unsafe conjunction. Otherwise ``unknown``.

Branch and bound (beta-CROWN):

- a *domain* is the input box plus a set of ReLU/LeakyReLU splits (pre-activation ``z >= 0``
  or ``z <= 0``); its intermediate bounds are those of alpha-CROWN at the root, with the split
  neurons' bounds clipped at 0 (valid on the domain), and its final bound is optimised over the
  per-domain slopes (alpha, inherited from the parent) and one multiplier per split and per row
  (beta, :mod:`.alpha`), jointly, with Adam;
- the open domains wait in a priority queue (a tensor pool ordered by their bound: the
  lowest bound is split first) and are split and bounded in batches of ``Budget.batch_size``
  on ``Budget.device``, all domains of a batch in one batched bound computation;
- branching: the BaBSR intercept score (Bunel et al. 2020, "Branch and Bound for Piecewise
  Linear Neural Network Verification", used as the candidate score of Wang et al.'s FSB/kFSB):
  for an unstable neuron with bounds ``l < 0 < u``, the final lower bound loses
  ``max(-lambda, 0) * (-l u / (u - l))`` (for LeakyReLU scaled by ``1 - a``) to the upper line's
  intercept, ``lambda`` the coefficient of the neuron's output in the domain's bound summed
  over the rows still open; the neuron with the largest score is split (ties: the widest);
- after each batch, the lowest-bound open domains give attack candidates (the input vertex
  that minimises their linear bound, then PGD from there), checked in float64;
- a domain where nothing is left to split and the bound is still <= 0 cannot be decided:
  the run ends ``unknown`` (never ``verified``).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn

from harness.core.errors import HarnessError

from . import crown as CR
from . import ibp as I
from .alpha import AlphaCrown, BoxSet, final_pass, relaxed_pre
from .graph import build_graph

Tensor = torch.Tensor
Unsafe = list  # list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Budget:
    timeout_s: float            # wall clock per property
    max_domains: int = 200_000
    max_memory_bytes: int = 4 << 30
    batch_size: int = 1024      # domains bounded per batch
    device: str = "cpu"
    threads: Optional[int] = None  # torch.set_num_threads for the call, restored after
    alpha_iters: int = 20
    beta_iters: int = 20
    seed: int = 0


@dataclass
class Verdict:
    status: Literal["verified", "falsified", "unknown"]
    counterexample: Optional[Tensor]   # input x (shape of lo), checked in float64
    output: Optional[Tensor]           # the float64 logits at the counterexample
    seconds: float
    domains: int                       # domains visited (0 when decided before BaB)
    decided_by: str                    # "ibp" | "crown" | "alpha-crown" | "attack" | "bab" | "budget"
    lower_bound: Optional[float]       # best proven lower bound of the property margin


def robustness_spec(n_classes: int, label: int) -> Unsafe:
    """The unsafe set of "classified as ``label``": one conjunction per other class ``j``,
    ``y_j >= y_label``, i.e. ``(e_label - e_j) . y + 0 <= 0``."""
    if not (0 <= int(label) < int(n_classes)):
        raise HarnessError(f"label {label} outside [0, {n_classes})")
    eye = torch.eye(int(n_classes), dtype=torch.float64)
    return [((eye[label] - eye[j]).unsqueeze(0), torch.zeros(1, dtype=torch.float64))
            for j in range(int(n_classes)) if j != int(label)]


# --------------------------------------------------------------------------------------------
# the property, stacked
# --------------------------------------------------------------------------------------------


class _Spec:
    """The unsafe conjunctions stacked: ``C`` (S, K), ``d`` (S,), ``group`` (S,) in [0, G)."""

    def __init__(self, unsafe: Unsafe, n_out: int, dtype, device):
        if not isinstance(unsafe, (list, tuple)) or not unsafe:
            raise HarnessError("the unsafe set must be a non-empty list of (C, d) conjunctions")
        Cs, ds, gs = [], [], []
        self.empty = False
        for k, cd in enumerate(unsafe):
            if not (isinstance(cd, (list, tuple)) and len(cd) == 2):
                raise HarnessError(f"unsafe conjunction {k} must be a (C, d) pair")
            C = torch.as_tensor(cd[0], dtype=torch.float64)
            d = torch.as_tensor(cd[1], dtype=torch.float64).reshape(-1)
            if C.dim() == 1:
                C = C.unsqueeze(0)
            if C.dim() != 2 or C.shape[1] != n_out or d.shape[0] != C.shape[0]:
                raise HarnessError(f"unsafe conjunction {k}: C must be (m, {n_out}) and d (m,), got "
                                   f"{tuple(C.shape)} and {tuple(d.shape)}")
            if not (torch.isfinite(C).all() and torch.isfinite(d).all()):
                raise HarnessError(f"unsafe conjunction {k} has non-finite coefficients")
            if C.shape[0] == 0:
                self.empty = True  # no constraint: every output is unsafe
            Cs.append(C)
            ds.append(d)
            gs.append(torch.full((C.shape[0],), k, dtype=torch.long))
        self.C64 = torch.cat(Cs)
        self.d64 = torch.cat(ds)
        self.G = len(unsafe)
        self.S = self.C64.shape[0]
        self.C = self.C64.to(dtype=dtype, device=device)
        self.d = self.d64.to(dtype=dtype, device=device)
        self.group = torch.cat(gs).to(device)
        # (G, M) row indices per conjunction, padded with S (a -inf / +inf column)
        M = max(1, max(C.shape[0] for C in Cs))
        pad = torch.full((self.G, M), self.S, dtype=torch.long)
        for k in range(self.G):
            idx = (torch.cat(gs) == k).nonzero().flatten()
            pad[k, :idx.numel()] = idx
        self.pad = pad.to(device)

    def conj_max(self, rows: Tensor) -> Tensor:
        """(N, S) -> (N, G): the max over each conjunction's rows."""
        ext = torch.cat([rows, rows.new_full((rows.shape[0], 1), -math.inf)], 1)
        return ext[:, self.pad].amax(2)

    def violation(self, y: Tensor, C=None, d=None) -> Tensor:
        """(N,) ``min_k max_r (C_r y + d_r)``: <= 0 iff ``y`` is in an unsafe conjunction."""
        C = self.C if C is None else C
        d = self.d if d is None else d
        return self.conj_max(y @ C.T + d).amin(1)


def _margin(spec: _Spec, lb: Tensor, open_g: Optional[Tensor] = None) -> Tensor:
    """(N,) lower bound of the property margin: min over the (open) conjunctions of the max of
    their rows' lower bounds (> 0 proves the domain)."""
    g = spec.conj_max(lb)
    if open_g is not None:
        g = torch.where(open_g, g, torch.full_like(g, math.inf))
    return g.amin(1)


# --------------------------------------------------------------------------------------------
# counterexamples
# --------------------------------------------------------------------------------------------


def _model64(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(dtype=torch.float64).eval()


def check_counterexample(model: nn.Module, x: Tensor, lo: Tensor, hi: Tensor, unsafe: Unsafe, *,
                         atol: float = 0.0, model64: Optional[nn.Module] = None) -> bool:
    """Whether ``x`` is a counterexample, by a float64 forward pass: finite, inside the box
    ``[lo - atol, hi + atol]``, and its output inside some unsafe conjunction
    (``C_k y + d_k <= atol`` on every row)."""
    m = model64 if model64 is not None else _model64(model)
    dev = next(iter(list(m.parameters()) + list(m.buffers())), torch.empty(0)).device
    x64 = torch.as_tensor(x).detach().to(dtype=torch.float64, device=dev).reshape(1, *lo.shape[1:])
    lo64 = lo.detach().to(dtype=torch.float64, device=dev)
    hi64 = hi.detach().to(dtype=torch.float64, device=dev)
    if not bool(torch.isfinite(x64).all()):
        return False
    if bool((x64 < lo64 - atol).any()) or bool((x64 > hi64 + atol).any()):
        return False
    with torch.no_grad():
        y = m(x64).reshape(-1)
    if not bool(torch.isfinite(y).all()):
        return False
    for C, d in unsafe:
        C = torch.as_tensor(C, dtype=torch.float64).to(dev)
        d = torch.as_tensor(d, dtype=torch.float64).to(dev).reshape(-1)
        if C.dim() == 1:
            C = C.unsqueeze(0)
        if bool(((C @ y + d) <= atol).all()):
            return True
    return False


def pgd_attack(model: nn.Module, lo: Tensor, hi: Tensor, spec: _Spec, *, restarts: int = 20,
               steps: int = 50, gen: Optional[torch.Generator] = None,
               starts: Optional[Tensor] = None, deadline: Optional[float] = None) -> Tensor:
    """PGD with random restarts on the box (minimising :meth:`_Spec.violation`, signed
    gradient steps with a decaying step, projection by clamping). Returns the candidates (N, *)
    ordered by their violation, best first."""
    shape = lo.shape[1:]
    width = (hi - lo)
    x = lo + width * torch.rand((restarts, *shape), generator=gen, dtype=lo.dtype).to(lo.device)
    extra = [(lo + hi) / 2]
    if starts is not None:
        extra.append(starts.reshape(-1, *shape).to(lo))
    x = torch.cat([torch.cat(extra), x]).clamp(lo, hi)
    best_x, best_v = x.clone(), torch.full((x.shape[0],), math.inf, dtype=lo.dtype, device=lo.device)
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = spec.violation(model(x))
            grad, = torch.autograd.grad(v.sum(), x)
        with torch.no_grad():
            better = v < best_v
            best_v = torch.where(better, v.detach(), best_v)
            best_x[better] = x.detach()[better]
            if bool((best_v <= 0).any()) and t >= 2:
                break
            step = width * (0.25 * (1 - t / steps) + 0.01)
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
        if deadline is not None and time.monotonic() > deadline:
            break
    with torch.no_grad():
        v = spec.violation(model(x))
        better = v < best_v
        best_v = torch.where(better, v, best_v)
        best_x[better] = x[better]
    order = torch.argsort(best_v)
    return best_x[order]


# --------------------------------------------------------------------------------------------
# the cascade
# --------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, model, lo, hi, unsafe, budget: Budget, start):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(budget.timeout_s)
        self.budget = budget
        self.device = torch.device(budget.device)
        p = next(iter(list(model.parameters()) + list(model.buffers())), None)
        self.dtype = p.dtype if (p is not None and p.is_floating_point()) else torch.float32
        mdev = p.device if p is not None else torch.device("cpu")
        self.model = model if mdev == self.device else copy.deepcopy(model).to(self.device)
        self.model.eval()
        self.orig_model = model
        if not (torch.is_tensor(lo) and torch.is_tensor(hi)) or lo.shape != hi.shape or lo.dim() < 2 \
                or lo.shape[0] != 1:
            raise HarnessError("the input box must be two tensors lo, hi of the same shape (1, *input_shape)")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo > hi).any()):
            raise HarnessError("the input box must be finite with lo <= hi")
        self.lo64, self.hi64 = lo.detach().double().cpu(), hi.detach().double().cpu()
        self.lo = lo.detach().to(device=self.device, dtype=self.dtype)
        self.hi = hi.detach().to(device=self.device, dtype=self.dtype)
        self.unsafe = unsafe
        self.graph = build_graph(self.model, tuple(lo.shape[1:]), device=self.device, dtype=self.dtype)
        n_out = int(self.graph.nodes[self.graph.output].shape[0])
        self.spec = _Spec(unsafe, n_out, self.dtype, self.device)
        self.m64 = _model64(model).cpu()
        self.gen = torch.Generator().manual_seed(int(budget.seed))
        self.start = start
        self.domains = 0
        self.best_lb: Optional[float] = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def verdict(self, status, decided_by, x=None) -> Verdict:
        out = None
        if x is not None:
            with torch.no_grad():
                out = self.m64(x.detach().double().cpu().reshape(1, *self.lo.shape[1:])).reshape(-1)
            x = x.detach().to(dtype=self.lo.dtype, device="cpu").reshape(self.lo.shape)
        return Verdict(status, x, out, time.monotonic() - self.t0, self.domains, decided_by,
                       self.best_lb)

    def check(self, cands: Tensor, limit: int = 8) -> Optional[Tensor]:
        """The first candidate (of the ``limit`` best, by the float32 violation) that checks in
        float64 (clamped into the box first)."""
        if cands is None or cands.numel() == 0:
            return None
        cands = cands.reshape(-1, *self.lo.shape[1:])
        with torch.no_grad():
            v = self.spec.violation(self.model(cands.to(self.lo)))
        order = torch.argsort(v)[:limit]
        for i in order.tolist():
            x = cands[i].detach().double().cpu().reshape(self.lo64.shape)
            x = torch.minimum(torch.maximum(x, self.lo64), self.hi64)
            if check_counterexample(self.m64, x, self.lo64, self.hi64, self.unsafe, model64=self.m64):
                return x
        return None

    def proved(self, lb: Tensor) -> bool:
        m = float(_margin(self.spec, lb).min())
        self.best_lb = m if self.best_lb is None else max(self.best_lb, m)
        return m > 0

    def run(self) -> Verdict:
        spec = self.spec
        if spec.empty:  # an unconstrained conjunction: every input is a counterexample
            x = self.check((self.lo + self.hi) / 2)
            if x is not None:
                return self.verdict("falsified", "attack", x)
        cheap = [(self.lo + self.hi) / 2]
        if self.start is not None:
            cheap.insert(0, torch.as_tensor(self.start).to(self.lo).reshape(-1, *self.lo.shape[1:]))
        x = self.check(torch.cat(cheap))
        if x is not None:
            return self.verdict("falsified", "attack", x)
        inputs = BoxSet(self.lo, self.hi)
        C = spec.C.unsqueeze(0)
        d = spec.d.unsqueeze(0)
        with torch.no_grad():
            states, _ = I.propagate(self.graph, inputs)
            lb = I.spec_bounds(self.graph, states, C, True, False)[0] + d
        if self.proved(lb):
            return self.verdict("verified", "ibp")
        if self.left() <= 0:
            return self.verdict("unknown", "budget")
        with torch.no_grad():
            lb = CR.crown_bounds(self.graph, inputs, C, "crown", True, False, 2 ** 24)[0] + d
        if self.proved(lb):
            return self.verdict("verified", "crown")
        if self.left() <= 0:
            return self.verdict("unknown", "budget")
        eng = AlphaCrown(self.graph, inputs, C, d)
        lb, pre = eng.run(iters=self.budget.alpha_iters, deadline=self.deadline,
                          stop=lambda b: bool(_margin(spec, b).min() > 0))
        if self.proved(lb):
            return self.verdict("verified", "alpha-crown")
        if self.left() <= 0:
            return self.verdict("unknown", "budget")
        cands = pgd_attack(self.model, self.lo, self.hi, spec, gen=self.gen, deadline=self.deadline)
        x = self.check(cands)
        if x is not None:
            return self.verdict("falsified", "attack", x)
        if self.left() <= 0:
            return self.verdict("unknown", "budget")
        return _BaB(self, inputs, pre, eng.final_alphas, lb).run()


def verify(model: nn.Module, lo: Tensor, hi: Tensor, unsafe: Unsafe, budget: Budget, *,
           start: Optional[Tensor] = None) -> Verdict:
    """Decide one property (see the module docstring): ``verified``, ``falsified`` with a
    float64-checked counterexample, or ``unknown`` when the budget is spent.

    ``lo``/``hi``: the input box (1, *input_shape); ``unsafe``: [(C_k (m_k, K), d_k (m_k,))];
    ``start``: a known adversarial candidate (e.g. AutoAttack's) tried first."""
    if not isinstance(budget, Budget):
        raise HarnessError("verify needs a Budget")
    if not (budget.timeout_s > 0) or budget.batch_size < 1 or budget.max_domains < 1:
        raise HarnessError("budget: timeout_s > 0, batch_size >= 1 and max_domains >= 1 are required")
    old = torch.get_num_threads()
    if budget.threads:
        torch.set_num_threads(int(budget.threads))
    try:
        with torch.no_grad():
            return _Run(model, lo, hi, unsafe, budget, start).run()
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------
# beta-CROWN branch and bound
# --------------------------------------------------------------------------------------------


class _BaB:
    """The domain pool and the batched split-and-bound loop (see the module docstring)."""

    def __init__(self, run: _Run, inputs: BoxSet, pre: dict, final_alphas: dict, root_lb: Tensor):
        self.run_ = run
        self.g = run.graph
        self.spec = run.spec
        self.layers = relaxed_pre(self.g)     # [(relaxed node j, pre node p)]
        self.pre_nodes = sorted(pre)
        S = self.spec.S
        # the pool: every tensor has the domain dimension first
        self.pool = {
            "lb": root_lb.detach().clone(),                                   # (N, S)
            "open": self.spec.conj_max(root_lb) <= 0,                         # (N, G)
            "depth": torch.zeros(1, dtype=torch.long, device=run.device),
        }
        for p in self.pre_nodes:
            lo, hi = pre[p]
            self.pool[f"l{p}"] = lo.detach().clone()
            self.pool[f"u{p}"] = hi.detach().clone()
        for j, p in self.layers:
            shp = self.g.nodes[p].shape
            self.pool[f"s{j}"] = torch.zeros((1, *shp), dtype=torch.int8, device=run.device)
            self.pool[f"b{j}"] = torch.zeros((1, S, *shp), dtype=run.dtype, device=run.device)
            a = final_alphas.get(j)
            if a is None:
                init = self.g.nodes[j].op.alpha_init([pre[p]])
                a = init.unsqueeze(1).expand(1, S, *shp)
            else:
                a = a[0]
            self.pool[f"a{j}"] = a.detach().clone()
        self.lo, self.hi = run.lo, run.hi
        self.per_domain_bytes = sum(t[0].numel() * t.element_size() for t in self.pool.values())
        choice = self._branch_scores(self.pool, None)
        self.pool["split"] = choice
        self.proved_min = math.inf

    # ---- pool helpers ------------------------------------------------------------------------

    @staticmethod
    def _take(pool: dict, idx: Tensor) -> dict:
        return {k: v[idx] for k, v in pool.items()}

    @staticmethod
    def _cat(a: dict, b: dict) -> dict:
        return {k: torch.cat([a[k], b[k]]) for k in a}

    def _n(self) -> int:
        return int(self.pool["lb"].shape[0])

    # ---- branching ---------------------------------------------------------------------------

    def _branch_scores(self, dom: dict, record: Optional[dict]) -> Tensor:
        """(N,) the neuron to split next per domain: a flat index into the concatenation of the
        splittable layers' neurons, -1 when none is unstable. BaBSR intercept score."""
        N = dom["lb"].shape[0]
        scores = []
        open_rows = dom["open"][:, self.spec.group].to(dom["lb"].dtype)     # (N, S)
        for j, p in self.layers:
            lo, hi = dom[f"l{p}"].reshape(N, -1), dom[f"u{p}"].reshape(N, -1)
            free = (lo < 0) & (hi > 0) & (dom[f"s{j}"].reshape(N, -1) == 0)
            op = self.g.nodes[j].op
            if not op.unstable([(lo, hi)]).any():
                free = free & False
            width = torch.where(free, hi - lo, torch.ones_like(lo))
            icpt = torch.where(free, -lo * hi / width, torch.zeros_like(lo))
            icpt = icpt * (1.0 - float(op.alpha_range()[0]))
            if record is not None and j in record:
                lam = record[j].reshape(N, record[j].shape[1], -1)             # (N, S, n)
                w = (lam.clamp(max=0).neg() * open_rows.unsqueeze(2)).sum(1)
            else:
                w = torch.ones_like(lo)
            s = w * icpt + 1e-9 * (hi - lo)
            scores.append(torch.where(free, s, torch.full_like(s, -math.inf)))
        if not scores:
            return torch.full((N,), -1, dtype=torch.long, device=dom["lb"].device)
        sc = torch.cat(scores, 1)
        best, idx = sc.max(1)
        return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))

    def _split(self, dom: dict) -> dict:
        """Two children per domain: the chosen neuron ``z >= 0`` and ``z <= 0``."""
        N = dom["lb"].shape[0]
        kids = self._cat(dom, dom)
        choice = dom["split"]
        sign = torch.cat([torch.ones(N, dtype=torch.int8), -torch.ones(N, dtype=torch.int8)]).to(choice.device)
        choice2 = torch.cat([choice, choice])
        ar = torch.arange(2 * N, device=choice.device)
        off = 0
        for j, p in self.layers:
            n = self.g.nodes[p].numel
            inl = (choice2 >= off) & (choice2 < off + n)
            if bool(inl.any()):
                rows, pos = ar[inl], (choice2[inl] - off)
                s = kids[f"s{j}"].reshape(2 * N, -1).clone()
                s[rows, pos] = sign[inl]
                kids[f"s{j}"] = s.reshape(kids[f"s{j}"].shape)
                lo = kids[f"l{p}"].reshape(2 * N, -1).clone()
                hi = kids[f"u{p}"].reshape(2 * N, -1).clone()
                act = sign[inl] > 0
                lo[rows[act], pos[act]] = torch.clamp(lo[rows[act], pos[act]], min=0)
                hi[rows[~act], pos[~act]] = torch.clamp(hi[rows[~act], pos[~act]], max=0)
                kids[f"l{p}"] = lo.reshape(kids[f"l{p}"].shape)
                kids[f"u{p}"] = hi.reshape(kids[f"u{p}"].shape)
            off += n
        kids["depth"] = kids["depth"] + 1
        return kids

    # ---- bounding ----------------------------------------------------------------------------

    def _bound(self, dom: dict, iters: int) -> tuple[dict, Optional[Tensor]]:
        """Optimise alpha and beta of a batch of domains; returns the domains with their new
        bounds, slopes, multipliers and next split, and attack candidates (input vertices
        minimising the linear bound of the lowest domains)."""
        N = dom["lb"].shape[0]
        spec = self.spec
        lo = self.lo.expand(N, *self.lo.shape[1:])
        hi = self.hi.expand(N, *self.hi.shape[1:])
        inputs = BoxSet(lo, hi)
        C = spec.C.unsqueeze(0).expand(N, -1, -1)
        d = spec.d.unsqueeze(0)
        pre = {p: (dom[f"l{p}"], dom[f"u{p}"]) for p in self.pre_nodes}
        signs = {j: dom[f"s{j}"] for j, _ in self.layers}
        alphas = {}
        betas = {}
        params = []
        for j, _ in self.layers:
            a = dom[f"a{j}"].clone().requires_grad_(True)
            alphas[j] = a
            params.append((a, self.g.nodes[j].op.alpha_range()))
            b = dom[f"b{j}"].clone().requires_grad_(True)
            betas[j] = b
            params.append((b, (0.0, math.inf)))
        open_rows = dom["open"][:, spec.group].to(dom["lb"].dtype)
        best = dom["lb"].clone()
        best_a = {j: alphas[j].detach().clone() for j in alphas}
        best_b = {j: betas[j].detach().clone() for j in betas}
        rec_best: dict = {}
        opt = torch.optim.Adam([p for p, _ in params], lr=0.1)
        first = True
        with torch.enable_grad():
            for it in range(iters + 1):
                rec: dict = {}
                # alpha tensors are (2, N, S, *) in final_pass; only the lower side is used
                two = {j: torch.stack([a, a]) for j, a in alphas.items()}
                lb = final_pass(self.g, inputs, C, pre, two, betas, signs, record=rec) + d
                lbd = lb.detach()
                if first:  # the parent's bound is valid for the child too: keep the better
                    improved = torch.ones_like(lbd, dtype=torch.bool)
                    best = torch.maximum(best, lbd)
                    first = False
                else:
                    improved = lbd > best
                    best = torch.where(improved, lbd, best)
                # per domain, keep the parameters of the iteration with the best margin sum
                dom_imp = improved.any(1)
                for j in alphas:
                    m = dom_imp.view(-1, *([1] * (alphas[j].dim() - 1)))
                    best_a[j] = torch.where(m, alphas[j].detach(), best_a[j])
                    best_b[j] = torch.where(m, betas[j].detach(), best_b[j])
                for k, v in rec.items():
                    if k not in rec_best:
                        rec_best[k] = v
                    else:
                        m = dom_imp.view(-1, *([1] * (v.dim() - 1)))
                        rec_best[k] = torch.where(m, v, rec_best[k])
                if it == iters or bool((_margin(spec, best, dom["open"]) > 0).all()):
                    break
                if time.monotonic() > self.run_.deadline:
                    break
                loss = -(lb * open_rows).sum()
                # only the slopes' (multipliers') gradients: never the model's weights (no
                # side effect on their .grad, and no work spent on them)
                ps = [p for p, _ in params]
                for p, gp in zip(ps, torch.autograd.grad(loss, ps, allow_unused=True), strict=True):
                    p.grad = gp
                opt.step()
                with torch.no_grad():
                    for p, (a, b) in params:
                        p.clamp_(a, b)
        out = dict(dom)
        out["lb"] = best
        out["open"] = dom["open"] & (spec.conj_max(best) <= 0)
        for j in alphas:
            out[f"a{j}"] = best_a[j]
            out[f"b{j}"] = best_b[j]
        out["split"] = self._branch_scores(out, rec_best)
        cands = None
        A0 = rec_best.get(0)
        if A0 is not None:
            marg = _margin(spec, best, out["open"])
            k = min(4, N)
            worst = torch.argsort(marg)[:k]
            A = A0[worst].reshape(k, spec.S, -1)
            rows = torch.argmin(torch.where(out["open"][worst][:, spec.group], best[worst],
                                            torch.full_like(best[worst], math.inf)), 1)
            a = A[torch.arange(k), rows].reshape(k, *self.lo.shape[1:])
            cands = torch.where(a >= 0, self.lo, self.hi)  # minimises a . x over the box
        return out, cands

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> Verdict:
        r = self.run_
        b = r.budget
        iters = max(0, int(b.beta_iters))
        cap_mem = max(1, int(b.max_memory_bytes // max(1, 2 * self.per_domain_bytes)))
        while True:
            N = self._n()
            if N == 0:  # every leaf proved: the property margin is at least the least of them
                r.best_lb = self.proved_min
                return r.verdict("verified", "bab")
            marg = _margin(self.spec, self.pool["lb"], self.pool["open"])
            if r.left() <= 0:
                return r.verdict("unknown", "budget")
            if r.domains >= b.max_domains:
                return r.verdict("unknown", "budget")
            if N >= cap_mem:
                return r.verdict("unknown", "budget")
            # domains with nothing left to split cannot be decided by splitting
            stuck = self.pool["split"] < 0
            if bool(stuck.all()):
                return r.verdict("unknown", "budget")
            k = min(max(1, b.batch_size // 2), int((~stuck).sum()),
                    max(1, b.max_domains - r.domains))
            key = torch.where(stuck, torch.full_like(marg, math.inf), marg)
            idx = torch.argsort(key)[:k]
            keep = torch.ones(N, dtype=torch.bool, device=marg.device)
            keep[idx] = False
            batch = self._take(self.pool, idx)
            rest = self._take(self.pool, keep.nonzero().flatten())
            kids = self._split(batch)
            r.domains += int(kids["lb"].shape[0])
            kids, cands = self._bound(kids, iters)
            if cands is not None:
                x = r.check(cands, limit=4)
                if x is None and r.left() > 0:
                    more = pgd_attack(r.model, r.lo, r.hi, self.spec, restarts=4, steps=20,
                                      gen=r.gen, starts=cands, deadline=r.deadline)
                    x = r.check(more, limit=4)
                if x is not None:
                    return r.verdict("falsified", "bab", x)
            alive = kids["open"].any(1)
            if bool((~alive).any()):
                done = _margin(self.spec, kids["lb"][~alive])
                self.proved_min = min(self.proved_min, float(done.min()))
            kids = self._take(kids, alive.nonzero().flatten())
            self.pool = self._cat(rest, kids)
