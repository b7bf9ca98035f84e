"""Benchmark: the sandbox's overhead on the default evaluation (``submissions/mnist-pgd``).

    python benchmarks/bench_sandbox.py [--n-examples 100] [--stages clean,flops,certify,autoattack]
                                       [--repeat 3] [--threads T] [--full]

Runs the same evaluation in process (``sandbox="none"``: the model in this process, no limits) and
in the sandboxed worker (``sandbox="worker"``: a child process that imports torch, isolates its
network, sets its limits, loads the model and runs the stages, supervised by this process), each
from an empty state folder, alternating the two, ``--repeat`` times; the fastest of each counts.
Prints both times (wall clock, and CPU time of this process and its children, which a busy
machine disturbs less), the ratio sandboxed / in process and the overhead (target: at most 5%). The
overhead is mostly fixed (starting a Python with torch: a few seconds), so it shrinks as the
evaluation grows; ``--full`` adds one run of each on the full default evaluation (500 examples,
every stage). Timings on a busy machine are noise: run it alone.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.runner.evaluate import evaluate
from harness.stages import STAGE_ORDER, EvalOptions

ROOT = Path(__file__).resolve().parents[1]
SUBMISSION = ROOT / "submissions" / "mnist-pgd" / "submission.yaml"


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_once(mode: str, n: int | None, stages: list[str], workdir: Path) -> tuple[float, float, float | None]:
    out = workdir / f"{mode}-{time.monotonic_ns()}" / "rec.json"
    opts = EvalOptions(device="cpu", n_examples=n, progress=False, sandbox=mode)
    t0, c0 = time.perf_counter(), _cpu()
    res = evaluate(SUBMISSION, opts, stages=stages, out=out, echo=lambda s: None)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    shutil.rmtree(out.parent)
    return seconds, cpu, res.record.robust_accuracy


def compare(n: int | None, stages: list[str], repeat: int, workdir: Path, label: str) -> float:
    best = {m: {"wall": float("inf"), "cpu": float("inf")} for m in ("none", "worker")}
    acc = {}
    for r in range(repeat):
        for mode in (("none", "worker") if r % 2 == 0 else ("worker", "none")):
            seconds, cpu, acc[mode] = run_once(mode, n, stages, workdir)
            best[mode]["wall"] = min(best[mode]["wall"], seconds)
            best[mode]["cpu"] = min(best[mode]["cpu"], cpu)
            print(f"  {label}: {mode:<6} run {r + 1}: {seconds:7.2f} s wall, {cpu:7.2f} s CPU", flush=True)
    assert acc["none"] == acc["worker"], f"results differ: {acc}"  # same evaluation either way
    for kind in ("wall", "cpu"):
        a, b = best["none"][kind], best["worker"][kind]
        print(f"{label}, {kind}: in process {a:.2f} s, sandboxed worker {b:.2f} s, ratio {b / a:.3f} "
              f"(overhead {100 * (b / a - 1):+.1f}%, {b - a:+.2f} s; target <= +5%)")
    return best["worker"]["wall"] / best["none"]["wall"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-examples", type=int, default=100)
    ap.add_argument("--stages", default="clean,flops,certify,autoattack")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the fastest counts")
    ap.add_argument("--full", action="store_true", help="also the full default evaluation, once per mode")
    ap.add_argument("--threads", type=int, help="torch threads in both modes (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the worker's torch reads it at import
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
