"""The audit's sample sizes: a forgery of 1% of the examples is caught with probability >= 0.95.

The catch probabilities are computed here independently of harness.review.audit (and of scipy): binomial
sums term by term, so a wrong threshold, a rounding in the search or a wrong tail in scipy's call
would show."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from harness.review import audit
from harness.review.audit import (
    CATCH_PROBABILITY,
    FALSE_ALARM,
    FORGED_BREAK_PROBABILITY,
    FORGERY_FRACTION,
    HONEST_BREAK_RATE,
    check_sample_size,
    default_sample_sizes,
    deterministic_sample_size,
    plan_samples,
    reattack_sample_size_for,
    reattack_threshold,
    reattack_verdict,
)


def tail(n: int, p, c: int) -> float:
    """P(Bin(n, p) >= c) = sum_{k >= c} C(n, k) p^k (1 - p)^(n - k), summed term by term in log space
    (math.lgamma, math.fsum): the smaller of the two tails is summed, so it stays accurate."""
    p = float(p)
    if c <= 0:
        return 1.0
    if p == 0:
        return 0.0

    def term(k: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))

    if c > n * p:
        return math.fsum(term(k) for k in range(c, n + 1))
    return 1.0 - math.fsum(term(k) for k in range(c))


def frac(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10**9)


P0, F, Q = frac(HONEST_BREAK_RATE), frac(FORGERY_FRACTION), frac(FORGED_BREAK_PROBABILITY)
CATCH = frac(CATCH_PROBABILITY)
ALPHA = FALSE_ALARM * (1 + 1e-9)  # float round-off of the sums: a tail of exactly 5% (n = 1) is allowed


def test_the_requirement_is_a_one_percent_forgery_caught_95_percent_of_the_time():
    assert (FORGERY_FRACTION, CATCH_PROBABILITY, FALSE_ALARM) == (0.01, 0.95, 0.05)


def test_the_deterministic_default_is_299_and_minimal():
    n = default_sample_sizes().check
    assert n == deterministic_sample_size() == math.ceil(math.log(0.05) / math.log(0.99)) == 299
    assert 1 - (1 - F) ** n >= CATCH  # every falsified point in the sample is found
    assert 1 - (1 - F) ** (n - 1) < CATCH


def test_the_reattack_default_catches_a_one_percent_forgery_with_probability_095():
    """Worst case: every point of the record is claimed robust, so 1% of the pool is falsified."""
    d = default_sample_sizes()
    n, c = d.reattack, d.reattack_threshold
    assert (n, c) == (6889, 375)
    assert c == reattack_threshold(n)
    assert tail(n, P0, c) <= ALPHA < tail(n, P0, c - 1)  # the threshold: false alarms <= 5%, minimal
    p1 = (1 - F) * P0 + F * Q
    assert tail(n, p1, c) >= CATCH
    # no smaller sample (with its own threshold) reaches 0.95: checked on the last few below n
    for m in range(n - 40, n):
        cm = reattack_threshold(m)
        assert tail(m, P0, cm) <= ALPHA < tail(m, P0, cm - 1)
        assert tail(m, p1, cm) < CATCH, m


@pytest.mark.parametrize("robust_fraction", [1.0, 0.87, 0.5, 0.2])
def test_per_record_sizes_catch_the_forgery(robust_fraction):
    """A record of N = 10,000 points with a fraction r claimed robust: 1% of N falsified is 1% / r of
    the pool; the re-attack sample and its threshold still catch it with probability >= 0.95."""
    n_examples = 10_000
    pool = round(robust_fraction * n_examples)
    f = Fraction(n_examples, 100 * pool)
    n = reattack_sample_size_for(n_examples, pool)
    assert n <= pool
    c = reattack_threshold(n)
    assert tail(n, P0, c) <= ALPHA
    assert tail(n, (1 - f) * P0 + f * Q, c) >= CATCH
    k = check_sample_size(n_examples, pool)
    assert 1 - (1 - f) ** k >= CATCH and (k == 1 or 1 - (1 - f) ** (k - 1) < CATCH)


def test_a_small_pool_is_checked_whole():
    assert check_sample_size(500, 4) == 1  # f = 5 / 4: every point of the pool is falsified, one finds it
    assert check_sample_size(500, 20) == 11  # f = 5 / 20 = 25%: 1 - 0.75 ** 11 >= 0.95
    assert check_sample_size(500, 40) == 23  # f = 5 / 40 = 12.5%: 1 - 0.875 ** 23 >= 0.95
    assert check_sample_size(10_000, 10_000) == 299 and check_sample_size(500, 400) == 239
    assert reattack_sample_size_for(500, 435) == 435
    assert reattack_sample_size_for(500, 0) == 0


def test_the_old_64_point_audit_missed_a_two_percent_forgery():
    """The issue's calculation: the 64-point re-attack with the Clopper-Pearson rule (fail at 4 broken
    of 64 for p0 = 2%) passes a 2% forgery with probability 0.96 even when no honest point breaks."""
    c = reattack_threshold(64, 0.02)
    assert c == 4 and reattack_verdict(4, 64, 0.02)[1] and not reattack_verdict(3, 64, 0.02)[1]
    assert round(float(1 - tail(64, Fraction(2, 100), c)), 2) == 0.96


@pytest.mark.parametrize("n", [1, 10, 64, 299, 1000])
def test_threshold_against_exact_sums(n):
    c = reattack_threshold(n)
    assert tail(n, P0, c) <= ALPHA
    assert c == 1 or tail(n, P0, c - 1) > ALPHA
    assert reattack_threshold(n, 0.0) == 1


def test_the_plan_draws_each_check_from_its_pool():
    n = 200
    arrays = {"index": np.arange(n), "clean_correct": np.ones(n, bool), "autoattack_robust": np.arange(n) % 4 == 0,
              "certified_ibp": np.arange(n) % 8 == 0, "radius_ibp": np.where(np.arange(n) % 5 == 0, 0.1, 0.0)}
    arrays["radius_ibp"][arrays["certified_ibp"]] = 0.3
    plan = plan_samples(arrays, n, seed=3, clean=30, reattack=20, certify={"ibp": 25})
    again = plan_samples(arrays, n, seed=3, clean=30, reattack=20, certify={"ibp": 25})
    assert np.array_equal(plan["clean"], again["clean"]) and np.array_equal(plan["attack"], again["attack"])
    assert len(set(plan["clean"].tolist())) == 30
    assert arrays["autoattack_robust"][plan["attack"]].all() and plan["attack"].size == 20
    pool = audit.certify_pool(arrays, "ibp")
    assert pool[plan["certify"]["ibp"]].all() and plan["certify"]["ibp"].size == 25
    assert plan_samples(arrays, 50, seed=3, clean=300, reattack=300, certify={"ibp": 300})["clean"].max() < 50
