"""Benchmark: the sandbox's overhead on the default evaluation (``submissions/mnist-pgd``).

    python benchmarks/bench_sandbox.py [--n-examples 100] [--stages clean,flops,certify,autoattack]
                                       [--repeat 3] [--full]

Runs the same evaluation in process (``sandbox="none"``: the model in this process, no limits) and
in the sandboxed worker (``sandbox="worker"``: a child process that imports torch, isolates its
network, sets its limits, loads the model and runs the stages, supervised by this process), each
from an empty state folder, alternating the two, ``--repeat`` times; the fastest of each counts.
Prints both times, the ratio sandboxed / in process and the overhead (target: at most 5%). The
overhead is mostly fixed (starting a Python with torch: a few seconds), so it shrinks as the
evaluation grows; ``--full`` adds one run of each on the full default evaluation (500 examples,
every stage). Timings on a busy machine are noise: run it alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.pipeline import evaluate
from harness.stages import STAGE_ORDER, EvalOptions

ROOT = Path(__file__).resolve().parents[1]
SUBMISSION = ROOT / "submissions" / "mnist-pgd" / "submission.yaml"


def run_once(mode: str, n: int | None, stages: list[str], workdir: Path) -> tuple[float, float | None]:
    out = workdir / f"{mode}-{time.monotonic_ns()}" / "rec.json"
    opts = EvalOptions(device="cpu", n_examples=n, progress=False, sandbox=mode)
    t0 = time.perf_counter()
    res = evaluate(SUBMISSION, opts, stages=stages, out=out, echo=lambda s: None)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out.parent)
    return seconds, res.record.robust_accuracy


def compare(n: int | None, stages: list[str], repeat: int, workdir: Path, label: str) -> float:
    best = {"none": float("inf"), "worker": float("inf")}
    acc = {}
    for r in range(repeat):
        for mode in (("none", "worker") if r % 2 == 0 else ("worker", "none")):
            seconds, acc[mode] = run_once(mode, n, stages, workdir)
            best[mode] = min(best[mode], seconds)
            print(f"  {label}: {mode:<6} run {r + 1}: {seconds:7.2f} s", flush=True)
    assert acc["none"] == acc["worker"], f"results differ: {acc}"  # same evaluation either way
    ratio = best["worker"] / best["none"]
    print(f"{label}: in process {best['none']:.2f} s, sandboxed worker {best['worker']:.2f} s, "
          f"ratio {ratio:.3f} (overhead {100 * (ratio - 1):+.1f}%, {best['worker'] - best['none']:+.2f} s; "
          f"target <= +5%)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-examples", type=int, default=100)
    ap.add_argument("--stages", default="clean,flops,certify,autoattack")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest counts")
    ap.add_argument("--full", action="store_true", help="also the full default evaluation, once per mode")
    args = ap.parse_args(argv)
    stages = [s for s in STAGE_ORDER if s in args.stages.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compare(args.n_examples, stages, args.repeat, work,
                f"mnist-pgd, {args.n_examples} examples, {','.join(stages)}")
        if args.full:
            compare(None, list(STAGE_ORDER), 1, work, "mnist-pgd, full default evaluation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
