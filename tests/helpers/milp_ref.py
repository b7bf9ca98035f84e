"""An exact reference for small ReLU / LeakyReLU MLPs: ``scipy.optimize.milp`` (HiGHS) with the
big-M encoding of each unstable neuron (float64 interval bounds give the big-M constants).
Used by the tests of :mod:`harness.bounds.bab` and :mod:`harness.bounds.alpha`; never by the
harness itself."""
from __future__ import annotations

import numpy as np
import torch.nn as nn
from scipy.optimize import Bounds, LinearConstraint, milp


def _layers(net: nn.Sequential):
    out, slope = [], None
    for m in net:
        if isinstance(m, nn.Flatten):
            continue
        if isinstance(m, nn.Linear):
            out.append([m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), None])
        elif isinstance(m, nn.ReLU):
            out[-1][2] = 0.0
        elif isinstance(m, nn.LeakyReLU):
            slope = float(m.negative_slope)
            out[-1][2] = slope
        else:  # pragma: no cover - the tests build only these
            raise TypeError(type(m).__name__)
    return out


def milp_min(net: nn.Sequential, lo: np.ndarray, hi: np.ndarray, c: np.ndarray):
    """The exact minimum of ``c . net(x)`` over the box ``[lo, hi]`` and a minimiser, or None
    when HiGHS does not finish."""
    layers = _layers(net)
    nx = lo.size
    lb, ub, integ = list(lo.ravel()), list(hi.ravel()), [0] * nx
    A_rows, A_lo, A_hi = [], [], []
    prev = list(range(nx))
    plo, phi = lo.ravel().astype(np.float64), hi.ravel().astype(np.float64)
    nvar = nx

    def row(coef, low, high):
        A_rows.append(coef)
        A_lo.append(low)
        A_hi.append(high)

    def new(k, l_, u_, isint=0):
        nonlocal nvar
        idx = list(range(nvar, nvar + k))
        nvar += k
        lb.extend(l_)
        ub.extend(u_)
        integ.extend([isint] * k)
        return idx

    for li, (W, b, act) in enumerate(layers):
        zl = np.clip(W, 0, None) @ plo + np.clip(W, None, 0) @ phi + b
        zu = np.clip(W, 0, None) @ phi + np.clip(W, None, 0) @ plo + b
        zl, zu = zl - 1e-6, zu + 1e-6
        z = new(W.shape[0], zl, zu)
        for r in range(W.shape[0]):
            row({z[r]: 1.0, **{prev[k]: -W[r, k] for k in range(W.shape[1])}}, b[r], b[r])
        if act is None:
            assert li == len(layers) - 1
            prev = z
            break
        a_lo = np.where(zl < 0, act * zl, zl)
        a_hi = np.where(zu < 0, act * zu, zu)
        a = new(W.shape[0], a_lo, a_hi)
        for r in range(W.shape[0]):
            if zl[r] >= 0:      # active: a = z
                row({a[r]: 1.0, z[r]: -1.0}, 0.0, 0.0)
            elif zu[r] <= 0:    # inactive: a = act z
                row({a[r]: 1.0, z[r]: -act}, 0.0, 0.0)
            else:
                d = new(1, [0.0], [1.0], 1)[0]
                # a >= z, a >= act z
                row({a[r]: 1.0, z[r]: -1.0}, 0.0, np.inf)
                row({a[r]: 1.0, z[r]: -act}, 0.0, np.inf)
                # d = 1: a <= z ; d = 0: a <= act z  (big-M from the interval bounds)
                m1 = (1 - act) * (-zl[r])   # a - z <= (1 - act)(-l) (1 - d)
                row({a[r]: 1.0, z[r]: -1.0, d: m1}, -np.inf, m1)
                m0 = (1 - act) * zu[r]      # a - act z <= (1 - act) u d
                row({a[r]: 1.0, z[r]: -act, d: -m0}, -np.inf, 0.0)
        prev, plo, phi = a, a_lo, a_hi
    A = np.zeros((len(A_rows), nvar))
    for i, row in enumerate(A_rows):
        for k, v in row.items():
            A[i, k] += v
    obj = np.zeros(nvar)
    obj[prev] = c
    for presolve in (True, False):  # HiGHS occasionally reports a solve error with presolve on
        res = milp(obj, constraints=LinearConstraint(A, A_lo, A_hi), integrality=np.array(integ),
                   bounds=Bounds(np.array(lb), np.array(ub)),
                   options={"time_limit": 60, "mip_rel_gap": 0, "presolve": presolve})
        if res.status == 0:
            return float(res.fun), res.x[:nx].reshape(lo.shape)
    return None  # undecided: the caller skips the instance


def milp_robust_margin(net, lo, hi, label: int, n_classes: int) -> float:
    """``min_j min_x (y_label - y_j)`` over the box, exactly (None when HiGHS does not finish)."""
    best = np.inf
    for j in range(n_classes):
        if j == label:
            continue
        c = np.zeros(n_classes)
        c[label], c[j] = 1.0, -1.0
        r = milp_min(net, lo, hi, c)
        if r is None:
            return None
        best = min(best, r[0])
    return best
