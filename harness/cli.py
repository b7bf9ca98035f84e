"""The ``harness`` command line: eval, verify, validate, schema, fetch, pr-check, audit, attack-check, sign, keygen,
leaderboard build / import-robustbench."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

from harness.core.errors import HarnessError, one_line

DATA_DIR_HELP = ("a local copy of the dataset: MNIST/CIFAR in torchvision's folder layout, ImageNet as "
                 "DIR/val/<wnid>/<file>.JPEG, TinyImageNet's official folder (DIR/wnids.txt, DIR/val/...)")


def summary_table(rec) -> str:
    """The record's figures as a text table, in the leaderboard's number format (leaderboard/fmt.py:
    accuracies with their 95% interval, compute with SI prefixes)."""
    from tabulate import tabulate

    from leaderboard.fmt import pct, pct_ci, si

    rows = [["clean accuracy", pct_ci(rec.clean_accuracy, rec.clean_accuracy_ci95)]]
    if rec.autoattack is not None:
        rows.append([f"AutoAttack accuracy ({one_line(rec.autoattack.version, 40)})", pct_ci(rec.robust_accuracy,
                                                                               rec.robust_accuracy_ci95)])
        for a, v in rec.autoattack.accuracy_after.items():
            if a != "clean":
                rows.append([f"  after {one_line(a, 40)}", pct(v)])
        for msg in rec.autoattack.checks:
            rows.append(["  AutoAttack check", one_line(msg, 90)])
    for m, c in (rec.certified or {}).items():
        tag = " (probabilistic)" if c.probabilistic else ""
        rows.append([f"certified accuracy, {one_line(m, 40)}{tag}",
                     pct_ci(c.certified_accuracy, c.certified_accuracy_ci95)])
        rows.append([f"ACR, {one_line(m, 40)}", f"{c.acr:.4f} ({c.acr_percent:.1f}% of eps_max {c.eps_max:g})"])
        d = c.details or {}
        if all(isinstance(d.get(k), int) for k in ("verified", "falsified", "unknown")):  # a verdict per example
            rows.append([f"  verdicts, {one_line(m, 40)}",
                         f"{d['verified']} verified, {d['falsified']} falsified, {d['unknown']} unknown"])
            if isinstance(d.get("robust_upper_bound"), float):
                rows.append(["  robust <= clean - (AA U falsified)", pct(d["robust_upper_bound"])])
            if isinstance(d.get("exact_robust_accuracy"), float):
                rows.append(["  exact robust accuracy", pct(d["exact_robust_accuracy"]) + " (every example decided)"])
            elif d.get("sandwich_closed") is True:
                rows.append(["  exact robust accuracy", pct(c.certified_accuracy)
                             + " (certified = the upper bound: AutoAttack broke the unknown ones)"])
    if rec.certify_skipped:
        rows.append(["certification skipped", one_line(rec.certify_skipped, 90)])
    if rec.diagnostics:
        flags = [f"{one_line(f.name, 80)} ({f.severity})" for f in rec.diagnostic_flags()]
        rows.append(["diagnostic flags", ", ".join(flags) if flags else "none"])
    if rec.params is not None:
        rows.append(["parameters", si(rec.params)])
        rows.append(["inference FLOPs", f"{si(rec.inference_flops)} (1 per multiply-add, fvcore)"])
        if rec.flops_skipped_ops:
            skipped = ", ".join(f"{k} x{v}" for k, v in rec.flops_skipped_ops.items())
            rows.append(["  ops fvcore skipped", one_line(skipped, 300)])
    if rec.flops_error:
        rows.append(["  FLOPs not counted", one_line(rec.flops_error, 90)])
    if rec.training_flops is not None:
        rows.append(["training FLOPs", f"{si(rec.training_flops.value)} ({rec.training_flops.source})"])
    for stage, s in rec.provenance.stage_seconds.items():
        resumed = " (resumed)" if stage in rec.provenance.resumed_stages else ""
        rows.append([f"time: {one_line(stage, 40)}", f"{s:.1f} s{resumed}"])
    return tabulate(rows, headers=[f"{rec.submission_id} ({rec.n_examples} examples)", "value"], tablefmt="simple")


def _limit_flags(args: argparse.Namespace) -> tuple[int | None, float | None, float | None]:
    """The maintainer's caps given as flags (None: not given; memory 0: ``none``), checked: a NaN,
    infinite, negative or unparsable value is one line naming the flag (harness.core.settings)."""
    from harness.core.settings import parse_bytes, parse_seconds

    memory = None
    if args.memory_limit is not None:
        memory = parse_bytes(args.memory_limit, "--memory-limit", allow_none=True) or 0  # 0: no limit
    timeout = parse_seconds(args.stage_timeout, "--stage-timeout") if args.stage_timeout is not None else None
    cpu = parse_seconds(args.cpu_limit, "--cpu-limit") if args.cpu_limit is not None else None
    return memory, timeout, cpu


def _certify_budget_flag(args: argparse.Namespace) -> float | None:
    from harness.core.settings import parse_seconds

    value = getattr(args, "certify_budget", None)
    return None if value is None else parse_seconds(value, "--certify-budget")


def _write_result(out: str | None, text: str) -> None:
    if out is None:
        return
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"cannot write the result file {one_line(out, 300)}: {one_line(e.strerror or e, 100)}")


def cmd_verify(args: argparse.Namespace) -> int:
    """``harness verify NET.onnx PROP.vnnlib --timeout S [--out RESULT]``: one word on stdout (unsat, sat,
    timeout, unknown, error), the VNN-COMP result file at RESULT; an error is also one line on stderr."""
    from harness.core.settings import effective_limits, maintainer_caps, parse_bytes, parse_seconds

    try:
        timeout = parse_seconds(args.timeout, "--timeout")
        if not timeout > 0:
            raise HarnessError(f"--timeout must be > 0 seconds, got {one_line(args.timeout, 40)}")
        if args.threads is not None and not 1 <= args.threads <= 4096:
            raise HarnessError(f"--threads must be between 1 and 4096, got {args.threads}")
        check_device(args.device)
        memory = None
        if args.memory_limit is not None:
            memory = parse_bytes(args.memory_limit, "--memory-limit", allow_none=True) or 0
        limits = effective_limits(None, maintainer_caps(memory=memory))
        from harness.runner.verify import verify_instance

        res = verify_instance(args.onnx, args.vnnlib, timeout=timeout, device=args.device, threads=args.threads,
                              sandbox=args.sandbox, limits=limits, seed=args.seed)
    except HarnessError as e:
        try:
            _write_result(args.out, "error\n")
        except HarnessError:
            pass
        print("error")
        print(f"error: {one_line(e, 2000)}", file=sys.stderr)
        return 2
    _write_result(args.out, res.result_text())
    print(res.word)
    extra = f", {res.domains} domains" if res.domains else ""
    print(f"verify: {res.word} in {res.seconds:.2f} s ({res.cases} input box(es){extra}"
          f"{', decided by ' + one_line(res.decided_by, 40) if res.decided_by else ''})", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.runner.evaluate import evaluate

    from .stages import EvalOptions, select_stages
    from .stages.registry import STAGE_NAMES

    if args.only is not None and not args.only.replace(",", "").strip():
        raise HarnessError(f"--only names no stage; stages are {', '.join(STAGE_NAMES)}")
    stages = select_stages(args.only, args.skip)
    if not stages:
        raise HarnessError(f"--skip leaves no stage to run; stages are {', '.join(STAGE_NAMES)}")
    check_device(args.device)
    for flag, value in (("--train-data", args.train_data), ("--data-dir", args.data_dir)):
        if value is not None and not _exists(value, want_dir=flag == "--data-dir"):
            raise HarnessError(f"{flag} {one_line(value, 300)}: no such {'folder' if flag == '--data-dir' else 'file'}")
    submission = Path(args.submission)
    if _exists(args.submission, want_dir=True):  # a submission folder, as validate and fetch take
        submission = submission / "submission.yaml"
    memory, timeout, cpu = _limit_flags(args)
    opts = EvalOptions(device=args.device, batch_size=args.batch_size, n_examples=args.n_examples,
                       data_dir=Path(args.data_dir) if args.data_dir else None,
                       train_data=Path(args.train_data) if args.train_data else None, progress=show_progress(args),
                       sandbox=args.sandbox, trust_code=args.trust_code, memory_limit=memory,
                       stage_timeout=timeout, cpu_limit=cpu, certify_budget=_certify_budget_flag(args))
    command = "harness " + " ".join(shlex.quote(a) for a in args.argv)
    try:
        outcome = evaluate(submission, opts, stages=stages, out=Path(args.out) if args.out else None,
                           restart=args.restart, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages and attacks are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    if outcome is None:  # a torchrun rank other than 0: rank 0 writes the record and prints the table
        return 0
    print()
    print(summary_table(outcome.record))
    print(f"\nrecord:   {one_line(outcome.json_path, 1000)}\nexamples: {one_line(outcome.npz_path, 1000)}")
    return 0


DEVICE_FORMAT = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


def check_device(device: str) -> None:
    """``--device`` is auto, cpu, cuda or cuda:N of a visible CUDA device: one line otherwise (torch
    would raise on ``cuda:abc``, and fail late on ``cuda:7`` of a one-GPU machine)."""
    if not DEVICE_FORMAT.fullmatch(device):
        raise HarnessError(f"--device must be auto, cpu, cuda or cuda:N, got {one_line(repr(device), 60)}")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise HarnessError(f"--device {device} was asked for, but torch sees no CUDA device")
        if ":" in device and int(device.split(":")[1]) >= count:
            raise HarnessError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def _exists(path: str, *, want_dir: bool) -> bool:
    try:
        p = Path(path)
        return p.is_dir() if want_dir else p.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: not with --no-progress, and never into a log or a pipe."""
    return not getattr(args, "no_progress", False) and _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.submission.load import check_files, parse_submission

    bad = 0
    for path in args.paths:
        p = Path(path)
        try:
            if p.is_dir():
                p = p / "submission.yaml"
        except (OSError, ValueError):  # a NUL byte or an over-long name: parse_submission says so in one line
            pass
        try:
            sub, problems = parse_submission(p)
            if sub is not None:
                problems = check_files(sub)
        except HarnessError as e:
            problems = [str(e).removeprefix(f"{one_line(p)}: ")]
        where = one_line(p, 300)
        if problems:
            bad += 1
            for pr in problems:
                print(f"{where}: {pr}")
        else:
            print(f"{where}: ok")
    return 1 if bad else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.submission.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cache_dir_arg(args: argparse.Namespace) -> None:
    """--cache-dir applies to the whole process (and its children), as $ROBUST_FRONTIER_CACHE does."""
    if getattr(args, "cache_dir", None):
        from harness.submission.hosted import CACHE_ENV

        os.environ[CACHE_ENV] = str(Path(args.cache_dir).expanduser().resolve())


