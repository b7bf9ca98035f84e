"""Benchmark: `harness pr-check` of a WRN-70-16-sized submission on a CPU.

    python benchmarks/bench_prcheck_large.py [--threads T] [--keep DIR]

Builds the fixture repository of tests/helpers/prcheck_repo.py (a base branch with two entries), adds a
CIFAR-10 entry of robustbench.WideResNet depth 70, widen 16 (267 M parameters) with random weights,
saved as a 1.07 GB safetensors file and hosted over local HTTPS (tests/helpers/hosting.py, a throw-away
trustme certificate authority), runs pr-check on it once (the cache starts empty, so the download is
timed), and prints the time of each step of the check and the total, and the forward budget the
harness enforced. Needs the test dependencies (trustme). Run it alone: timings on a busy machine
are noise. The preparation (random weights, the file) is timed separately and is not part of the
check.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, help="torch threads of this process (default: torch's)")
    ap.add_argument("--keep", help="keep the report (pr-check.md, pr-check.json) in this folder")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from helpers.hosting import FileServer
    from helpers.prcheck_repo import commit, make_repo, wrn_70_16_entry

    from harness.review.prcheck import PRCheckOptions, run_pr_check

    work = Path(tempfile.mkdtemp(prefix="bench-prcheck-"))
    try:
        repo = make_repo(work)
        with FileServer(work) as srv:
            os.environ["REQUESTS_CA_BUNDLE"] = str(srv.ca_file)
            t0 = time.perf_counter()
            wrn_70_16_entry(repo, srv, work)
            commit(repo)
            prep = time.perf_counter() - t0
            print(f"preparation (random WRN-70-16 weights, 1.07 GB safetensors, not part of the check): {prep:.1f} s")
            print(f"CPU cores: {os.cpu_count()}, torch threads here: {torch.get_num_threads()}")
            t0 = time.perf_counter()
            rep = run_pr_check(PRCheckOptions(base="main", root=repo, progress=False,
                                              keep=Path(args.keep) if args.keep else None))
            total = time.perf_counter() - t0
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            (Path(args.keep) / "pr-check.md").write_text(rep.markdown() + "\n", encoding="utf-8")
            (Path(args.keep) / "pr-check.json").write_text(rep.to_json() + "\n", encoding="utf-8")
        print(f"pr-check: {'passed' if rep.ok else 'FAILED'}")
        for problem in rep.problems:
            print(f"  problem: {problem}")
        width = max(len(c[0]) for c in rep.checks) if rep.checks else 10
        for what, _result, seconds in rep.checks:
            print(f"  {what:<{width}}  {seconds:7.1f} s")
        print(f"  {'total (pr-check)':<{width}}  {total:7.1f} s")
        if rep.forward is not None:
            f = rep.forward
            print(f"forward pass of {f.n_inputs} inputs: {f.seconds:.1f} s; the worker in all (start, load, forward): "
                  f"{f.wall_seconds:.1f} s; budget {f.budget_s:.0f} s per phase "
                  f"({'scaled by the FLOPs' if f.budget_from_flops else 'the cap'})")
        if rep.count is not None and rep.count.flops_per_pass is not None:
            print(f"parameters {rep.count.params:,}, FLOPs per forward pass {rep.count.flops_per_pass:.4g}")
        return 0 if rep.ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
