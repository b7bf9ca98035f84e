"""Pareto frontiers, non-dominated sorting, the efficiency figure and ties: pure functions.

Every function takes parallel sequences (``costs[i]``, ``values[i]`` belong to entry ``i``) and
returns a list aligned with them. ``None`` (or a non-finite number, or a cost <= 0) marks a missing
coordinate; such an entry is on no frontier and gets ``None`` back.

Dominance (cost: lower is better, value: higher is better): entry ``j`` dominates entry ``i`` when
``value[j] >= value[i]`` and ``cost[j] <= cost[i]``, one of the two strictly. So an entry is on the
frontier when no other entry has at least its robustness for less compute, nor more robustness for
the same compute. Two entries at exactly the same point do not dominate each other: both are on it.
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

Number = float | int | None


def _ok(x: Number, *, positive: bool = False) -> bool:
    if x is None or isinstance(x, bool):
        return False
    x = float(x)
    return math.isfinite(x) and (x > 0 or not positive)


def dominates(cost_j: float, value_j: float, cost_i: float, value_i: float) -> bool:
    """Does point j dominate point i?"""
    return value_j >= value_i and cost_j <= cost_i and (value_j > value_i or cost_j < cost_i)


def nondominated_layers(costs: Sequence[Number], values: Sequence[Number]) -> list[int | None]:
    """Non-dominated sorting in two objectives: layer 1 is the Pareto frontier, layer 2 the frontier
    of what remains once layer 1 is removed, and so on. ``None`` for entries missing a coordinate.

    O(n log n): sweep by cost (ties: higher value first) and keep, for every layer, the best value
    seen so far; those bests are non-increasing with the layer, so each point finds its layer (the
    first whose best value is below its own) by bisection.
    """
    if len(costs) != len(values):
        raise ValueError("costs and values must have the same length")
    idx = [i for i in range(len(costs)) if _ok(costs[i], positive=True) and _ok(values[i])]
    idx.sort(key=lambda i: (float(costs[i]), -float(values[i])))
    layers: list[int | None] = [None] * len(costs)
    neg_best: list[float] = []  # -best value per layer: non-decreasing, so bisect works
    prev: tuple[float, float] | None = None
    prev_layer = 0
    for i in idx:
        point = (float(costs[i]), float(values[i]))
        if point == prev:  # identical points share a layer; neither dominates the other
            layers[i] = prev_layer
            continue
        v = point[1]
        # the first layer whose best value is < v  <=>  -best > -v
        k = bisect.bisect_right(neg_best, -v)
        if k == len(neg_best):
            neg_best.append(-v)
        else:
            neg_best[k] = -v
        layers[i] = prev_layer = k + 1
        prev = point
    return layers


def pareto_frontier(costs: Sequence[Number], values: Sequence[Number]) -> list[bool | None]:
    """True for entries on the frontier, False for dominated ones, None where a coordinate is missing."""
    return [None if layer is None else layer == 1 for layer in nondominated_layers(costs, values)]


def frontier_line(costs: Sequence[Number], values: Sequence[Number]) -> list[int]:
    """Indices of the frontier's entries, by increasing cost (for drawing the staircase)."""
    on = pareto_frontier(costs, values)
    idx = [i for i, f in enumerate(on) if f]
    return sorted(idx, key=lambda i: (float(costs[i]), float(values[i])))


def flop_saving(costs: Sequence[Number], values: Sequence[Number]) -> list[float | None]:
    """The efficiency figure: for entry ``i``,

        saving[i] = min{ cost[j] : j != i, value[j] >= value[i] } / cost[i]

    the compute of the cheapest *other* entry that is at least as robust, divided by this entry's.

    - ``> 1``: this entry reaches its robustness with ``saving`` times less compute than any other
      entry that is at least as robust (it is on the frontier);
    - ``< 1``: another entry is at least as robust with only ``saving`` times this entry's compute
      (this entry is dominated; 0.25 means a 4x overhead);
    - ``= 1``: another entry is at least as robust for the same compute;
    - ``inf``: no other entry is at least as robust (the most robust entry);
    - ``None``: a coordinate is missing.
    """
    if len(costs) != len(values):
        raise ValueError("costs and values must have the same length")
    idx = [i for i in range(len(costs)) if _ok(costs[i], positive=True) and _ok(values[i])]
    idx.sort(key=lambda i: -float(values[i]))
    out: list[float | None] = [None] * len(costs)
    best_above = math.inf  # the cheapest cost among strictly more robust entries
    g = 0
    while g < len(idx):
        h = g
        v = float(values[idx[g]])
        while h < len(idx) and float(values[idx[h]]) == v:
            h += 1
        group = idx[g:h]
        group_costs = sorted(float(costs[i]) for i in group)
        for i in group:
            c = float(costs[i])
            # cheapest other entry of equal value: the smallest cost, or the second if this is it
            same = group_costs[1] if (len(group_costs) > 1 and c == group_costs[0]) else (
                group_costs[0] if len(group_costs) > 1 else math.inf)
            other = min(best_above, same)
            out[i] = math.inf if other == math.inf else other / c
        best_above = min(best_above, group_costs[0])
        g = h
    return out


