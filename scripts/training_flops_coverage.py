#!/usr/bin/env python
"""Which reported rows of a board have training FLOPs, and what fact each of the others lacks.

    python scripts/training_flops_coverage.py [--dataset cifar10] [--norm Linf] [--full]

Reads the committed ``leaderboard/reported.csv`` and ``leaderboard/training_recipes.csv`` through the
build's own loader (:func:`leaderboard.boards.load_entries`), so the figures are the board's. Prints
the count, then one line per row still unknown: its AutoAttack accuracy, its RobustBench id and the
reason the build gives (``training_flops_source``, whose "unknown: ..." part names the missing
facts; ``--full`` adds the recipe's note). Torch-free.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _drop_note(why: str) -> str:
    """The missing facts without the recipe's note, the last parenthesised part of the reason."""
    if not why.endswith(")"):
        return why
    depth = 0
    for i in range(len(why) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(why[i], 0)
        if depth == 0:
            return why[:i].rstrip()
    return why


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import HarnessError, one_line
    from leaderboard.boards import load_entries

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--norm", default="Linf")
    ap.add_argument("--full", action="store_true", help="print the whole reason, with the recipe's note")
    args = ap.parse_args(argv)
    try:
        entries = load_entries(REPO).entries
    except HarnessError as e:  # the build's own checks: one line, as the CLI prints it
        print(f"error: {one_line(str(e), 500)}", file=sys.stderr)
        return 2
    rows = [e for e in entries if e.reported and (e.dataset, e.norm) == (args.dataset, args.norm)]
    known = [e for e in rows if e.training_flops is not None]
    bounded = [e for e in known if e.training_flops_bound]
    print(f"{args.dataset} {args.norm}: {len(known)} of {len(rows)} reported rows have training FLOPs "
          f"({len(bounded)} of them bounds: {sum(e.training_flops_bound == 'lower bound' for e in bounded)} lower, "
          f"{sum(e.training_flops_bound == 'upper bound' for e in bounded)} upper); fvcore convention, "
          "1 FLOP = 1 multiply-add")
    unknown = sorted((e for e in rows if e.training_flops is None), key=lambda e: (-(e.robust or 0), e.id))
    print(f"{len(unknown)} still unknown (AutoAttack %, RobustBench id: what is missing):")
    for e in unknown:
        why = (e.training_flops_source or "unknown: no recipe").removeprefix("unknown: ")
        if not args.full:
            why = _drop_note(why)
        print(f"  {100 * (e.robust or 0):6.2f}  {e.reported['robustbench_id']}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
