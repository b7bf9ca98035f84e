"""Records are unchanged: evaluate every bundled submission with two versions of the harness and
compare the records and examples files, apart from timings, provenance and the signature over them.

    python scripts/compare_records.py --before REF --after REF [--n-examples N]
        [--submissions submissions/*/submission.yaml] [--only STAGES] [--keep DIR] [--jobs J]

REF is a git ref (checked out into a temporary ``git worktree add --detach``, removed at the end) or
``WORKTREE``, this checkout as it is on disk (uncommitted changes included). For each submission and
each ref, that ref's own CLI runs in a fresh process, with the tree as working directory and as
PYTHONPATH (so an installed copy of the package is not what runs) and one thread::

    python -m harness eval SUB --n-examples N --out TMP/<before|after>/<id>.json --no-progress
        --device cpu --sandbox worker --restart [--only STAGES] [--data-dir DIR]

Only the command line is used, never the package's modules, so the script works across layout
changes of the harness. The two records' JSON are compared recursively and exactly (same keys, same
JSON types, same values; NaN equals NaN; key order is not compared), ignoring only the top-level
``provenance`` and ``signature`` blocks and the timing keys listed in ``TIMING_KEYS``; every array of
the two ``.examples.npz`` files is compared exactly (same names, dtypes, shapes and values, NaN equal
to NaN). One table row per submission; exit status 1 if any record, examples file or evaluation
differs or fails, else 0.

N defaults per dataset (``DEFAULT_N``) so that all bundled submissions on both refs take a few
minutes on 2 cores; ``--n-examples`` sets one N for all.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKTREE = "WORKTREE"

#: top-level blocks of a record that are not compared: where and when the run happened (versions,
#: hashes, device, wall-clock times, the command line), and the maintainers' signature over it all
IGNORED_TOP_LEVEL = frozenset({"provenance", "signature"})

#: keys that hold a timing, ignored wherever they occur. An explicit list on purpose (no pattern):
#: a new key, even one that looks like a timing, is compared until someone adds it here.
TIMING_KEYS = frozenset({
    "seconds",                          # certified.<method>.seconds: wall time of one certifier
    "seconds_per_attack",               # autoattack: wall time of each attack
    "seconds_saved_by_certify_first",   # autoattack: estimate from the certify stage's wall time
    "stage_seconds",                    # wall time per stage (provenance)
    "cpu_seconds_per_stage",            # CPU time per stage (provenance)
    "started_at",                       # clock time (provenance)
    "finished_at",                      # clock time (provenance)
    "signed_at",                        # clock time (signature)
})

#: default --n-examples per dataset: the MNIST submissions take ~20 s each at 25 examples on one
#: thread, the CIFAR-10 ResNet-18 ~25 s at 4 (AutoAttack costs ~0.5 s per image on a CPU)
DEFAULT_N = {"mnist": 25, "cifar10": 6}
DEFAULT_N_OTHER = 10

#: a difference list longer than this is cut in the table (the full list is printed below it)
TABLE_DIFFS = 3


# --------------------------------------------------------------------------- comparison


def _json_type(v: Any) -> str:
    # bool is an int in Python and 1 == 1.0 == True: compare JSON types first so that a value that
    # changes type (a count written as a float, a flag as a number) is a difference
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _short(v: Any, limit: int = 60) -> str:
    s = json.dumps(v, sort_keys=True, allow_nan=True, default=repr)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def compare_json(before: Any, after: Any, path: str = "", ignored: set[str] | None = None) -> list[str]:
    """Differences between two decoded JSON values, as ``path: what`` lines, in document order.

    Skips the top-level ``IGNORED_TOP_LEVEL`` blocks and any ``TIMING_KEYS`` key at any depth;
    the names of the keys skipped are added to ``ignored`` when given. Floats compare exactly,
    NaN equal to NaN.
    """
    diffs: list[str] = []
    tb, ta = _json_type(before), _json_type(after)
    where = path or "(record)"
    if tb != ta:
        return [f"{where}: {tb} {_short(before)} -> {ta} {_short(after)}"]
    if tb == "object":
        for key in list(before) + [k for k in after if k not in before]:
            if (not path and key in IGNORED_TOP_LEVEL) or key in TIMING_KEYS:
                if ignored is not None:
                    ignored.add(key)
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                diffs.append(f"{sub}: removed (was {_short(before[key])})")
            elif key not in before:
                diffs.append(f"{sub}: added ({_short(after[key])})")
            else:
                diffs += compare_json(before[key], after[key], sub, ignored)
        return diffs
    if tb == "array":
        if len(before) != len(after):
            diffs.append(f"{where}: length {len(before)} -> {len(after)}")
        for i, (b, a) in enumerate(zip(before, after, strict=False)):
            diffs += compare_json(b, a, f"{path}[{i}]", ignored)
        return diffs
    if tb == "float" and math.isnan(before) and math.isnan(after):
        return []
    if before != after:
        diffs.append(f"{where}: {_short(before)} -> {_short(after)}")
    return diffs


def compare_arrays(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    """Differences between two examples files' arrays (name -> array): names, dtypes, shapes and
    values, exactly; NaN equals NaN (in float and complex arrays)."""
    diffs: list[str] = []
    for name in list(before) + [k for k in after if k not in before]:
        if name not in after:
            diffs.append(f"npz[{name}]: removed ({before[name].dtype} {before[name].shape})")
            continue
        if name not in before:
            diffs.append(f"npz[{name}]: added ({after[name].dtype} {after[name].shape})")
            continue
        b, a = before[name], after[name]
        if b.dtype != a.dtype:
            diffs.append(f"npz[{name}]: dtype {b.dtype} -> {a.dtype}")
            continue
        if b.shape != a.shape:
            diffs.append(f"npz[{name}]: shape {b.shape} -> {a.shape}")
            continue
        if b.dtype.kind in "fc":
            differ = ~((b == a) | (np.isnan(b) & np.isnan(a)))
        else:
            differ = b != a
        differ = np.asarray(differ)
        if differ.any():
            first = tuple(int(i) for i in np.argwhere(differ)[0]) if differ.ndim else ()
            idx = first[0] if len(first) == 1 else first
            diffs.append(f"npz[{name}]: {int(differ.sum())} of {differ.size} values differ "
                         f"(first at {idx}: {b[first].tolist()!r} -> {a[first].tolist()!r})")
    return diffs


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``; object arrays are refused (never unpickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def compare_outputs(before_json: Path, after_json: Path) -> tuple[list[str], set[str]]:
    """Compare two evaluations' outputs: the records and the ``<id>.examples.npz`` beside them.

    Returns (differences, names of the keys ignored)."""
    ignored: set[str] = set()
    rec_b = json.loads(before_json.read_text())
    rec_a = json.loads(after_json.read_text())
    diffs = compare_json(rec_b, rec_a, ignored=ignored)
    npz_b, npz_a = examples_path(before_json), examples_path(after_json)
    if npz_b.is_file() != npz_a.is_file():
        diffs.append(f"examples file: {'only before' if npz_b.is_file() else 'only after'} wrote one")
    elif npz_b.is_file():
        diffs += compare_arrays(load_npz(npz_b), load_npz(npz_a))
    return diffs, ignored


def examples_path(record: Path) -> Path:
    return record.with_name(record.name.removesuffix(".json") + ".examples.npz")


# --------------------------------------------------------------------------- running


@dataclass
class Tree:
    label: str      # "before" or "after"
    ref: str        # as given
    desc: str       # ref and commit, for the report
    path: Path


@dataclass
class Run:
    sub_id: str
    tree: Tree
    out: Path
    rc: int | None = None
    seconds: float = 0.0
    log: Path | None = None


@dataclass
class Row:
    sub_id: str
    n: int
    stages: str = ""
    diffs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)
    seconds: list[str] = field(default_factory=list)


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def describe(ref: str) -> str:
    if ref == WORKTREE:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"WORKTREE (HEAD {head}{', with uncommitted changes' if dirty else ''})"
    sha = git("rev-parse", "--short", "--verify", f"{ref}^{{commit}}")
    subject = git("log", "-1", "--format=%s", sha)
    return f"{ref} ({sha}: {subject[:60]})"


def shared_dir() -> Path | None:
    """The maintainers' ../shared beside the checkout (for a linked worktree: beside the main one)."""
    common = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir"))
    for cand in (REPO.parent / "shared", common.parent.parent / "shared"):
        if cand.is_dir():
            return cand.resolve()
    return None