def cmd_fetch(args: argparse.Namespace) -> int:
    from harness.submission.hosted import cache_dir, fetch
    from harness.submission.load import parse_submission

    _cache_dir_arg(args)
    failed = 0
    for path in args.paths:
        p = Path(path)
        if p.is_dir():
            p = p / "submission.yaml"
        try:
            sub, problems = parse_submission(p)
            if sub is None:
                raise HarnessError(f"{problems[0]} (run `harness validate {p}`)")
            ck = sub.spec.model.checkpoint
            if ck.url is None:
                print(f"{p}: nothing to fetch (the checkpoint is a local file)")
                continue
            got, downloaded = fetch(ck.url, ck.sha256, progress=not args.no_progress, size_bytes=ck.size_bytes)
            print(f"{p}: {'downloaded and verified' if downloaded else 'already in the cache'}: {got}")
        except HarnessError as e:
            failed += 1
            print(f"error: {one_line(p, 300)}: {one_line(e)}", file=sys.stderr)
    if failed:
        print(f"(cache: {cache_dir()})", file=sys.stderr)
    return 2 if failed else 0


def cmd_pr_check(args: argparse.Namespace) -> int:
    import math

    from harness.review.prcheck import REMOVED_FLAGS, PRCheckOptions, run_pr_check

    _cache_dir_arg(args)
    if not (args.max_file_mb > 0 and math.isfinite(args.max_file_mb)):
        raise HarnessError("--max-file-mb must be a positive number")
    if not (args.max_forward_seconds > 0 and math.isfinite(args.max_forward_seconds)):
        raise HarnessError("--max-forward-seconds must be a positive number")
    for flag in REMOVED_FLAGS:
        if getattr(args, flag[2:].replace("-", "_"), None) is not None:
            print(f"note: pr-check no longer uses {flag}: it runs no evaluation and needs no dataset (the smoke "
                  "attack and the audit run in the trusted GPU job); ignored", file=sys.stderr)
    opts = PRCheckOptions(
        base=args.base, root=Path(args.root), max_file_mb=args.max_file_mb,
        allow_update=tuple(args.allow_update or ()), keep=Path(args.keep) if args.keep else None,
        progress=not args.no_progress, bars=not args.no_progress and sys.stderr.isatty(), sandbox=args.sandbox,
        max_forward_s=args.max_forward_seconds,
    )
    report = run_pr_check(opts)
    text = report.markdown()
    print(text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    if opts.keep is not None:
        opts.keep.mkdir(parents=True, exist_ok=True)
        (opts.keep / "pr-check.md").write_text(text + "\n", encoding="utf-8")
        (opts.keep / "pr-check.json").write_text(report.to_json() + "\n", encoding="utf-8")
    _print_problems(report.problems)
    return 0 if report.ok else 1


def _print_problems(problems: list[str]) -> None:
    """One line per problem on stderr; in GitHub Actions as an error annotation."""
    actions = os.environ.get("GITHUB_ACTIONS") == "true"
    for problem in problems:
        line = one_line(problem)
        if actions:
            print("::error title=pr-check::" + line.replace("%", "%25"), file=sys.stderr)
        else:
            print(f"problem: {line}", file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    from harness.review.audit import audit_record

    given = {k: v for k, v in (("max_broken_fraction", args.max_broken_fraction),
                               ("square_queries", args.square_queries)) if v is not None}
    res = audit_record(args.record, submission=args.submission, sample=args.sample, seed=args.seed,
                       device=args.device, data_dir=args.data_dir, batch_size=args.batch_size,
                       progress=not args.no_progress, **given)
    print(one_line(res.summary(), limit=20_000))
    for note in res.notes:
        print(f"note: {one_line(note)}")
    for problem in res.problems:
        print(f"problem: {one_line(problem)}", file=sys.stderr)
    return 0 if res.ok else 1


def cmd_attack_check(args: argparse.Namespace) -> int:
    from harness.review.attack_check import attack_check

    check_device(args.device)
    if args.data_dir is not None and not _exists(args.data_dir, want_dir=True):
        raise HarnessError(f"--data-dir {one_line(args.data_dir, 300)}: no such folder")
    command = "harness " + " ".join(shlex.quote(a) for a in args.argv)
    res = attack_check(args.attack, out=args.out, record=args.record, device=args.device, data_dir=args.data_dir,
                       sandbox=args.sandbox, batch_size=args.batch_size, command=command)
    print(one_line(res.summary(), 2000))
    for note in res.notes:
        print(f"note: {one_line(note)}")
    print(f"attack record: {one_line(res.out, 1000)}")
    return 0


# --- signing (harness.record.signing) -----------------------------------------------------------------
def cmd_sign(args: argparse.Namespace) -> int:
    from harness.record.signing import load_signing_key, sign_record

    key = load_signing_key(args.key)
    failed = 0
    for path in args.records:
        where = one_line(path, 300)
        try:
            res = sign_record(Path(path), key)
        except HarnessError as e:
            failed += 1
            msg = str(e)
            print(f"error: {one_line(msg if msg.startswith(where) else f'{where}: {msg}')}", file=sys.stderr)
            continue
        if res.status == "unchanged":
            print(f"{where}: already signed by key {res.key_id}; unchanged")
        elif res.status == "re-signed":
            prev = f" (was key {res.previous_key_id})" if res.previous_key_id else ""
            print(f"{where}: signed again by key {res.key_id}{prev}")
        else:
            print(f"{where}: signed by key {res.key_id}")
    return 2 if failed else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from harness.record.signing import keygen

    priv, pub, kid = keygen(Path(args.out), args.name)
    print(f"key {kid}\nprivate key: {one_line(priv, 300)} (mode 0600; keep it out of the repository)\n"
          f"public key:  {one_line(pub, 300)}\n"
          f"sign with `harness sign RECORD.json --key {one_line(priv, 300)}`; show your records with "
          f"`harness leaderboard build --local --trust-key {one_line(pub, 300)}`")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard.build import build_leaderboard

    out = build_leaderboard(Path(args.root), Path(args.out) if args.out else None, local=args.local,
                            trust_keys=[Path(k) for k in args.trust_key or ()])
    print(f"{'local board' if args.local else 'site'} written to {out} (open {out / 'index.html'})")
    return 0


def _count(limit: int):
    """An argparse type: an integer in [1, limit] (argparse prints the one-line error)."""
    def parse(text: str) -> int:
        try:
            v = int(text) if len(text) <= 30 else None
        except ValueError:
            v = None
        if v is None or not 1 <= v <= limit:
            raise argparse.ArgumentTypeError(f"must be an integer in [1, {limit}], got {text[:40]!r}")
        return v
    return parse


def cmd_import_robustbench(args: argparse.Namespace) -> int:
    from leaderboard.importers.robustbench import import_robustbench, main_log

    out = Path(args.out) if args.out else Path(args.root).resolve() / "leaderboard" / "reported.csv"
    rows = import_robustbench(Path(args.path), out, count=not args.no_count, recount=args.recount,
                              log=None if args.quiet else main_log, recount_ops=args.recount_op or ())
    counted = sum(1 for r in rows if r["inference_flops"])
    print(f"wrote {len(rows)} reported rows ({counted} with counted parameters and FLOPs) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="robust-frontier evaluation harness")
    sub = p.add_subparsers(dest="command", required=True)

    from .stages.registry import STAGE_NAMES, help_text

    e = sub.add_parser("eval", help="evaluate a submission and write its result record",
                       epilog="stages:\n" + help_text(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("submission", help="path to submissions/<id>/submission.yaml")
    e.add_argument("--n-examples", type=_count(10**8), help="first N test points (default: the submission's)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    e.add_argument("--batch-size", type=_count(100_000), help="default: the submission's evaluation.batch_size")
    e.add_argument("--data-dir", help=DATA_DIR_HELP)
    e.add_argument("--train-data", help="an .npz of training images (uint8 x, y) for the train/test "
                   "local-Lipschitz gap (default: the training split of --data-dir, if given)")
    e.add_argument("--out", help="record path, a regular file or a new path (default: the scratch path "
                   "leaderboard/results/local/<id>.json); a run with fewer examples or stages than the record "
                   "there writes <dir>/.partial/<id>.json instead")
    e.add_argument("--only", help=f"comma-separated stages: {','.join(STAGE_NAMES)}")
    e.add_argument("--skip", help="comma-separated stages to skip")
    e.add_argument("--restart", action="store_true", help="drop the saved state instead of resuming")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    from harness.core import settings as lim_defaults

    lim = e.add_argument_group(
        "sandbox", "The model is loaded and run only in a worker process: no network (where the OS allows), "
        "and memory, CPU and wall-clock limits per stage. These flags (else the runner's environment: "
        "ROBUST_FRONTIER_MAX_MEMORY, ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S, ROBUST_FRONTIER_MAX_CPU_S) are the "
        "maintainer's caps; a submission's evaluation.limits can only lower them.")
    lim.add_argument("--sandbox", choices=("worker", "bwrap"), default="worker",
                     help="worker (default), or bwrap: the worker inside a bubblewrap jail that sees the "
                     "submission, the data and Python read-only and may write only the state folder")
    lim.add_argument("--memory-limit", metavar="SIZE",
                     help="memory the worker may add beyond its libraries, e.g. 8G "
                     f"(default {lim_defaults.DEFAULT_MAX_MEMORY // 2**30}G); 'none' for no cap")
    lim.add_argument("--stage-timeout", metavar="S",
                     help=f"wall-clock seconds per stage (default {lim_defaults.DEFAULT_MAX_STAGE_TIMEOUT_S:g})")
    lim.add_argument("--cpu-limit", metavar="S",
                     help="CPU seconds per stage, all threads (default: the wall-clock limit x the CPU cores)")
    lim.add_argument("--certify-budget", metavar="S",
                     help="cap on the complete certifier's seconds per example (default "
                          "$ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S or 600); a submission's evaluation.certify_budget_s "
                          "above it is lowered to it")
    lim.add_argument("--trust-code", action="store_true",
                     help="UNSAFE: allow TorchScript checkpoints, which can read and write any file; "
                     "only for your own models, never for a submission from someone else")
    e.set_defaults(func=cmd_eval)

    vf = sub.add_parser(
        "verify", help="verify a VNN-LIB property of an ONNX network (VNN-COMP interface): unsat, sat, timeout, ...",
        description="Prove or refute a VNN-LIB 1.0 property of an ONNX network. The network is loaded and run "
                    "only in the sandboxed worker, as a submission's. Prints one word (unsat, sat, timeout, unknown "
                    "or error) and writes the VNN-COMP result file (after sat: the counterexample).")
    vf.add_argument("onnx", metavar="NET.onnx")
    vf.add_argument("vnnlib", metavar="PROP.vnnlib")
    vf.add_argument("--timeout", required=True, metavar="S", help="wall-clock seconds for the whole instance")
    vf.add_argument("--out", metavar="RESULT", help="the result file to write (VNN-COMP's results file)")
    vf.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    vf.add_argument("--threads", type=int, metavar="N", help="CPU threads for the bound computations")
    vf.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    vf.add_argument("--sandbox", choices=("worker", "bwrap"), default="worker",
                    help="the worker's sandbox, as for harness eval (default worker)")
    vf.add_argument("--memory-limit", metavar="SIZE", help="maintainers: cap on the worker's memory (default "
                    "$ROBUST_FRONTIER_MAX_MEMORY or 16G; none: no cap)")
    # the model runs in the worker: no robustbench / autoattack alias here (torch is still imported)
    vf.set_defaults(func=cmd_verify, torch_free=True)

    v = sub.add_parser("validate", help="check submissions without running a model")
    v.add_argument("paths", nargs="+", help="submission.yaml files or their folders")
    v.set_defaults(func=cmd_validate, torch_free=True)

    s = sub.add_parser("schema", help="print the submission JSON Schema")
    s.set_defaults(func=cmd_schema, torch_free=True)

    f = sub.add_parser("fetch", help="download hosted checkpoints (model.checkpoint.url) into the local cache")
    f.add_argument("paths", nargs="+", help="submission.yaml files or their folders")
    f.add_argument("--cache-dir", help="cache folder (default $ROBUST_FRONTIER_CACHE or ~/.cache/robust-frontier)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fetch)

    from harness.review import prcheck as prc

    pc = sub.add_parser("pr-check", help="check a pull request's submission on a CPU, with no dataset (what CI runs "
                        "on a PR)")
    pc.add_argument("--base", required=True, help="git ref of the branch the PR targets (e.g. origin/main)")
    pc.add_argument("--max-file-mb", type=float, default=prc.DEFAULT_MAX_FILE_MB,
                    help=f"largest file allowed in a submission folder, in MB (default {prc.DEFAULT_MAX_FILE_MB:g})")
    pc.add_argument("--allow-update", action="append", metavar="ID",
                    help="maintainers: allow the PR to change this existing entry (repeatable)")
    pc.add_argument("--max-forward-seconds", type=float, default=prc.DEFAULT_MAX_FORWARD_S, metavar="S",
                    help="maintainers: cap on the FLOPs-scaled wall-clock budget of the sandboxed forward pass, per "
                    f"phase (default {prc.DEFAULT_MAX_FORWARD_S:g})")
    pc.add_argument("--sandbox", choices=("worker", "bwrap"), default="worker",
                    help="the forward pass's sandbox, as for harness eval (default worker)")
    pc.add_argument("--cache-dir", help="checkpoint cache folder (default $ROBUST_FRONTIER_CACHE)")
    pc.add_argument("--keep", help="also write the report (pr-check.md, pr-check.json) into this folder")
    pc.add_argument("--root", default=".", help="repository (default: the current folder)")
    pc.add_argument("--no-progress", action="store_true", help="no progress bars or step messages (progress "
                    "bars only ever appear when stderr is a terminal)")
    for flag in prc.REMOVED_FLAGS:  # no longer used: accepted with a note, so old command lines still run
        pc.add_argument(flag, help=argparse.SUPPRESS)
    pc.set_defaults(func=cmd_pr_check)

    a = sub.add_parser("audit", help="re-check a result record against its model (clean per example, re-attack)")
    a.add_argument("record", help="leaderboard/results/<id>.json")
    a.add_argument("--submission", help="its submission.yaml (default: submissions/<id>/ of the same repository)")
    a.add_argument("--sample", type=int, help="at most this many points per check (default: the sizes at which a "
                   "1%% forgery is caught with probability 0.95, from harness.review.audit; docs/audit.md)")
    a.add_argument("--seed", type=int, help="sampling and attack seed (default: a fresh random one, printed)")
    a.add_argument("--max-broken-fraction", type=float,
                   help="the honest break rate p0: fail when, at 95%% confidence, more than this fraction of the "
                   "claimed-robust points can be broken (default: harness.review.audit.HONEST_BREAK_RATE)")
    a.add_argument("--square-queries", type=int,
                   help="query budget of the Square attack in the re-attack (default: AutoAttack's; 0: none)")
    a.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    a.add_argument("--batch-size", type=int, help="default: the submission's, at most 256")
    a.add_argument("--data-dir", help=DATA_DIR_HELP)
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(func=cmd_audit)

    ac = sub.add_parser("attack-check", help="check an external attack (adversarial examples against a re-evaluated "
                        "entry) and write its attack record")
    ac.add_argument("attack", help="submissions/<id>/attacks/<name>/attack.yaml (with adversarial.npz beside it)")
    ac.add_argument("--out", help="attack record path (default: the scratch path "
                    "leaderboard/results/local/attacks/<id>/<name>.json; the trusted job writes "
                    "leaderboard/results/attacks/<id>/<name>.json)")
    ac.add_argument("--record", help="the entry's result record (default leaderboard/results/<id>.json)")
    ac.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    ac.add_argument("--data-dir", help=DATA_DIR_HELP)
    ac.add_argument("--batch-size", type=_count(100_000), help="default: the submission's, at most 256")
    ac.add_argument("--sandbox", choices=("worker", "bwrap"), default="worker",
                    help="the model runs in the evaluation worker, as for harness eval (default worker)")
    ac.set_defaults(func=cmd_attack_check)

    from harness.record import signing as sg

    sg_p = sub.add_parser("sign", help="sign result records (and their .examples.npz) in place with an Ed25519 key")
    sg_p.add_argument("records", nargs="+", metavar="RECORD.json", help="leaderboard/results/<id>.json files")
    sg_p.add_argument("--key", metavar="PEM", help=f"private key file (default: the PEM text in ${sg.SIGNING_KEY_ENV}, "
                      f"else the file named by ${sg.SIGNING_KEY_FILE_ENV})")
    sg_p.set_defaults(func=cmd_sign)
    kg = sub.add_parser("keygen", help="make an Ed25519 key pair for signing records")
    kg.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.pem (private, 0600) and "
                    "NAME.pub.pem (e.g. .keys/, which git ignores)")
    kg.add_argument("--name", default="local-ed25519", help="file name stem (default local-ed25519)")
    kg.set_defaults(func=cmd_keygen)

    lb = sub.add_parser("leaderboard", help="leaderboard commands")
    lbs = lb.add_subparsers(dest="lb_command", required=True)
    b = lbs.add_parser("build", help="build the static site, leaderboard.md and leaderboard.json")
    b.add_argument("--out", help="output folder (default ./site)")
    b.add_argument("--root", default=".", help="repository root (default .)")
    b.add_argument("--local", action="store_true",
                   help="a local board: also show unsigned records and leaderboard/results/local/*.json, marked "
                   "'local, unsigned' (never re-evaluated)")
    b.add_argument("--trust-key", action="append", metavar="PUB_PEM",
                   help="with --local: show records signed by this public key as 'local, signed by <key id>' "
                   "(repeatable)")
    b.set_defaults(func=cmd_leaderboard, torch_free=True)
    ir = lbs.add_parser("import-robustbench",
                        help="regenerate leaderboard/reported.csv from a RobustBench checkout's model_info/ JSON files")
    ir.add_argument("path", help="a RobustBench checkout, its model_info/ folder, or the snapshot CSV")
    ir.add_argument("--out", help="default: <root>/leaderboard/reported.csv")
    ir.add_argument("--root", default=".", help="repository root (default .)")
    ir.add_argument("--no-count", action="store_true",
                    help="do not build architectures: new rows get unknown parameters and FLOPs")
    ir.add_argument("--recount", action="store_true", help="count every row again instead of reusing reported.csv")
    ir.add_argument("--recount-op", action="append", metavar="OP",
                    help="count again the rows whose count skipped this operator (e.g. "
                         "aten::scaled_dot_product_attention after a new fvcore handle); repeatable")
    ir.add_argument("--quiet", action="store_true", help="no per-row progress lines")
    ir.set_defaults(func=cmd_import_robustbench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not getattr(args, "torch_free", False):  # validate, schema and leaderboard build import no torch
        from harness.models import compat  # noqa: F401  (quiet robustbench's import warnings, alias autoattack)
    args.argv = argv
    if not _stderr_is_terminal():  # no progress bar (tqdm, pooch's downloads) into a log or a pipe
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return int(args.func(args) or 0)
    except HarnessError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
