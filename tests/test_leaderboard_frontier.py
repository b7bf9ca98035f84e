"""Frontiers, non-dominated sorting, the efficiency figure and ties, checked against brute force."""
from __future__ import annotations

import math
import random

import pytest

from leaderboard import frontier as fr


def brute_layers(costs, values):
    idx = [i for i in range(len(costs)) if costs[i] is not None and values[i] is not None]
    layers = [None] * len(costs)
    remaining = set(idx)
    layer = 0
    while remaining:
        layer += 1
        front = {i for i in remaining
                 if not any(fr.dominates(costs[j], values[j], costs[i], values[i]) for j in remaining if j != i)}
        for i in front:
            layers[i] = layer
        remaining -= front
    return layers


def brute_saving(costs, values):
    out = []
    for i in range(len(costs)):
        if costs[i] is None or values[i] is None:
            out.append(None)
            continue
        others = [costs[j] for j in range(len(costs))
                  if j != i and costs[j] is not None and values[j] is not None and values[j] >= values[i]]
        out.append(math.inf if not others else min(others) / costs[i])
    return out


def random_points(rng, n, *, coarse):
    """Coarse grids make many exact ties in cost, value and both."""
    costs, values = [], []
    for _ in range(n):
        if rng.random() < 0.08:
            costs.append(None)
        else:
            costs.append(float(rng.randint(1, 6)) if coarse else 10 ** rng.uniform(6, 11))
        values.append(None if rng.random() < 0.05 else (rng.randint(0, 5) / 5 if coarse else rng.random()))
    return costs, values


@pytest.mark.parametrize("coarse", [True, False])
def test_layers_and_saving_match_brute_force(coarse):
    rng = random.Random(1234 + coarse)
    for _ in range(150):
        costs, values = random_points(rng, rng.randint(0, 25), coarse=coarse)
        assert fr.nondominated_layers(costs, values) == brute_layers(costs, values)
        got, want = fr.flop_saving(costs, values), brute_saving(costs, values)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert (g is None and w is None) or g == pytest.approx(w)


def test_frontier_definition_small_example():
    #          A      B      C      D      E (same point as A)  F (same cost as B, less robust)
    costs = [1.0, 2.0, 4.0, 3.0, 1.0, 2.0]
    values = [0.5, 0.6, 0.7, 0.55, 0.5, 0.58]
    on = fr.pareto_frontier(costs, values)
    assert on == [True, True, True, False, True, False]
    assert fr.nondominated_layers(costs, values) == [1, 1, 1, 3, 1, 2]  # D is dominated by F
    assert fr.frontier_line(costs, values) == [0, 4, 1, 2]
    s = fr.flop_saving(costs, values)
    assert s[2] == math.inf  # the most robust entry
    assert s[1] == pytest.approx(4.0 / 2.0)  # cheapest other at >= 0.6 is C at 4
    assert s[3] == pytest.approx(2.0 / 3.0)  # B is more robust at 2: D spends 1.5x more
    assert s[0] == pytest.approx(1.0)  # E is identical
    assert s[5] == pytest.approx(1.0)  # B: more robust at the same cost


def test_missing_and_nonpositive_costs_are_on_no_frontier():
    costs = [None, 0.0, -1.0, float("nan"), 5.0]
    values = [0.9, 0.9, 0.9, 0.9, None]
    assert fr.pareto_frontier(costs, values) == [None] * 5
    assert fr.flop_saving(costs, values) == [None] * 5
    assert fr.pareto_frontier([], []) == []


def test_frontier_entries_are_exactly_those_with_saving_above_one_when_no_ties():
    rng = random.Random(7)
    costs = [10 ** rng.uniform(6, 11) for _ in range(200)]
    values = [rng.random() for _ in range(200)]
    on = fr.pareto_frontier(costs, values)
    s = fr.flop_saving(costs, values)
    assert [x > 1 for x in s] == on
    assert sum(on) >= 1


def test_ci_overlap():
    assert fr.ci_overlap((0.1, 0.2), (0.2, 0.3))
    assert fr.ci_overlap((0.1, 0.5), (0.2, 0.3))
    assert not fr.ci_overlap((0.1, 0.2), (0.21, 0.3))
    assert not fr.ci_overlap(None, (0.1, 0.2))


def test_default_order_and_ranks_with_ties():
    names = ["a", "b", "c", "d", "e"]
    layers = [1, 1, 2, 1, None]
    values = [0.70, 0.69, 0.80, 0.50, 0.99]
    costs = [10.0, 5.0, 20.0, 1.0, None]
    order = fr.default_order(layers, values, costs, names)
    assert order == [0, 1, 3, 2, 4]  # layer 1 by accuracy, then layer 2, then no layer
    cis = [(0.68, 0.72), (0.67, 0.71), (0.78, 0.82), (0.48, 0.52), (0.98, 1.0)]
    rank, tied = fr.ranks_with_ties(order, layers, cis)
    assert rank == [1, 1, 4, 3, 5]
    assert tied == [True, True, False, False, False]


def test_ties_compare_with_the_head_of_the_group_not_a_chain():
    layers = [1, 1, 1]
    order = [0, 1, 2]
    cis = [(0.60, 0.64), (0.57, 0.61), (0.54, 0.58)]  # 0~1 and 1~2 overlap, 0 and 2 do not
    rank, tied = fr.ranks_with_ties(order, layers, cis)
    assert rank == [1, 1, 3]
    assert tied == [True, True, False]


def test_no_tie_across_layers():
    rank, tied = fr.ranks_with_ties([0, 1], [1, 2], [(0.5, 0.6), (0.5, 0.6)])
    assert rank == [1, 2] and tied == [False, False]