def make_tree(label: str, ref: str, root: Path, shared: Path | None) -> Tree:
    desc = describe(ref)  # also checks that the ref names a commit
    if ref == WORKTREE:
        return Tree(label, ref, desc, REPO)
    path = root / "trees" / label
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared is not None and not (path.parent / "shared").exists():
        (path.parent / "shared").symlink_to(shared)  # ../shared beside each temporary checkout
    git("worktree", "add", "--detach", "--quiet", str(path), ref)
    return Tree(label, ref, desc, path)


def child_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    return env


def check_import(tree: Tree) -> None:
    """The child processes must run this tree's harness, not the installed one."""
    out = subprocess.run([sys.executable, "-c", "import harness, os; print(os.path.realpath(harness.__file__))"],
                         cwd=tree.path, env=child_env(tree.path), capture_output=True, text=True)
    got = Path(out.stdout.strip() or "?")
    if out.returncode != 0 or tree.path.resolve() not in got.parents:
        sys.exit(f"error: {tree.desc}: python -m harness would not run {tree.path}/harness (got {got})")


def submission_files(tree: Path, patterns: Iterable[str]) -> dict[str, Path]:
    """id (the folder name) -> submission.yaml under ``tree``, for the patterns relative to the repo."""
    found: dict[str, Path] = {}
    for pat in patterns:
        p = Path(pat)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(REPO)
            except ValueError:
                sys.exit(f"error: --submissions {pat}: not inside {REPO}")
        for hit in sorted(glob.glob(str(tree / p))):
            hp = Path(hit)
            if hp.is_dir():
                hp = hp / "submission.yaml"
            if hp.is_file():
                found[hp.parent.name] = hp
    return found


