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
        for g, w in zip(got, want, strict=False):
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


# --- compute overhead and robustness gap --------------------------------------------------------
def brute_overhead(costs, values):
    out = []
    for i in range(len(costs)):
        if costs[i] is None or values[i] is None:
            out.append(None)
            continue
        least = min(costs[j] for j in range(len(costs))
                    if costs[j] is not None and values[j] is not None and values[j] >= values[i])
        out.append(costs[i] / least)
    return out


def brute_gap(costs, values):
    out = []
    for i in range(len(costs)):
        if costs[i] is None or values[i] is None:
            out.append(None)
            continue
        out.append(max(values[j] for j in range(len(costs))
                       if costs[j] is not None and values[j] is not None and costs[j] <= costs[i]) - values[i])
    return out


@pytest.mark.parametrize("coarse", [True, False])
def test_overhead_and_gap_match_brute_force(coarse):
    rng = random.Random(99 + coarse)
    for _ in range(150):
        costs, values = random_points(rng, rng.randint(0, 25), coarse=coarse)
        for got, want in ((fr.compute_overhead(costs, values), brute_overhead(costs, values)),
                          (fr.robustness_gap(costs, values), brute_gap(costs, values))):
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=False):
                assert (g is None and w is None) or g == pytest.approx(w)


def test_overhead_and_gap_hand_example():
    # a: 1 G, 50%; b: 4 G, 50% (same robustness, 4x the compute); c: 2 G, 60%
    costs, values = [1e9, 4e9, 2e9], [0.5, 0.5, 0.6]
    assert fr.compute_overhead(costs, values) == [1.0, 4.0, 1.0]
    assert fr.robustness_gap(costs, values) == pytest.approx([0.0, 0.1, 0.0])


# --- the honest ranking on a random board, by brute force ----------------------------------------
def _random_board(rng, n):
    from harness.core.stats import clopper_pearson
    from leaderboard.boards import Entry

    entries = []
    for i in range(n):
        k_n = rng.choice([0, 0, 1, 3, 40, 200, 400, 600, 800])  # many zeros: not measurably robust
        nn = rng.choice([100, 1000])
        robust = None if rng.random() < 0.05 else min(k_n, nn) / nn
        ci = None if robust is None else clopper_pearson(int(round(robust * nn)), nn)
        cert = None
        cert_ci = None
        if rng.random() < 0.4 and robust is not None:
            cert = rng.choice([0.0, robust / 2, robust])
            cert_ci = clopper_pearson(int(round(cert * nn)), nn)
        e = Entry(id=f"e{i}", name=f"e{i}", kind="reported", dataset="cifar10", norm="Linf", eps=8 / 255,
                  n_examples=nn, robust=robust, robust_ci=ci, certified=cert, certified_ci=cert_ci,
                  inference_flops=None if rng.random() < 0.1 else float(rng.choice([1e8, 2e8, 5e8, 1e9, 3e9, 1e10])),
                  training_flops=None if rng.random() < 0.5 else float(rng.choice([1e17, 1e18, 1e19])),
                  params=None if rng.random() < 0.1 else rng.choice([10 ** 6, 10 ** 7, 10 ** 8]),
                  training_flops_bound=rng.choice([None, None, "lower bound", "upper bound"]))
        entries.append(e)
    return entries


def test_rank_board_matches_brute_force_on_random_boards():
    from leaderboard.boards import FRONTIERS, rank_board

    rng = random.Random(7)
    for _ in range(60):
        entries = _random_board(rng, rng.randint(1, 30))
        ordered = rank_board(list(entries))
        pos = {e.id: k for k, e in enumerate(ordered)}
        measurable = {e.id: e.robust is not None and e.robust_ci[0] > 0 for e in entries}
        for e in entries:
            assert e.measurably_robust == measurable[e.id]
        # frontiers: brute force over the measurably robust entries only (with both figures)
        for key, cost_attr, value_attr, _ in FRONTIERS:
            def val(x, value_attr=value_attr):
                v, c = getattr(x, value_attr), (x.certified_ci if value_attr == "certified" else x.robust_ci)
                return v if v is not None and c is not None and c[0] > 0 else None

            def cost(x, cost_attr=cost_attr):  # a lower bound on the training FLOPs proves nothing about dominance
                if cost_attr == "training_flops" and x.training_flops_bound == "lower bound":
                    return None
                return getattr(x, cost_attr)
            for e in entries:
                ce, ve = cost(e), val(e)
                if ce is None or ve is None:
                    assert not e.on_frontier[key]
                    continue
                dominated = any(fr.dominates(cost(o), val(o), ce, ve) for o in entries
                                if o is not e and cost(o) is not None and val(o) is not None)
                assert e.on_frontier[key] == (not dominated), (key, e.id)
        # overhead and gap over every entry with both figures
        costs = [e.inference_flops for e in entries]
        values = [e.robust for e in entries]
        for e, o, g in zip(entries, brute_overhead(costs, values), brute_gap(costs, values), strict=False):
            assert (e.overhead is None and o is None) or e.overhead == pytest.approx(o)
            assert (e.gap is None and g is None) or e.gap == pytest.approx(g)
        # never above a measurably robust entry; no badge without measurable robustness
        for a in entries:
            for b in entries:
                if measurable[a.id] and not measurable[b.id]:
                    assert pos[a.id] < pos[b.id] and a.rank < b.rank
            if not measurable[a.id]:
                assert not any(a.on_frontier.get(k) for k, _, v, _ in FRONTIERS if v == "robust")
            if a.certified is not None and a.certified_ci[0] == 0:
                assert not a.on_frontier.get("certified_vs_inference_flops")
        # within the measurably robust entries with inference FLOPs: by layer, then accuracy
        ranked = [e for e in ordered if e.measurably_robust and e.layer is not None]
        keys = [(e.layer, -e.robust) for e in ranked]
        assert keys == sorted(keys)
        # ranks are standard competition ranks along the order
        for k, e in enumerate(ordered, start=1):
            assert e.rank <= k and (e.rank == k or e.tied)


def test_bounded_training_flops_on_the_frontier_and_in_the_fit():
    """A lower bound on the training FLOPs (the true cost may be higher) neither takes the training
    frontier nor pushes another entry off it; an upper bound may do both (the true cost is lower
    still); the scaling-law fit sees point estimates only."""
    from harness.core.stats import clopper_pearson
    from leaderboard.boards import Entry, make_boards

    def entry(i, robust, tflops, bound=None):
        return Entry(id=f"e{i}", name=f"e{i}", kind="reported", dataset="cifar10", norm="Linf", eps=8 / 255,
                     n_examples=10_000, robust=robust, robust_ci=clopper_pearson(round(robust * 10_000), 10_000),
                     training_flops=tflops, training_flops_bound=bound)

    cheap_lower = entry(0, 0.60, 1e17, "lower bound")   # cheapest and most robust, but only ">= 1e17"
    exact = entry(1, 0.50, 1e18)
    cheap_upper = entry(2, 0.55, 5e17, "upper bound")  # "<= 5e17" and more robust than e1: dominates it
    exact2 = entry(3, 0.40, 1e16)
    (board,) = make_boards([cheap_lower, exact, cheap_upper, exact2])
    on = {e.id: e.on_frontier["robust_vs_training_flops"] for e in board.entries}
    assert on == {"e0": None, "e1": False, "e2": True, "e3": True}
    assert cheap_lower.training_overhead is None and exact.training_overhead == pytest.approx(2.0)
    fit_points = [e.training_flops_exact for e in board.entries if e.training_flops_exact is not None]
    assert sorted(fit_points) == [1e16, 1e18]
