"""Benchmark: build the leaderboard site for 100 and 1,000 synthetic entries.

    python benchmarks/bench_leaderboard.py [--sizes 100 1000] [--repeat 1]

Prints the build time, the seconds per 100 entries at each size and their ratio (about 1 means
linear growth; the fixed cost of the figures, a few dozen SVGs whatever the size, makes small builds
cost more per entry). The synthetic entries (``tests/helpers/synthetic.py``) spread over three boards; each
has an ``.examples.npz`` without gallery images (the build checks every record against its arrays and
hashes every submission folder again), so no gallery PNGs are written; writing the synthetic
repository is not timed. Also runs under pytest-benchmark:
``pytest benchmarks/bench_leaderboard.py --benchmark-enable``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic boards of the tests

from helpers.synthetic import write_synthetic_repo  # noqa: E402

from leaderboard.boards import load_entries, make_boards
from leaderboard.build import build_leaderboard, render_plots
from leaderboard.render.html import render_site


def time_build(n: int, workdir: Path, repeat: int = 1) -> float:
    root = workdir / f"repo-{n}"
    write_synthetic_repo(root, n, seed=n)
    best = float("inf")
    for _ in range(repeat):
        out = workdir / f"site-{n}"
        t0 = time.perf_counter()
        build_leaderboard(root, out)
        best = min(best, time.perf_counter() - t0)
        n_pages = len(list((out / "entries").glob("*.html")))
        assert n_pages == n, (n_pages, n)
    return best


def phases(n: int, workdir: Path) -> dict[str, float]:
    """Where the time goes: reading and checking, figures, HTML pages (the Markdown and JSON are small)."""
    root = workdir / f"repo-{n}"
    out = workdir / f"phases-{n}"
    out.mkdir()
    t = [time.perf_counter()]
    inputs = load_entries(root)
    boards = make_boards(inputs.entries)
    t.append(time.perf_counter())
    plots = render_plots(out, boards)
    t.append(time.perf_counter())
    render_site(out, boards, inputs, plots)
    t.append(time.perf_counter())
    return {"read+check+rank": t[1] - t[0], "figures": t[2] - t[1], "html pages": t[3] - t[2]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeat", type=int, default=1, help="builds per size; the fastest counts")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-leaderboard-"))
    try:
        per100 = {}
        for n in args.sizes:
            s = time_build(n, work, args.repeat)
            per100[n] = s / n * 100
            ph = ", ".join(f"{k} {v:.2f} s" for k, v in phases(n, work).items())
            print(f"{n:>6} entries: {s:7.2f} s build, {per100[n]:6.3f} s per 100 entries  ({ph})", flush=True)
        if len(args.sizes) >= 2:
            a, b = args.sizes[0], args.sizes[-1]
            print(f"per-100-entry cost ratio ({b} vs {a} entries): {per100[b] / per100[a]:.2f} "
                  f"(1 = linear; total time ratio {per100[b] * b / (per100[a] * a):.2f} for {b / a:g}x entries)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def test_build_100_entries(benchmark, tmp_path):  # pytest-benchmark entry point
    root = tmp_path / "repo"
    write_synthetic_repo(root, 100)
    benchmark.pedantic(build_leaderboard, args=(root, tmp_path / "site"), rounds=1, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