def default_n(sub: Path) -> int:
    import yaml  # the bundled submissions are the repository's own files, not a stranger's

    try:
        dataset = str((yaml.safe_load(sub.read_text()) or {}).get("dataset", ""))
    except (OSError, yaml.YAMLError, AttributeError):
        dataset = ""
    return DEFAULT_N.get(dataset, DEFAULT_N_OTHER)


def eval_command(sub: Path, tree: Path, out: Path, n: int, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "harness", "eval", str(sub.relative_to(tree)), "--n-examples", str(n),
           "--out", str(out), "--no-progress", "--device", args.device, "--sandbox", "worker", "--restart"]
    if args.only:
        cmd += ["--only", args.only]
    if args.data_dir:
        cmd += ["--data-dir", str(Path(args.data_dir).resolve())]
    return cmd


def run_one(run: Run, sub: Path, n: int, args: argparse.Namespace, progress) -> Run:
    run.out.parent.mkdir(parents=True, exist_ok=True)
    run.log = run.out.with_suffix(".log")
    cmd = eval_command(sub, run.tree.path, run.out, n, args)
    progress(f"start  {run.tree.label:<6} {run.sub_id} (N={n})")
    t0 = time.perf_counter()
    with open(run.log, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        try:
            run.rc = subprocess.run(cmd, cwd=run.tree.path, env=child_env(run.tree.path), stdout=log,
                                    stderr=subprocess.STDOUT, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            run.rc = 124
            log.write(f"\ncompare_records: killed after --timeout {args.timeout} s\n")
    run.seconds = time.perf_counter() - t0
    progress(f"done   {run.tree.label:<6} {run.sub_id} in {run.seconds:.1f} s"
             + ("" if run.rc == 0 else f" (exit {run.rc})"))
    return run


def last_line(log: Path | None) -> str:
    # the harness prints its own errors as one line (``error: ...``, through harness.errors.one_line)
    if log is None or not log.is_file():
        return "no output"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help=f"git ref, or {WORKTREE} (this checkout as it is)")
    ap.add_argument("--after", required=True, help=f"git ref, or {WORKTREE} (this checkout as it is)")
    ap.add_argument("--n-examples", type=int, default=None,
                    help=f"examples per submission (default per dataset: {DEFAULT_N}, else {DEFAULT_N_OTHER})")
    ap.add_argument("--submissions", nargs="+", default=["submissions/*/submission.yaml"],
                    help="submission.yaml paths or globs, relative to the repository (default: all bundled)")
    ap.add_argument("--only", default=None, help="comma-separated stages, passed to harness eval --only")
    ap.add_argument("--data-dir", default=None, help="passed to harness eval --data-dir (default: bundled data)")
    ap.add_argument("--device", default="cpu", help="passed to harness eval --device (default cpu)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write records, examples files and logs to this new (or empty) folder and keep them")
    ap.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="evaluations at a time, one thread each (default: min(2, CPUs))")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per evaluation (default 1800)")
    args = ap.parse_args(argv)
    if args.n_examples is not None and args.n_examples < 1:
        ap.error("--n-examples must be at least 1")
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.keep is not None and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        ap.error(f"--keep {args.keep}: must be a new or empty folder")

    t_start = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="compare-records-")
    root = Path(tmp.name)
    outdir = args.keep.resolve() if args.keep is not None else root / "out"
    shared = shared_dir()
    trees: list[Tree] = []
    try:
        for label, ref in (("before", args.before), ("after", args.after)):
            try:
                trees.append(make_tree(label, ref, root, shared))
            except subprocess.CalledProcessError as e:
                lines = (e.stderr or "").strip().splitlines() or ["git failed"]
                sys.exit(f"error: --{label} {ref}: {lines[-1]}")
        for t in trees:
            check_import(t)
        subs = [submission_files(t.path, args.submissions) for t in trees]
        ids = sorted(set(subs[0]) | set(subs[1]))
        if not ids:
            sys.exit(f"error: no submission matches {' '.join(args.submissions)}")
        rows: dict[str, Row] = {}
        jobs: list[tuple[Run, Path, int]] = []
        for sid in ids:
            ref_sub = subs[1].get(sid) or subs[0][sid]
            n = args.n_examples or default_n(ref_sub)
            rows[sid] = Row(sid, n)
            for t, s in zip(trees, subs, strict=True):
                run = Run(sid, t, outdir / t.label / f"{sid}.json")
                if sid in s:
                    jobs.append((run, s[sid], n))
                else:
                    rows[sid].failures.append(f"{t.label}: no {sid} in {t.desc}")
        progress(f"{len(jobs)} evaluations, {args.jobs} at a time; outputs in {outdir}")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(lambda j: run_one(j[0], j[1], j[2], args, progress), jobs))
        by: dict[tuple[str, str], Run] = {(r.sub_id, r.tree.label): r for r in done}
        for sid, row in rows.items():
            pair = [by.get((sid, t.label)) for t in trees]
            row.seconds = [f"{r.seconds:.0f}" if r is not None else "-" for r in pair]
            for r in pair:
                if r is not None and r.rc != 0:
                    row.failures.append(f"{r.tree.label}: harness eval exit {r.rc}: {last_line(r.log)}")
                elif r is not None and not r.out.is_file():
                    row.failures.append(f"{r.tree.label}: harness eval wrote no {r.out.name}: {last_line(r.log)}")
            if row.failures or None in pair:
                continue
            try:
                row.diffs, row.ignored = compare_outputs(pair[0].out, pair[1].out)
                rec = json.loads(pair[1].out.read_text())
                row.stages = ",".join(rec.get("stages") or []) if isinstance(rec, dict) else ""
            except (OSError, ValueError) as e:
                row.failures.append(f"reading the outputs: {type(e).__name__}: {e}")
    finally:
        for t in trees:
            if t.ref != WORKTREE:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(t.path)],
                               check=False, capture_output=True)
        tmp.cleanup()

    report(trees, rows, args, outdir, time.perf_counter() - t_start)
    return 1 if any(r.diffs or r.failures for r in rows.values()) else 0


