"""Our IBP, CROWN and alpha-CROWN margins against independent computations on small nets:

- a float64 NumPy re-implementation of IBP with the specification folded into the last Linear,
  and of CROWN (Zhang et al. 2018) with auto_LiRPA's default choices: "adaptive" lower slopes
  (1 where ``u >= -l``, else 0) and CROWN bounds for every intermediate layer. auto_LiRPA's default
  does not intersect the CROWN intermediate bounds with IBP's (``compare_crown_with_ibp=False``);
  ours does, so ours must equal the intersecting reference and never be below the plain one
  (benchmarks/bench_bounds_vs_lirpa.py prints the comparison with auto_LiRPA itself);
- the LP relaxation (triangle) solved by ``scipy.optimize.linprog`` (HiGHS): on one hidden layer
  with exact pre-activation bounds, the best alpha-CROWN bound equals the LP optimum (minimax:
  the bound is bilinear in the slopes and the input), so alpha-CROWN must reach it and CROWN,
  a fixed-slope dual bound, must stay below it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import linprog

from harness.bounds import crown as CR
from harness.bounds import ibp as I
from harness.bounds.alpha import AlphaCrown, BoxSet
from harness.bounds.bounded import margin_spec
from harness.bounds.graph import build_graph


def _mlp(seed: int, widths: list[int]) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list = []
    for a, b in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def _weights(net):
    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net if isinstance(m, nn.Linear)]


def _ref_ibp_margin(Ws, lo, hi, C):
    lw, u = lo, hi
    for W, b in Ws[:-1]:
        c, r = (u + lw) / 2, (u - lw) / 2
        lw, u = np.maximum(W @ c - np.abs(W) @ r + b, 0), np.maximum(W @ c + np.abs(W) @ r + b, 0)
    W, b = Ws[-1]
    A = C @ W  # the specification folded into the last Linear
    c, r = (u + lw) / 2, (u - lw) / 2
    return A @ c - np.abs(A) @ r + C @ b


def _ref_crown(Ws, lo, hi, A, k, pre, lower=True):
    """Bound on ``A z_k`` (z_k the pre-activation output of Linear k) by back-substitution
    through the relaxed ReLUs of the bounds ``pre`` (list of (lw, u) per earlier layer)."""
    sign = 1.0 if lower else -1.0
    A = sign * A
    W, b = Ws[k]
    bias = A @ b
    A = A @ W
    for j in range(k - 1, -1, -1):
        lw, u = pre[j]
        unst = (lw < 0) & (u > 0)
        act = lw >= 0
        up = np.where(unst, u / np.where(unst, u - lw, 1), act.astype(float))
        icpt = np.where(unst, -lw * u / np.where(unst, u - lw, 1), 0.0)
        low = np.where(unst, (u >= -lw).astype(float), act.astype(float))
        pos, neg = np.maximum(A, 0), np.minimum(A, 0)
        bias = bias + neg @ icpt
        A = pos * low + neg * up
        W, b = Ws[j]
        bias = bias + A @ b
        A = A @ W
    c, r = (hi + lo) / 2, (hi - lo) / 2
    return sign * (A @ c - np.abs(A) @ r + bias)


def _ref_crown_margin(Ws, lo, hi, C, intersect: bool):
    pre = []
    il, iu = lo, hi  # IBP box of the current layer's input
    for k in range(len(Ws) - 1):
        W, b = Ws[k]
        c, r = (iu + il) / 2, (iu - il) / 2
        bl, bu = W @ c - np.abs(W) @ r + b, W @ c + np.abs(W) @ r + b
        if k > 0:
            E = np.eye(W.shape[0])
            cl, cu = _ref_crown(Ws, lo, hi, E, k, pre, True), _ref_crown(Ws, lo, hi, E, k, pre, False)
            bl, bu = (np.maximum(bl, cl), np.minimum(bu, cu)) if intersect else (cl, cu)
        pre.append((bl, bu))
        il, iu = np.maximum(bl, 0), np.maximum(bu, 0)
    return _ref_crown(Ws, lo, hi, C @ np.eye(Ws[-1][0].shape[0]), len(Ws) - 1, pre, True)


def _case(seed, widths, eps):
    net = _mlp(seed, widths)
    x = torch.rand(1, widths[0], dtype=torch.float64)
    y = net(x).argmax(1)
    C = margin_spec(y, widths[-1], dtype=torch.float64)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    return net, lo, hi, C


CASES = [(s, w, e) for s, (w, e) in enumerate([([6, 20, 20, 4], 0.1), ([5, 16, 16, 16, 3], 0.08),
                                               ([8, 30, 20, 10, 5], 0.05), ([4, 12, 12, 12, 12, 3], 0.15)])]


@pytest.mark.parametrize("seed,widths,eps", CASES)
def test_ibp_and_crown_margins_match_an_independent_reference(seed, widths, eps):
    net, lo, hi, C = _case(seed, widths, eps)
    g = build_graph(net, (widths[0],))
    inp = BoxSet(lo, hi)
    Ws = _weights(net)
    l0, h0, C0 = lo[0].numpy(), hi[0].numpy(), C[0].numpy()
    with torch.no_grad():
        st, _ = I.propagate(g, inp)
        ibp = I.spec_bounds(g, st, C, True, False)[0][0].numpy()
        crown = CR.crown_bounds(g, inp, C, "crown", True, False, 2 ** 24)[0][0].numpy()
    np.testing.assert_allclose(ibp, _ref_ibp_margin(Ws, l0, h0, C0), rtol=0, atol=1e-9)
    inter = _ref_crown_margin(Ws, l0, h0, C0, intersect=True)
    plain = _ref_crown_margin(Ws, l0, h0, C0, intersect=False)
    np.testing.assert_allclose(crown, inter, rtol=0, atol=1e-9)
    assert (crown >= plain - 1e-9).all()
    # and sound: no sampled input has a margin below the bound
    with torch.no_grad():
        xs = lo + (hi - lo) * torch.rand(5000, widths[0], dtype=torch.float64)
        true = (net(xs) @ C[0].T).min(0).values.numpy()
    assert (crown <= true + 1e-9).all() and (crown >= ibp - 1e-9).all()


def _lp_margin(Ws, lo, hi, c):
    """min of ``c . (W2 relu(W1 x + b1) + b2)`` over the box under the triangle relaxation
    (variables x, h)."""
    (W1, b1), (W2, b2) = Ws
    n, m = W1.shape[1], W1.shape[0]
    ctr, rad = (hi + lo) / 2, (hi - lo) / 2
    lw, u = W1 @ ctr - np.abs(W1) @ rad + b1, W1 @ ctr + np.abs(W1) @ rad + b1
    obj = np.concatenate([np.zeros(n), c @ W2])
    A_ub, b_ub, A_eq, b_eq = [], [], [], []
    bounds = [(lo[i], hi[i]) for i in range(n)] + [(0, None)] * m
    for i in range(m):
        z = np.concatenate([W1[i], np.zeros(m)])
        e = np.zeros(n + m)
        e[n + i] = 1.0
        if lw[i] >= 0:       # h = z
            A_eq.append(e - z)
            b_eq.append(b1[i])
        elif u[i] <= 0:     # h = 0
            bounds[n + i] = (0, 0)
        else:               # h >= z, h <= u (z - lw) / (u - lw)
            A_ub.append(z - e)
            b_ub.append(-b1[i])
            s = u[i] / (u[i] - lw[i])
            A_ub.append(e - s * z)
            b_ub.append(s * (b1[i] - lw[i]))
    res = linprog(obj, A_ub=np.array(A_ub) if A_ub else None, b_ub=b_ub or None,
                  A_eq=np.array(A_eq) if A_eq else None, b_eq=b_eq or None, bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun + c @ b2


@pytest.mark.parametrize("seed", [1, 2])
def test_alpha_crown_reaches_the_lp_relaxation_on_one_hidden_layer(seed):
    net, lo, hi, C = _case(10 + seed, [6, 24, 4], 0.3)
    g = build_graph(net, (6,))
    inp = BoxSet(lo, hi)
    Ws = _weights(net)
    lp = np.array([_lp_margin(Ws, lo[0].numpy(), hi[0].numpy(), c) for c in C[0].numpy()])
    with torch.no_grad():
        crown = CR.crown_bounds(g, inp, C, "crown", True, False, 2 ** 24)[0][0].numpy()
    alpha = AlphaCrown(g, inp, C).run(iters=60, lr=0.3, patience=60)[0][0].numpy()
    assert (crown <= lp + 1e-7).all() and (alpha <= lp + 1e-7).all()   # sound w.r.t. the LP
    assert float((lp - crown).max()) > 1e-3                              # CROWN's slopes leave a gap
    np.testing.assert_allclose(alpha, lp, rtol=0, atol=1e-3 * (1 + np.abs(lp).max()))
