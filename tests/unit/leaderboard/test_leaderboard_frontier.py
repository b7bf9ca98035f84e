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


def test_tie_groups_are_not_chained():
    """Overlap is not transitive: 0~1 and 1~2 overlap, 0 and 2 do not, so 2 starts a new group."""
    values = [0.62, 0.59, 0.56]
    cis = [(0.60, 0.64), (0.57, 0.61), (0.54, 0.58)]
    assert fr.tie_groups(values, cis, ["a", "b", "c"]) == [[0, 1], [2]]
    # the same three with 2 overlapping both: one group
    assert fr.tie_groups(values, [(0.60, 0.64), (0.57, 0.61), (0.54, 0.605)], ["a", "b", "c"]) == [[0, 1, 2]]
    # a narrow interval inside a wide one, then one that overlaps the wide one only: new group
    assert fr.tie_groups([0.5, 0.45, 0.42], [(0.40, 0.60), (0.44, 0.46), (0.41, 0.43)], list("abc")) == [[0, 1], [2]]
    # missing values last, by name; no interval = the point itself
    assert fr.tie_groups([None, 0.5, 0.5], [None, None, None], ["z", "b", "a"]) == [[2, 1], [0]]


def test_order_within_a_group_hand_example():
    names = ["a", "b", "c", "d", "e"]
    values = [0.70, 0.69, 0.71, 0.70, 0.72]
    costs = [5.0, 5.0, 1.0, None, 5.0]
    train = [3.0, 2.0, None, 1.0, 4.0]
    # c is cheapest; a, b, e share 5.0 and all have exact training FLOPs: b (2), a (3), e (4); d unknown: last
    assert fr.order_within_group(range(5), values, costs, train, names) == [2, 1, 0, 4, 3]
    # one of the three without exact training FLOPs: accuracy decides the three (e, a, b)
    train[4] = None
    assert fr.order_within_group(range(5), values, costs, train, names) == [2, 4, 0, 1, 3]
    order, groups = fr.best_known_order(values, [(v - 0.03, v + 0.03) for v in values], costs, train, names)
    assert groups == [order] and order == [2, 4, 0, 1, 3]


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
        # no badge without measurable robustness
        for a in entries:
            if not measurable[a.id]:
                assert not any(a.on_frontier.get(k) for k, _, v, _ in FRONTIERS if v == "best_known")
            if a.certified is not None and a.certified_ci[0] == 0:
                assert not a.on_frontier.get("certified_vs_inference_flops")
        check_default_order(ordered)


def _overlap(a, b):
    return a[0] <= b[1] and b[0] <= a[1]


def check_default_order(ordered):
    """The default order of issue 18, checked by brute force over all pairs: ranks are positions;
    an entry measurably more robust than another (higher best-known, disjoint intervals) is above
    it; the tie groups are consecutive, sorted by best-known at their boundaries, pairwise
    overlapping, and maximal (the head of each group fails to overlap some member of the group
    above); inside a group cheaper inference FLOPs first (unknown last)."""
    from leaderboard.fmt import compute_key

    assert [e.rank for e in ordered] == list(range(1, len(ordered) + 1))
    with_value = [e for e in ordered if e.best_known is not None]
    assert ordered[:len(with_value)] == with_value
    for i, a in enumerate(with_value):
        for b in with_value[i + 1:]:
            assert not (b.best_known > a.best_known and not _overlap(a.best_known_ci, b.best_known_ci)), (a.id, b.id)
    groups: list[list] = []
    for e in with_value:
        if e.tie_group is None or not groups or groups[-1][0].tie_group != e.tie_group:
            groups.append([e])
        else:
            groups[-1].append(e)
    for g in groups:
        if len(g) > 1:
            assert all(e.tied and e.tie_group == (g[0].rank, g[-1].rank) for e in g)
        else:
            assert not g[0].tied and g[0].tie_group is None
        for i, a in enumerate(g):
            for b in g[i + 1:]:
                assert _overlap(a.best_known_ci, b.best_known_ci)
                ca, cb = compute_key(a.inference_flops), compute_key(b.inference_flops)
                assert cb is None or (ca is not None and ca <= cb)
    for up, down in zip(groups, groups[1:], strict=False):
        assert min(e.best_known for e in up) >= max(e.best_known for e in down)
        head = min(down, key=lambda e: (-e.best_known, e.name + "\0" + e.id))  # its first in best-known order
        assert not all(_overlap(head.best_known_ci, e.best_known_ci) for e in up)


def test_a_cheap_weak_model_ranks_below_every_measurably_more_robust_entry():
    """Issue 18, must show (fixture board): a 0.6% model cheaper than everything ranks below every
    entry that is measurably more robust, however cheap it is; it may still sit on the frontier."""
    from harness.core.stats import clopper_pearson
    from leaderboard.boards import Entry, make_boards

    def entry(name, k, n, flops):
        return Entry(id=name, name=name, kind="reported", dataset="mnist", norm="Linf", eps=0.3, n_examples=n,
                     robust=k / n, robust_ci=clopper_pearson(k, n), inference_flops=flops)

    tiny = entry("mlp-3-epochs", 3, 500, 1e4)               # 0.60%, 95% CI [0.12, 1.74]
    others = [entry("pgd-cnn", 435, 500, 6.1e5), entry("fgsm-cnn", 205, 500, 6.1e5), entry("weak-cnn", 12, 500, 6.1e5),
              entry("zero-cnn", 0, 500, 6.1e5), entry("big", 9000, 10000, 1e9)]
    (board,) = make_boards([tiny, *others])
    check_default_order(board.entries)
    more = [e for e in others if e.best_known > tiny.best_known and not _overlap(e.best_known_ci, tiny.best_known_ci)]
    assert {e.id for e in more} == {"pgd-cnn", "fgsm-cnn", "big"}
    assert all(e.rank < tiny.rank for e in more)
    # the frontier is a fact, not a rank: cheapest of all and measurably above zero, so it is on it
    assert tiny.on_frontier["robust_vs_inference_flops"] is True
    # weak-cnn (2.4%) overlaps it: a statistical tie, which the cheaper one wins
    weak = next(e for e in board.entries if e.id == "weak-cnn")
    assert tiny.tie_group == weak.tie_group and tiny.rank < weak.rank


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
