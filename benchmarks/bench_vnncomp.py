"""Benchmark: ``harness verify`` over a VNN-COMP 2021 benchmark folder, with the competition's timeouts.

    python benchmarks/bench_vnncomp.py [--benchmark mnistfc] [--quick | --instances N] [--jobs J]

- the benchmark comes from a local snapshot of ``stanleybak/vnncomp2021`` (``--repo``: a bare git
  directory, extracted with ``git archive`` into a scratch folder; or ``--dir``: an extracted
  ``benchmarks/<name>`` folder); no network;
- each instance of ``<name>_instances.csv`` (network, property, timeout in seconds) runs as one
  ``python -m harness verify NET PROP --timeout T --out RESULT`` process (the sandboxed worker and
  all), ``--jobs`` of them at a time (default: one per CPU core, ``--threads`` each);
- the known outcome of an instance comes from the competition's results
  (``stanleybak/vnncomp2021_results``, ``results_csv/<tool>.csv``): the tools that answered
  (holds/unsat or violated/sat) agree; instances where they disagree or none answered are unknown.
  ``--ignore-tools`` (default RPM) leaves tools out: in 2021 RPM answered ``violated`` on 71 of the
  90 mnistfc instances, among them instances that eight other tools proved (it gave no
  counterexamples; 2021 did not ask for them), so with it no instance would count as known;
- it prints the verified (unsat), falsified (sat), timeout, unknown and error counts, every wrong
  answer against a known outcome, the median wall-clock seconds per solved instance (start-up and
  sandbox included, as VNN-COMP counts them), and alpha,beta-CROWN's counts and median on the same
  instances from its results file (the reference: it ran on a GPU in 2021), as ratios.

``--quick`` runs 6 instances spread over the folder with the competition's timeouts capped at 60 s.
Figures depend on the machine: run it alone for timings.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MIRROR = Path(__file__).resolve().parents[2] / ".mirror"  # fetched snapshots, beside the checkout (like ../shared)
REPO = MIRROR / "stanleybak+vnncomp2021" / "repo"
RESULTS = MIRROR / "stanleybak+vnncomp2021_results" / "repo"
ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TOOL = "a-b-CROWN"
_WORD = {"holds": "unsat", "unsat": "unsat", "violated": "sat", "sat": "sat"}


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def extract(repo: Path, name: str, into: Path) -> Path:
    """``benchmarks/<name>`` of the bare repository ``repo``, extracted under ``into``."""
    data = _git(repo, "archive", "HEAD", f"benchmarks/{name}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
    return into / "benchmarks" / name


def instances(folder: Path, name: str) -> list[tuple[str, str, float]]:
    path = folder / f"{name}_instances.csv"
    if not path.is_file():
        found = sorted(folder.glob("*instances.csv"))
        if not found:
            raise SystemExit(f"error: no instances csv in {folder}")
        path = found[0]
    out = []
    for row in csv.reader(path.read_text().splitlines()):
        if len(row) >= 3 and row[0].strip():
            out.append((row[0].strip(), row[1].strip(), float(row[2])))
    return out


def _key(name: str, onnx: str, vnnlib: str) -> tuple[str, str]:
    def norm(p: str) -> str:
        p = p.strip().removeprefix("./")
        return p.removeprefix(f"benchmarks/{name}/")
    return norm(onnx), norm(vnnlib)


def known_outcomes(results: Path, name: str, ignore: frozenset = frozenset()) -> tuple[dict, dict, int]:
    """({(onnx, vnnlib): 'unsat' | 'sat'} where the tools that answered (but those in ``ignore``) agree,
    {(onnx, vnnlib): (word, seconds)} of the reference tool, the number of instances where they disagree)."""
    answers: dict[tuple[str, str], set[str]] = {}
    ref: dict[tuple[str, str], tuple[str, float]] = {}
    if not results.exists():
        return {}, {}, 0
    files = [f for f in _git(results, "ls-tree", "--name-only", "HEAD", "results_csv/").decode().split()
             if f.endswith(".csv")]
    for f in files:
        tool = Path(f).stem
        for row in csv.reader(io.StringIO(_git(results, "show", f"HEAD:{f}").decode("utf-8", "replace"))):
            if len(row) < 6 or row[0].strip() != name:
                continue
            key = _key(name, row[1], row[2])
            word = _WORD.get(row[4].strip().lower())
            if word is not None and tool not in ignore:
                answers.setdefault(key, set()).add(word)
            if tool == REFERENCE_TOOL:
                try:
                    ref[key] = (word or row[4].strip().lower(), float(row[3]) + float(row[5]))
                except ValueError:
                    ref[key] = (word or row[4].strip().lower(), float("nan"))
    disagree = sum(len(v) > 1 for v in answers.values())
    return {k: next(iter(v)) for k, v in answers.items() if len(v) == 1}, ref, disagree


def _network(folder: Path, onnx: str, scratch: Path) -> Path:
    p = folder / onnx
    if p.is_file():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.is_file():  # later competitions ship the networks compressed
        out = scratch / (p.name.replace("/", "_"))
        if not out.exists():
            with gzip.open(gz) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return out
    return p


def run_one(folder: Path, scratch: Path, inst, threads: int, extra: list[str]) -> dict:
    onnx, vnnlib, timeout = inst
    net, prop = _network(folder, onnx, scratch), folder / vnnlib
    out = scratch / f"result_{abs(hash((onnx, vnnlib)))}.txt"
    cmd = [sys.executable, "-m", "harness", "verify", str(net), str(prop), "--timeout", f"{timeout:g}",
           "--out", str(out), "--threads", str(threads), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads)}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 120)
        word = (proc.stdout.strip().splitlines() or ["error"])[-1]
        note = (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        word, note = "timeout", "killed by the benchmark"
    seconds = time.monotonic() - t0
    if word not in ("unsat", "sat", "timeout", "unknown", "error"):
        word, note = "error", f"unexpected output {word[:60]!r}"
    if word in ("unsat", "sat") and seconds > timeout:
        note += f" (answered after the {timeout:g} s timeout: counted as timeout)"
        word = "timeout"
    text = out.read_text() if out.is_file() else ""
    if word != "error" and text.split("\n", 1)[0].strip() != word:
        word, note = "error", f"the result file says {text[:20]!r}, stdout {word!r}"
    return {"onnx": onnx, "vnnlib": vnnlib, "timeout": timeout, "word": word, "seconds": seconds, "note": note}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", default="mnistfc", metavar="NAME", help="folder under benchmarks/ (default mnistfc)")
    ap.add_argument("--repo", type=Path, default=REPO, help="bare git dir of stanleybak/vnncomp2021")
    ap.add_argument("--results", type=Path, default=RESULTS, help="bare git dir of stanleybak/vnncomp2021_results")
    ap.add_argument("--dir", type=Path, help="an extracted benchmarks/<NAME> folder (instead of --repo)")
    ap.add_argument("--quick", action="store_true", help="6 instances spread over the folder, timeouts capped at 60 s")
    ap.add_argument("--instances", type=int, metavar="N", help="the first N instances (spread with --quick)")
    ap.add_argument("--max-timeout", type=float, metavar="S", help="cap the competition's timeouts (default: none)")
    ap.add_argument("--jobs", type=int, default=None, help="instances at a time (default: CPU cores)")
    ap.add_argument("--threads", type=int, default=1, help="threads per instance (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ignore-tools", default="RPM", help="comma-separated tools whose answers do not count "
                    "towards the known outcomes (default RPM, see above; '' for none)")
    ap.add_argument("--csv", type=Path, help="write one row per instance here")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    jobs = args.jobs or max(1, cores // max(1, args.threads))
    scratch = Path(tempfile.mkdtemp(prefix="bench-vnncomp-"))
    try:
        folder = args.dir if args.dir is not None else extract(args.repo, args.benchmark, scratch)
        todo = instances(folder, args.benchmark)
        n_all = len(todo)
        n = args.instances if args.instances is not None else (6 if args.quick else n_all)
        if args.quick or (args.instances is not None and n < n_all):
            step = max(1, n_all // max(1, n)) if args.quick else 1
            todo = todo[::step][:n]
        cap = args.max_timeout if args.max_timeout is not None else (60.0 if args.quick else None)
        if cap is not None:
            todo = [(a, b, min(t, cap)) for a, b, t in todo]
        ignore = frozenset(t.strip() for t in args.ignore_tools.split(",") if t.strip())
        known, ref, disagree = known_outcomes(args.results, args.benchmark, ignore)
        commit = _git(args.repo, "rev-parse", "HEAD").decode().strip() if args.dir is None else "(--dir)"
        print(f"bench_vnncomp: {args.benchmark}, {len(todo)} of {n_all} instances, {jobs} at a time x {args.threads} "
              f"thread(s), {cores} CPU cores, device {args.device}; vnncomp2021 {commit[:12]}; "
              f"python {platform.python_version()}; timeouts {'capped at %g s' % cap if cap else 'as the competition'}",
              flush=True)
        extra = ["--device", args.device]
        done = []
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futs = [pool.submit(run_one, folder, scratch, inst, args.threads, extra) for inst in todo]
            for i, f in enumerate(futs):
                r = f.result()
                done.append(r)
                k = known.get(_key(args.benchmark, r["onnx"], r["vnnlib"]), "?")
                print(f"[{i + 1}/{len(todo)}] {r['onnx']} {r['vnnlib']}: {r['word']} in {r['seconds']:.1f} s "
                      f"(timeout {r['timeout']:g}, known {k}) {r['note'][:160]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = {w: sum(r["word"] == w for r in done) for w in ("unsat", "sat", "timeout", "unknown", "error")}
    wrong = [r for r in done if r["word"] in ("unsat", "sat")
             and known.get(_key(args.benchmark, r["onnx"], r["vnnlib"]), r["word"]) != r["word"]]
    solved = [r["seconds"] for r in done if r["word"] in ("unsat", "sat")]
    n_known = sum(_key(args.benchmark, r["onnx"], r["vnnlib"]) in known for r in done)
    print(f"verified (unsat) {counts['unsat']}, falsified (sat) {counts['sat']}, timeout {counts['timeout']}, "
          f"unknown {counts['unknown']}, error {counts['error']} of {len(done)} "
          f"({n_known} with a known outcome; the 2021 tools, without {', '.join(sorted(ignore)) or 'none'}, "
          f"disagree on {disagree} instances of {args.benchmark})")
    print(f"wrong answers: {len(wrong)}")
    for r in wrong:
        print(f"  WRONG {r['onnx']} {r['vnnlib']}: said {r['word']}, known "
              f"{known[_key(args.benchmark, r['onnx'], r['vnnlib'])]}")
    med = statistics.median(solved) if solved else float("nan")
    print(f"median seconds per solved instance: {med:.2f} (wall clock, start-up and sandbox included)")
    refs = [ref.get(_key(args.benchmark, r["onnx"], r["vnnlib"])) for r in done]
    if any(refs):
        rv = sum(1 for x in refs if x and x[0] == "unsat")
        rf = sum(1 for x in refs if x and x[0] == "sat")
        rsolved = [x[1] for x in refs if x and x[0] in ("unsat", "sat")]
        rmed = statistics.median(rsolved) if rsolved else float("nan")
        print(f"{REFERENCE_TOOL} (VNN-COMP 2021, its machine) on the same instances: verified {rv}, falsified {rf}, "
              f"median {rmed:.2f} s; ratios: verified {counts['unsat'] / rv if rv else float('nan'):.2f}, "
              f"falsified {counts['sat'] / rf if rf else float('nan'):.2f}, "
              f"median time {med / rmed if rmed else float('nan'):.2f}")
    if args.csv is not None:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(done[0]) if done else ["onnx"])
            w.writeheader()
            w.writerows(done)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