def compute_overhead(costs: Sequence[Number], values: Sequence[Number]) -> list[float | None]:
    """For entry ``i``: ``cost[i] / min{ cost[j] : value[j] >= value[i] }`` over all entries ``j``
    (``i`` included), so at least 1; exactly 1 when no entry at least as robust is cheaper.
    O(n log n): by value, highest first, keeping the least cost seen."""
    if len(costs) != len(values):
        raise ValueError("costs and values must have the same length")
    idx = [i for i in range(len(costs)) if _ok(costs[i], positive=True) and _ok(values[i])]
    idx.sort(key=lambda i: -float(values[i]))
    out: list[float | None] = [None] * len(costs)
    least = math.inf
    g = 0
    while g < len(idx):
        h = g
        v = float(values[idx[g]])
        while h < len(idx) and float(values[idx[h]]) == v:
            h += 1
        least = min(least, min(float(costs[i]) for i in idx[g:h]))  # equal values count as "at least"
        for i in idx[g:h]:
            out[i] = float(costs[i]) / least
        g = h
    return out


def robustness_gap(costs: Sequence[Number], values: Sequence[Number]) -> list[float | None]:
    """For entry ``i``: ``max{ value[j] : cost[j] <= cost[i] } - value[i]`` over all entries ``j``
    (``i`` included), so at least 0; exactly 0 when nothing at most as expensive is more robust.
    O(n log n): by cost, cheapest first, keeping the highest value seen."""
    if len(costs) != len(values):
        raise ValueError("costs and values must have the same length")
    idx = [i for i in range(len(costs)) if _ok(costs[i], positive=True) and _ok(values[i])]
    idx.sort(key=lambda i: float(costs[i]))
    out: list[float | None] = [None] * len(costs)
    best = -math.inf
    g = 0
    while g < len(idx):
        h = g
        c = float(costs[idx[g]])
        while h < len(idx) and float(costs[idx[h]]) == c:
            h += 1
        best = max(best, max(float(values[i]) for i in idx[g:h]))  # equal costs count as "no more"
        for i in idx[g:h]:
            out[i] = best - float(values[i])
        g = h
    return out


CI = tuple[float, float]


def ci_overlap(a: CI | None, b: CI | None) -> bool:
    """Do two closed intervals overlap? False when either is missing."""
    if a is None or b is None:
        return False
    return a[0] <= b[1] and b[0] <= a[1]


# --- the default order (issue 18): best-known accuracy, statistical ties broken by compute ----------------
def tie_groups(values: Sequence[Number], cis: Sequence[CI | None], names: Sequence[str]) -> list[list[int]]:
    """The statistical tie groups of the default order, highest value first.

    Entries with a value are sorted by value (higher first, then name). Walking down that order, an
    entry joins the current group when its 95% interval overlaps the interval of *every* entry already
    in the group, else it starts a new group. "Intervals overlap" is not transitive (A overlaps B and
    B overlaps C while A lies clear above C), so a group is not "everything that overlaps something":
    it is a maximal run of consecutive entries whose intervals all share a common point (for intervals,
    pairwise overlap is the same as a common point, Helly's theorem in one dimension, so it is enough
    to keep the running intersection [max lower end, min upper end]). Hence two entries in one group
    always overlap each other, and an entry that is measurably more robust than another (higher value,
    disjoint intervals) is always in an earlier group. An entry without an interval counts as the
    point [value, value]. Entries without a value form a last group of their own, by name.
    """
    idx = [i for i in range(len(values)) if _ok(values[i])]
    idx.sort(key=lambda i: (-float(values[i]), names[i]))
    groups: list[list[int]] = []
    lo = hi = 0.0
    for i in idx:
        v = float(values[i])
        a, b = (float(cis[i][0]), float(cis[i][1])) if cis[i] is not None else (v, v)
        if groups and a <= hi and b >= lo:
            groups[-1].append(i)
            lo, hi = max(lo, a), min(hi, b)
        else:
            groups.append([i])
            lo, hi = a, b
    rest = sorted((i for i in range(len(values)) if not _ok(values[i])), key=lambda i: names[i])
    if rest:
        groups.append(rest)
    return groups


def order_within_group(group: Sequence[int], values: Sequence[Number], costs: Sequence[Number],
                       train_costs: Sequence[Number], names: Sequence[str]) -> list[int]:
    """The tie-breakers inside one statistical tie group: inference FLOPs, cheaper first (unknown
    last: nothing shows it is cheaper); among equal inference FLOPs, training FLOPs (cheaper first)
    when every one of them has an exact figure, else (and then) best-known accuracy, higher first;
    then name. "Training FLOPs where both are known exactly" compared pairwise would not be a
    consistent order (A < C by training, C < B and B < A by accuracy when B's training is
    unknown), so the training figure decides a set of equal inference FLOPs only when all of it has
    one."""
    def val(i: int) -> float:
        return float(values[i]) if _ok(values[i]) else -math.inf

    def cost(i: int) -> float | None:
        return float(costs[i]) if _ok(costs[i], positive=True) else None

    by_cost: dict[float | None, list[int]] = {}
    for i in group:
        by_cost.setdefault(cost(i), []).append(i)
    out: list[int] = []
    for c in sorted(by_cost, key=lambda c: (c is None, c or 0.0)):
        sub = by_cost[c]
        if len(sub) > 1 and all(_ok(train_costs[i], positive=True) for i in sub):
            sub.sort(key=lambda i: (float(train_costs[i]), -val(i), names[i]))
        else:
            sub.sort(key=lambda i: (-val(i), names[i]))
        out.extend(sub)
    return out


def best_known_order(values: Sequence[Number], cis: Sequence[CI | None], costs: Sequence[Number],
                     train_costs: Sequence[Number], names: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """The default order: tie groups (:func:`tie_groups`) by value, each ordered by
    :func:`order_within_group`. Returns ``(order, groups)``, each group in its final order."""
    groups = [order_within_group(g, values, costs, train_costs, names) if all(_ok(values[i]) for i in g)
              else list(g) for g in tie_groups(values, cis, names)]
    return [i for g in groups for i in g], groups