def report(trees: list[Tree], rows: dict[str, Row], args: argparse.Namespace, outdir: Path, total: float) -> None:
    from tabulate import tabulate

    print(f"before: {trees[0].desc}")
    print(f"after:  {trees[1].desc}")
    print(f"harness eval --device {args.device} --sandbox worker --no-progress --restart"
          + (f" --only {args.only}" if args.only else "") + (f" --data-dir {args.data_dir}" if args.data_dir else "")
          + f"; OMP_NUM_THREADS=1; {args.jobs} at a time; {total:.0f} s in all")
    print("compared: every record field except the top-level " + ", ".join(sorted(IGNORED_TOP_LEVEL))
          + " and the timing keys " + ", ".join(sorted(TIMING_KEYS)) + "; every array of the examples files\n")
    table = []
    for r in rows.values():
        if r.failures:
            result = "FAILED: " + r.failures[0]
        elif r.diffs:
            shown = "; ".join(r.diffs[:TABLE_DIFFS])
            result = f"DIFFERS ({len(r.diffs)}): {shown}" + (" ..." if len(r.diffs) > TABLE_DIFFS else "")
        else:
            result = "identical"
        table.append([r.sub_id, r.stages, r.n, "/".join(r.seconds), result])
    print(tabulate(table, headers=["submission", "stages", "N", "s (before/after)", "result"], tablefmt="github",
                   disable_numparse=True))
    for r in rows.values():
        if r.failures or len(r.diffs) > TABLE_DIFFS:
            print(f"\n{r.sub_id}:")
            for line in r.failures + r.diffs:
                print(f"  {line}")
    ignored = sorted(set().union(*(r.ignored for r in rows.values())))
    print(f"\nkeys skipped in these records: {', '.join(ignored) or 'none'}")
    if args.keep is not None:
        print(f"outputs kept in {outdir}")
    n_bad = sum(bool(r.diffs or r.failures) for r in rows.values())
    print(f"{len(rows) - n_bad} of {len(rows)} submissions identical" + (f", {n_bad} not" if n_bad else ""))


if __name__ == "__main__":
    sys.exit(main())
