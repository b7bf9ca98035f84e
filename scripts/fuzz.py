"""The large fuzzing campaign over the readers of untrusted input (issue 12).

    python scripts/fuzz.py --n 10000 [--seed 0] [--targets yaml,schema,record,npz,signed]

Feeds ``--n`` generated inputs in all, split evenly over the targets of ``tests/helpers/fuzzing.py``
(YAML documents, mutated submissions, mutated result records, mutated ``.examples.npz`` files, mutated signed records),
and prints, per target and in total: inputs, one-line errors (refused), tracebacks (target 0),
acceptances, and false acceptances (an accepted record that breaks an invariant; target 0). Exits 1
if there is any traceback or false acceptance, printing a few of them. ``tests/integration/test_fuzz.py`` runs the
same targets with a modest example count in the test command.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

TARGETS = ("yaml", "schema", "record", "npz", "signed")


def campaign(target, strategy, runner, tally, work: Path, n: int, seed_value: int) -> None:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from tqdm import tqdm

    bar = tqdm(total=n, desc=target, unit="input", disable=None)

    @seed(seed_value)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        runner(tally, work, value)
        bar.update(1)

    run()
    bar.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="inputs in all, split over the targets (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if unknown := [t for t in targets if t not in TARGETS]:
        ap.error(f"unknown targets {unknown}")

    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from helpers import fuzzing

    strategies = {"yaml": fuzzing.yaml_documents(), "schema": fuzzing.specs(), "record": fuzzing.records(),
                  "npz": fuzzing.examples_files(), "signed": fuzzing.signed_records()}
    runners = {"yaml": fuzzing.run_yaml, "schema": fuzzing.run_schema, "record": fuzzing.run_record,
               "npz": fuzzing.run_npz, "signed": fuzzing.run_signed}
    per_target = max(1, args.n // len(targets))
    tally = fuzzing.Tally()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        fuzzing.check_base_inputs(work / "base")
        for target in targets:
            campaign(target, strategies[target], runners[target], tally, work / target, per_target, args.seed)
    seconds = time.perf_counter() - t0

    rows = [*targets, "total"]
    print(f"\nfuzzing campaign: {args.n} inputs requested, seed {args.seed}, {seconds:.0f} s")
    print(f"{'target':<8} {'inputs':>8} {'one-line errors':>16} {'tracebacks':>11} {'acceptances':>12} "
          f"{'false accepts':>14}")
    for row in rows:
        t = None if row == "total" else row
        print(f"{row:<8} {tally.total(target=t):>8} {tally.total('refused', t):>16} {tally.total('traceback', t):>11} "
              f"{tally.total('accepted', t):>12} {tally.total('false-accept', t):>14}")
    bad = tally.total("traceback") + tally.total("false-accept")
    for key, examples in tally.examples.items():
        print(f"\n--- {key} (first {len(examples)}):")
        for ex in examples:
            print(ex)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
