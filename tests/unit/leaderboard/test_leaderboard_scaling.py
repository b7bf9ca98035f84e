"""The saturating power-law fit and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

from leaderboard.scaling import MIN_POINTS, fit_saturating_power_law


def law(c, A=0.80, B=0.5, alpha=0.15, C0=1e19):
    return A - B * (np.asarray(c) / C0) ** (-alpha)


def test_recovers_a_known_plateau():
    c = np.logspace(16, 22, 9)
    rng = np.random.default_rng(0)
    acc = law(c) + rng.normal(0, 0.002, size=c.size)
    fit = fit_saturating_power_law(c, acc)
    assert fit.ok, fit.message
    assert fit.A == pytest.approx(0.80, abs=0.03)
    assert fit.alpha == pytest.approx(0.15, abs=0.05)
    assert fit.rmse < 0.005
    assert np.allclose(fit.predict(c), law(c), atol=0.01)
    assert "predicted plateau" in fit.message
    assert fit.to_json()["A"] == fit.A


def test_too_few_points_is_said_plainly():
    c = [1e18, 1e19, 1e20]
    fit = fit_saturating_power_law(c, law(c))
    assert not fit.ok and fit.A is None
    assert "too few points" in fit.message and str(MIN_POINTS) in fit.message
    with pytest.raises(ValueError):
        fit.predict([1e20])


def test_missing_values_are_dropped_before_counting():
    c = [1e18, None, 1e19, 0.0, 1e20, 1e21]
    a = [0.5, 0.6, None, 0.7, 0.72, 0.74]
    fit = fit_saturating_power_law(c, a)
    assert fit.n_points == 3 and not fit.ok


def test_repeated_computes_are_refused():
    fit = fit_saturating_power_law([1e18, 1e18, 1e19, 1e19], [0.5, 0.51, 0.6, 0.61])
    assert not fit.ok and "distinct" in fit.message


def test_unsaturated_data_give_a_degenerate_fit():
    # accuracy still rising linearly in log compute, steeply: nothing pins the plateau down
    c = np.logspace(15, 21, 7)
    acc = 0.05 + 0.15 * (np.log10(c) - 15)
    fit = fit_saturating_power_law(c, acc)
    assert not fit.ok
    assert "degenerate" in fit.message
