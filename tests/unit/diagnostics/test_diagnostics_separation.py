"""Data separation: the pruned exact computation against an explicit double loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.diagnostics.separation import min_distance_to_other_class, separation_report

BUNDLED = Path(__file__).resolve().parents[3] / "harness" / "data" / "mnist_test.npz"


def brute_force(xq, yq, xr, yr):
    """For each query point: min over reference points of another label of max |pixel diff|."""
    xq = np.asarray(xq).reshape(len(xq), -1).astype(np.float64)
    xr = np.asarray(xr).reshape(len(xr), -1).astype(np.float64)
    out = np.full(len(xq), np.inf)
    for i in range(len(xq)):
        for j in range(len(xr)):
            if yq[i] != yr[j]:
                out[i] = min(out[i], np.max(np.abs(xq[i] - xr[j])))
    return out


@pytest.fixture(scope="module")
def mnist():
    if BUNDLED.is_file():
        with np.load(BUNDLED) as d:
            return d["x"][:1000], d["y"][:1000]
    # no bundled data: MNIST-like synthetic digits (sparse strokes on black)
    rng = np.random.default_rng(0)
    x = np.zeros((1000, 28, 28), np.uint8)
    y = rng.integers(0, 10, 1000)
    for i in range(1000):
        r, c = 4 + y[i], 4 + (y[i] * 2) % 16
        x[i, r:r + 12, c:c + 3] = rng.integers(100, 256, (12, 3))
        x[i] = np.clip(x[i].astype(int) + rng.integers(0, 40, (28, 28)) * (rng.random((28, 28)) < 0.05), 0, 255)
    return x, y


def test_matches_brute_force_on_mnist_subset(mnist):
    x, y = mnist
    xq, yq, xr, yr = x[:40], y[:40], x[200:800], y[200:800]
    want = brute_force(xq, yq, xr, yr) / 255
    got, idx = min_distance_to_other_class(xq, yq, xr, yr, return_index=True)
    np.testing.assert_array_equal(got, want)
    # the index points at a reference point of another label at exactly that distance
    assert np.all(yr[idx] != yq)
    at = np.abs(xq.reshape(40, -1).astype(int) - xr[idx].reshape(40, -1).astype(int)).max(1) / 255
    np.testing.assert_array_equal(at, want)


@pytest.mark.parametrize("levels,chunk", [((7, 4, 2), 1 << 24), ((4,), 1000), ((), 5000), ((3, 2), 1)])
def test_any_pruning_schedule_and_chunking_is_exact(mnist, levels, chunk):
    x, y = mnist
    xq, yq, xr, yr = x[900:925], y[900:925], x[:300], y[:300]
    want = brute_force(xq, yq, xr, yr) / 255
    got = min_distance_to_other_class(xq, yq, xr, yr, levels=levels, max_pairs=chunk,
                                      n_candidates=2, candidate_pool=3)
    np.testing.assert_array_equal(got, want)


def test_random_colour_images_float_and_uint8_agree():
    rng = np.random.default_rng(1)
    # HWC colour images with structure at several scales, so that pruning has work to do
    xr = rng.integers(0, 256, (150, 9, 10, 3)).astype(np.uint8)
    yr = rng.integers(0, 3, 150)
    xq = np.clip(xr[:30].astype(int) + rng.integers(-60, 61, (30, 9, 10, 3)), 0, 255).astype(np.uint8)
    yq = rng.integers(0, 3, 30)
    want = brute_force(xq, yq, xr, yr)
    got_u8 = min_distance_to_other_class(xq, yq, xr, yr, levels=(4, 2))
    np.testing.assert_array_equal(got_u8, want / 255)
    got_f = min_distance_to_other_class(xq.astype(np.float32) / 255, yq, xr.astype(np.float32) / 255, yr,
                                        levels=(4, 2))
    np.testing.assert_allclose(got_f, want / 255, atol=1e-6)
    # flat vectors work too
    flat = min_distance_to_other_class(xq.reshape(30, -1), yq, xr.reshape(150, -1), yr, levels=(3,))
    np.testing.assert_array_equal(flat, want / 255)


def test_no_other_label_gives_inf_and_report_summary(mnist):
    x, y = mnist
    ones = x[y == 1][:5]
    d = min_distance_to_other_class(ones, np.ones(5, int), ones, np.ones(5, int))
    assert np.all(np.isinf(d))
    rep = separation_report(x[:20], y[:20], x[500:700], y[500:700])
    want = brute_force(x[:20], y[:20], x[500:700], y[500:700]) / 255
    assert rep["min"] == want.min() and rep["half_min"] == want.min() / 2
    assert rep["median"] == np.median(want) and rep["mean"] == pytest.approx(want.mean())
    assert rep["n_test"] == 20 and rep["n_train"] == 200
    assert rep["distances"][rep["argmin"]] == want.min()
    sub = separation_report(x[:20], y[:20], x[500:700], y[500:700], subset=7, train_subset=50)
    np.testing.assert_array_equal(sub["distances"], brute_force(x[:7], y[:7], x[500:550], y[500:550]) / 255)
