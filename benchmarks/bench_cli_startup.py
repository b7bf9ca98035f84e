"""Benchmark: wall time of ``harness validate submissions/mnist-pgd`` in a fresh process, this tree
against a baseline git ref (issue 17: the torch-free commands; target <= 0.3x).

    python benchmarks/bench_cli_startup.py [--baseline 86d736c] [--repeat 9] [--submission submissions/mnist-pgd]

The baseline is checked out into a temporary ``git worktree`` (removed afterwards); each tree runs
``python -m harness validate SUBMISSION`` with its own folder as the working directory and as
PYTHONPATH (so an installed copy of the package is not what runs). One untimed warm-up run per tree
(bytecode caches), then the two trees alternate, ``--repeat`` times each, so drift in the machine's
load hits both alike. Prints each tree's median and the ratio current / baseline. A run that does
not exit 0 with ``ok`` stops the benchmark.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(tree: Path, submission: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness", "validate", submission], cwd=tree, env=env,
                         capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0 or not out.stdout.strip().endswith(": ok"):
        sys.exit(f"validate in {tree} failed (exit {out.returncode}): {(out.stdout + out.stderr)[-500:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="86d736c", help="git ref to compare with (default 86d736c)")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per tree (default 9)")
    ap.add_argument("--submission", default="submissions/mnist-pgd", help="relative to each tree")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(base), args.baseline],
                       check=True)
        try:
            trees = {"current": REPO, f"baseline {args.baseline}": base}
            for tree in trees.values():
                run_once(tree, args.submission)  # warm-up: bytecode caches
            times: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.repeat):
                for name, tree in trees.items():
                    times[name].append(run_once(tree, args.submission))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"harness validate {args.submission}: wall time of a fresh process, median of {args.repeat} "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    for name, ts in times.items():
        print(f"  {name:<24} median {med[name]:.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})")
    cur, basev = med["current"], med[f"baseline {args.baseline}"]
    print(f"  ratio current / baseline: {cur / basev:.2f}x (target <= 0.30x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
