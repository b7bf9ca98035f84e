"""Data separation (Yang et al. 2020, "A Closer Look at Accuracy vs. Robustness").

For each query (test) point: the minimum L∞ distance to a reference (training) point with a
*different* label. If every such distance is at least 2r, a classifier that is both perfectly
accurate and perfectly robust at radius r exists on these data (the 1-nearest-neighbour rule is),
so ``half_min`` = min / 2 is the largest radius at which the trade-off between accuracy and
robustness is not forced by the data. Yang et al. report, for MNIST, a test-train separation of
0.812 (train-train: 0.737), so eps = 0.3 is well inside it.

The computation is **exact** but pruned, so the full MNIST test set against the 60 000 training
images runs in well under a minute on two cores instead of the ~5 minutes of a plain
``torch.cdist(p=inf)`` over all 6·10⁸ pairs. It uses lower bounds that hold for every pair:

    max-pooling and min-pooling over any block of pixels are 1-Lipschitz in L∞, so
    ‖pool(a) − pool(b)‖∞ ≤ ‖a − b‖∞ for pool = block max and block min.

For a chunk of query points (bounded so that a chunk × reference matrix holds at most
``max_pairs`` entries):

1. a lower bound for *all* pairs from coarse ``levels[0]`` × ``levels[0]`` block max/min features
   (e.g. 7×7 blocks: 32 numbers per MNIST image), same-label pairs masked out;
2. an upper bound per query: the exact distance to ``n_candidates`` promising pairs (the
   smallest finer lower bounds among the ``candidate_pool`` smallest coarse ones);
3. the pairs whose lower bound is below the upper bound survive; finer features (``levels[1:]``,
   e.g. 4×4 then 2×2 blocks) prune them further, and the last survivors get the exact distance.
   Pairs are pruned only when their lower bound is >= an attained distance, so the minimum is
   exact. All arithmetic is on exact values (uint8 pixels as integer-valued float32, so every
   distance is an exact multiple of 1/255).

Memory stays bounded by ``max_pairs`` (the coarse query-chunk × reference matrix) plus one
query's survivors, whatever the data-set sizes; the finer steps run one query at a time.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import HarnessError

__all__ = ["min_distance_to_other_class", "separation_report", "load_npz", "to_nchw"]

DEFAULT_LEVELS = (7, 4, 2)


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` with arrays ``x`` and ``y`` (the harness's data format)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"no such data file: {path}", field="data")
    with np.load(path) as d:
        if "x" not in d or "y" not in d:
            raise HarnessError(f"{path} must hold arrays 'x' and 'y'", field="data")
        return d["x"], d["y"]


def to_nchw(x, channels_last: bool | None = None) -> tuple[torch.Tensor, float]:
    """Images as a float32 NCHW tensor of their raw values, and the scale that maps the values to
    [0, 1] (255 for uint8, else 1).

    Accepts (N, D) flat vectors (treated as 1 × D images), (N, H, W), or (N, H, W, C) / (N, C, H, W)
    (``channels_last`` None guesses: a last axis of size <= 4 means HWC, the harness's npz layout).
    """
    t = torch.as_tensor(np.asarray(x))
    scale = 255.0 if t.dtype == torch.uint8 else 1.0
    t = t.to(torch.float32)
    if t.dim() == 2:
        t = t[:, None, None, :]
    elif t.dim() == 3:
        t = t[:, None]
    elif t.dim() == 4:
        if channels_last is None:
            channels_last = t.shape[-1] <= 4 and t.shape[1] > 4
        if channels_last:
            t = t.permute(0, 3, 1, 2)
    else:
        raise HarnessError(f"images must have 2-4 dimensions, got shape {tuple(t.shape)}",
                           field="x")
    return t.contiguous(), scale


def _features(x: torch.Tensor, k: int) -> torch.Tensor:
    """Block max and block min over k×k blocks (1×k² for flat vectors), flattened: (N, F)."""
    if x.shape[2] == 1:
        kernel = (1, k * k)
    else:
        kernel = (min(k, x.shape[2]), min(k, x.shape[3]))
    mx = F.max_pool2d(x, kernel, ceil_mode=True)
    mn = -F.max_pool2d(-x, kernel, ceil_mode=True)
    return torch.cat([mx.flatten(1), mn.flatten(1)], dim=1).contiguous()


def _rows_linf(ref: torch.Tensor, rows: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """‖ref[rows] − q‖∞ for one query vector ``q`` against the selected reference rows."""
    return (ref.index_select(0, rows) - q).abs_().amax(1)


def min_distance_to_other_class(x_query, y_query, x_ref, y_ref, *,
                                levels: tuple[int, ...] = DEFAULT_LEVELS, n_candidates: int = 32,
                                candidate_pool: int = 256, max_pairs: int = 1 << 24,
                                channels_last: bool | None = None, return_index: bool = False,
                                num_threads: int | None = 1):
    """Exact min L∞ distance from each query point to a reference point of another label.

    Inputs are arrays/tensors of images (uint8 in 0..255, or floats already in [0, 1]) and integer
    labels. Returns a float64 numpy array of distances in the [0, 1] pixel scale (``inf`` where
    no reference point has another label); with ``return_index``, also the index of a nearest
    other-label reference point (-1 where none). See the module doc for the pruning; ``max_pairs``
    bounds the coarse query-chunk × reference matrix (float32 entries).

    ``num_threads``: torch intra-op threads while this runs (restored afterwards; None leaves the
    setting alone). The default is 1: most steps are small per-query operations, for which
    intra-op parallelism costs more than it gains, and on a shared 2-core machine 2 threads were
    measured 6x *slower* (273 s vs 43 s for the full MNIST test set).
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        with torch.no_grad():
            return _min_distance(x_query, y_query, x_ref, y_ref, levels=levels,
                                 n_candidates=n_candidates, candidate_pool=candidate_pool,
                                 max_pairs=max_pairs, channels_last=channels_last,
                                 return_index=return_index)
    finally:
        if num_threads is not None:
            torch.set_num_threads(old_threads)


def _min_distance(x_query, y_query, x_ref, y_ref, *, levels, n_candidates, candidate_pool,
                  max_pairs, channels_last, return_index):
    xq, scale_q = to_nchw(x_query, channels_last)
    xr, scale_r = to_nchw(x_ref, channels_last)
    if scale_q != scale_r:
        raise HarnessError("query and reference images must have the same dtype (both uint8 or "
                           "both float)", field="x")
    if xq.shape[1:] != xr.shape[1:]:
        raise HarnessError(f"query images {tuple(xq.shape[1:])} and reference images "
                           f"{tuple(xr.shape[1:])} differ in shape", field="x")
    yq = torch.as_tensor(np.asarray(y_query)).long().reshape(-1)
    yr = torch.as_tensor(np.asarray(y_ref)).long().reshape(-1)
    if yq.shape[0] != xq.shape[0] or yr.shape[0] != xr.shape[0]:
        raise HarnessError("labels and images differ in number", field="y")
    nq, nr = xq.shape[0], xr.shape[0]
    best = torch.full((nq,), float("inf"), dtype=torch.float64)
    best_idx = torch.full((nq,), -1, dtype=torch.long)
    if nq == 0 or nr == 0:
        return (best.numpy(), best_idx.numpy()) if return_index else best.numpy()

    levels = tuple(int(k) for k in levels if int(k) > 1) or (1,)
    # integer pixel values: the pair-wise steps run in int16 (exact and about 5x faster than
    # float32 on the CPU); float images stay float32.
    fine_dtype = torch.int16 if scale_q == 255.0 else torch.float32
    coarse_q = _features(xq, levels[0]) if levels[0] > 1 else xq.flatten(1)
    coarse_r = _features(xr, levels[0]) if levels[0] > 1 else xr.flatten(1)
    fine_q = [_features(xq, k).to(fine_dtype) for k in levels[1:]]
    fine_r = [_features(xr, k).to(fine_dtype) for k in levels[1:]]
    exact_q = xq.flatten(1).to(fine_dtype).contiguous()
    exact_r = xr.flatten(1).to(fine_dtype).contiguous()
    k_cand = max(1, min(int(n_candidates), nr))
    n_pool = max(k_cand, int(candidate_pool))
    chunk = max(1, int(max_pairs) // nr)
    inf = float("inf")

    for q0 in range(0, nq, chunk):
        q1 = min(nq, q0 + chunk)
        # 1. coarse lower bound for all pairs of the chunk, other labels only
        lb = torch.cdist(coarse_q[q0:q1], coarse_r, p=inf)
        lb.masked_fill_(yq[q0:q1, None] == yr[None, :], inf)
        pool_lb, pool = lb.topk(min(n_pool, nr), dim=1, largest=False)
        for i in range(q1 - q0):
            q = q0 + i
            row = lb[i]
            cand = pool[i][torch.isfinite(pool_lb[i])]
            if cand.numel() == 0:
                continue  # no reference point of another label
            # 2. upper bound: exact distance to the candidates with the smallest lower bounds
            #    (the coarse bound picks a pool, the next finer bound picks from the pool)
            if fine_q and cand.numel() > k_cand:
                v = _rows_linf(fine_r[0], cand, fine_q[0][q])
                cand = cand[v.topk(k_cand, largest=False).indices]
            d = _rows_linf(exact_r, cand, exact_q[q])
            j = int(d.argmin())
            ub, ub_idx = float(d[j]), int(cand[j])
            # 3. survivors, pruned by finer lower bounds (refining the upper bound on the way)
            idx = (row < ub).nonzero().squeeze(1)
            for fq, fr in zip(fine_q, fine_r, strict=False):
                if idx.numel() == 0:
                    break
                v = _rows_linf(fr, idx, fq[q])
                if idx.numel() > k_cand:
                    c = idx[v.topk(k_cand, largest=False).indices]
                    d = _rows_linf(exact_r, c, exact_q[q])
                    j = int(d.argmin())
                    if float(d[j]) < ub:
                        ub, ub_idx = float(d[j]), int(c[j])
                idx = idx[v < ub]
            if idx.numel():
                d = _rows_linf(exact_r, idx, exact_q[q])
                j = int(d.argmin())
                if float(d[j]) < ub:
                    ub, ub_idx = float(d[j]), int(idx[j])
            best[q], best_idx[q] = ub, ub_idx
        del lb

    dist = best.numpy() / scale_q
    return (dist, best_idx.numpy()) if return_index else dist


def separation_report(x_test, y_test, x_train, y_train, *, subset: int | None = None,
                      train_subset: int | None = None, **kwargs) -> dict:
    """Test-to-train separation summary.

    ``subset``/``train_subset``: use only the first N test / training points (the official order),
    for a quick estimate. With the full training set, the minimum over a test subset is an upper
    bound on the full test set's minimum; a training subset can only raise every distance.

    Returns ``{"n_test", "n_train", "min", "median", "mean", "half_min", "argmin",
    "nearest_train_index", "seconds", "distances", "nearest"}``: ``distances`` per test point in
    the [0, 1] scale, ``nearest`` the index of a nearest other-label training point (-1 if none);
    ``half_min`` is the largest radius at which a perfectly robust and accurate classifier exists.
    """
    if subset is not None:
        x_test, y_test = x_test[: int(subset)], y_test[: int(subset)]
    if train_subset is not None:
        x_train, y_train = x_train[: int(train_subset)], y_train[: int(train_subset)]
    t0 = time.perf_counter()
    dist, idx = min_distance_to_other_class(x_test, y_test, x_train, y_train, return_index=True,
                                            **kwargs)
    seconds = time.perf_counter() - t0
    out = summarize(dist, len(y_train))
    out.update(nearest_train_index=int(idx[out["argmin"]]), seconds=float(seconds),
               distances=dist, nearest=idx)
    return out


# --------------------------------------------------------------------------- precomputed MNIST table

MNIST_TABLE = Path(__file__).with_name("mnist_separation.npz")
"""Per-test-point separation of the official MNIST test set from the 60 000 training images
(``distance_255``: uint8 distance x 255; ``nearest_train``: index of a nearest other-label training
image), written by ``python -m harness.diagnostics`` (see :func:`main`)."""


def mnist_table() -> dict[str, np.ndarray] | None:
    """The precomputed MNIST table, or None if it is not installed."""
    if not MNIST_TABLE.is_file():
        return None
    with np.load(MNIST_TABLE, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def summarize(distances: np.ndarray, n_train: int) -> dict:
    """min / median / mean / half_min of per-point distances (the keys of :func:`separation_report`)."""
    d = np.asarray(distances, dtype=np.float64)
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        raise HarnessError("separation: no point has a reference point of another label", field="data")
    return {"n_test": int(d.size), "n_train": int(n_train), "min": float(finite.min()),
            "median": float(np.median(finite)), "mean": float(finite.mean()),
            "half_min": float(finite.min() / 2), "argmin": int(np.argmin(d))}


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.diagnostics TRAIN.npz TEST.npz [--subset N] [--out FILE]``:
    the exact test-to-train separation, timed; ``--out`` writes the per-point table."""
    import argparse
    import hashlib
    import json

    p = argparse.ArgumentParser(prog="python -m harness.diagnostics",
                                description=main.__doc__)
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("--subset", type=int, default=None, help="first N test points only")
    p.add_argument("--train-subset", type=int, default=None, help="first N training points only")
    p.add_argument("--out", default=None, help="write distance_255/nearest_train to this .npz")
    a = p.parse_args(argv)
    x_tr, y_tr = load_npz(a.train)
    x_te, y_te = load_npz(a.test)
    rep = separation_report(x_te, y_te, x_tr, y_tr, subset=a.subset, train_subset=a.train_subset)
    dist, idx = rep.pop("distances"), rep.pop("nearest")
    print(json.dumps(rep, indent=1))
    if a.out:
        if x_te.dtype != np.uint8:
            raise HarnessError("--out needs uint8 images", field="x")
        sha = {k: hashlib.sha256(Path(f).read_bytes()).hexdigest() for k, f in
               (("train_sha256", a.train), ("test_sha256", a.test))}
        np.savez_compressed(a.out, distance_255=np.rint(dist * 255).astype(np.uint8),
                            nearest_train=idx.astype(np.int32), labels=np.asarray(y_te[: len(dist)]).astype(np.uint8),
                            train_sha256=np.array(sha["train_sha256"]),
                            test_sha256=np.array(sha["test_sha256"]),
                            seconds=np.array(rep["seconds"]))
    return 0
