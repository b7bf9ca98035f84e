#!/usr/bin/env python
"""Merge contributed training recipes into ``leaderboard/training_recipes.csv``.

    python scripts/merge_recipes.py PART.csv [PART.csv ...] [--reference-dir ../shared/reference]

Each contributed row is parsed as the build parses the committed table (a row that does not
parse is rejected, with the reason printed) and checked for plausibility
(:func:`leaderboard.recipes.plausibility_problems`; doubts are printed for a person to judge).
A contributed row replaces the committed row of the same entry. Every row of ``reported.csv``
gets a recipe row: entries nobody has researched get status ``unknown`` with that reason. The
three scaling-law rows are added from the shared reference when missing.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


#: contributed rows whose numbers describe one stage of a multi-stage training (their notes say so):
#: the stage alone would understate the training compute, so no total is computed from them
STAGE_ONLY = {
    ("cifar10", "Linf", "Chen2020Adversarial"): "one ensemble member's fine-tuning stage; the self-supervised "
                                                 "adversarial pre-training and the other two members are not in the "
                                                 "numbers",
    ("cifar10", "Linf", "Hendrycks2019Using"): "the CIFAR-10 fine-tuning stage only; the adversarial pre-training "
                                                "on ImageNet32 is not in the numbers",
    ("cifar100", "Linf", "Hendrycks2019Using"): "the CIFAR-100 fine-tuning stage only; the adversarial pre-training "
                                                 "on ImageNet32 is not in the numbers",
    **{(ds, "Linf", f"Debenedetti2022Light_XCiT-{s}12"): "the fine-tuning stage only; the ImageNet adversarial "
                                                          "pre-training is not in the numbers"
       for ds in ("cifar10", "cifar100") for s in ("S", "M", "L")},
}


def _completeness(r) -> tuple[int, int]:
    """known > partial > unknown, then how many numbers are given."""
    rank = {"known": 2, "partial": 1, "unknown": 0}[r.status]
    return rank, sum(v is not None for v in (r.attack_steps, r.awp, r.epochs, r.examples_per_epoch, r.batch_size))


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import HarnessError
    from leaderboard.recipes import (
        RECIPE_COLUMNS,
        Recipe,
        load_recipes,
        parse_recipe,
        plausibility_problems,
        write_recipes,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "leaderboard" / "training_recipes.csv")
    ap.add_argument("--reported", type=Path, default=REPO / "leaderboard" / "reported.csv")
    ap.add_argument("--reference-dir", type=Path, default=REPO.parent / "shared" / "reference")
    args = ap.parse_args(argv)

    table = load_recipes(args.out) if args.out.is_file() else {}
    # a placeholder ("not researched") never replaces a contributed row
    origin: dict = {k: "committed" for k in table}
    rejected = 0
    for part in args.parts:
        with open(part, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for line, row in enumerate(reader, start=2):
                where = f"{part}:{line}"
                try:
                    r = parse_recipe({k: row.get(k, "") or "" for k in RECIPE_COLUMNS}, where)
                except HarnessError as e:
                    print(f"REJECTED {e}", file=sys.stderr)
                    rejected += 1
                    continue
                for problem in plausibility_problems(r):
                    print(f"DOUBT {where} {r.robustbench_id}: {problem}", file=sys.stderr)
                old = table.get(r.key)
                if old is not None and origin.get(r.key) not in (None, "committed", "placeholder"):
                    # two contributions for one entry: keep the better-known one (then the later)
                    if _completeness(old) > _completeness(r):
                        print(f"CONFLICT {'/'.join(r.key)}: kept {old.where} over {where}", file=sys.stderr)
                        continue
                    print(f"CONFLICT {'/'.join(r.key)}: took {where} over {old.where}", file=sys.stderr)
                table[r.key] = r
                origin[r.key] = str(part.name)

    import dataclasses
    for key, why in STAGE_ONLY.items():
        r = table.get(key)
        if r is not None and r.epochs is not None and not r.note.startswith("[merge]"):
            table[key] = dataclasses.replace(r, epochs=None, status="partial",
                                             note=f"[merge] epochs left unknown: the row gives {why} "
                                                  f"(its {r.epochs:g} epochs are that stage's). " + r.note)
            print(f"STAGE-ONLY {'/'.join(key)}: no total computed", file=sys.stderr)
    with open(args.reported, newline="", encoding="utf-8") as f:
        reported = [(r["dataset"], r["norm"], r["robustbench_id"]) for r in csv.DictReader(f)]
    ref = args.reference_dir / "training_compute_cifar10_linf.csv"
    if ref.is_file():
        with open(ref, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                key = ("cifar10", "Linf", r["robustbench_id"])
                if key in table and table[key].status != "unknown":
                    continue
                seen = float(r["examples_seen"])
                table[key] = Recipe(
                    robustbench_id=r["robustbench_id"], dataset="cifar10", threat_model="Linf", method="trades",
                    attack_steps=10, awp=False, epochs=round(seen / 51_200), examples_per_epoch=51_200,
                    real_generated_ratio="", extra_data="", batch_size=None, status="known",
                    source=r["source"], note=f"from the scaling-law reference table: {r['method']}; {r['note']}")
                origin[key] = "reference"
    for key in reported:
        if key not in table:
            table[key] = Recipe(robustbench_id=key[2], dataset=key[0], threat_model=key[1], method="unknown",
                                attack_steps=None, awp=None, epochs=None, examples_per_epoch=None,
                                real_generated_ratio="", extra_data="", batch_size=None, status="unknown",
                                source="", note="not researched yet: no recipe has been collected for this entry")
            origin[key] = "placeholder"
    extra = [k for k in table if k not in set(reported)]
    for k in extra:
        print(f"DROPPED {'/'.join(k)}: not a row of {args.reported}", file=sys.stderr)
        del table[k]
    write_recipes(list(table.values()), args.out)
    from collections import Counter
    print(f"wrote {len(table)} recipes to {args.out}; rejected {rejected}; by origin: "
          f"{dict(Counter(origin[k] for k in table))}; by status: {dict(Counter(r.status for r in table.values()))}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
