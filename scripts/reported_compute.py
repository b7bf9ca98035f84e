#!/usr/bin/env python
"""Regenerate ``leaderboard/reported.csv`` from the 188-row RobustBench snapshot (the default
source) or from a RobustBench checkout, counting parameters and inference FLOPs offline with fvcore.

    python scripts/reported_compute.py [--source ../shared/reference/robustbench_model_info.csv]
                                       [--recount] [--no-count]

Same as ``harness leaderboard import-robustbench PATH``; see :mod:`leaderboard.importers.robustbench`.
Counts already in reported.csv are reused unless ``--recount`` (the whole table from scratch takes
about 20 minutes on two CPU cores: the ImageNet transformers dominate).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_SOURCE = REPO.parent / "shared" / "reference" / "robustbench_model_info.csv"


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import HarnessError, one_line
    from leaderboard.importers.robustbench import import_robustbench, main_log

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                    help="the snapshot CSV, or a RobustBench checkout / its model_info folder")
    ap.add_argument("--out", type=Path, default=REPO / "leaderboard" / "reported.csv")
    ap.add_argument("--recount", action="store_true", help="count every row again")
    ap.add_argument("--no-count", action="store_true", help="count nothing; new rows get unknown compute")
    args = ap.parse_args(argv)
    try:
        rows = import_robustbench(args.source, args.out, count=not args.no_count, recount=args.recount, log=main_log)
    except HarnessError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    counted = sum(1 for r in rows if r["inference_flops"])
    print(f"wrote {len(rows)} rows ({counted} with counted compute) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
