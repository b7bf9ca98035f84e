"""``harness pr-check --base REF``: the one command CI runs on a pull request (maintainers can run
it locally too). It checks the commits ``REF...HEAD`` of the repository in the current folder:

1. **What changed** (``git diff --name-status REF...HEAD``). A PR adds one entry: its folder
   ``submissions/<id>/`` and, optionally, its record ``leaderboard/results/<id>.json`` +
   ``<id>.examples.npz``. Refused: a PR that touches a second entry, that edits or deletes an entry
   already on the base branch (unless a maintainer passes ``--allow-update <id>``), or that changes
   anything else (harness/, leaderboard/ code, tests, workflows...) together with an entry.
2. **The folder, with limits**: every file ≤ ``--max-file-mb`` (100 MB; a larger checkpoint must be
   hosted, ``model.checkpoint.url``), no symlinks, no executable files, nothing but regular files
   and folders, and a licence: ``license`` is an SPDX expression, or the folder holds a LICENSE file.
3. **validate**: the schema, then the files and hashes, after fetching a hosted checkpoint into the
   cache (``harness fetch``).
4. **A smoke evaluation** on CPU through :func:`harness.pipeline.evaluate` (so it gets whatever
   isolation the evaluation has): clean accuracy, FLOPs and AutoAttack on the first
   ``--n-examples`` points, with its record written to a temporary folder, never to
   ``leaderboard/results/``.
5. **The audit** (:mod:`harness.audit`) of a record the PR adds or edits: provenance hashes, clean
   predictions per example on a sample, a re-attack of a sample of the claimed-robust points.
6. **A Markdown report** on stdout (also appended to ``$GITHUB_STEP_SUMMARY`` when set): the
   would-be board row with its rank and frontier layer, flags, and problems. Each problem is also
   printed to stderr as one line. Exit status 1 on any problem.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import HarnessError, one_line

DEFAULT_MAX_FILE_MB = 100.0
DEFAULT_N_EXAMPLES = 10
DEFAULT_AUDIT_SAMPLE = 64
SMOKE_STAGES = ["clean", "flops", "autoattack"]
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING)([._-].*)?$", re.IGNORECASE)
RECORD_SUFFIXES = (".examples.npz", ".json")


@dataclass
class Change:
    status: str  # A, M, D, T, ... (git diff --name-status, renames split into D + A)
    path: str


@dataclass
class Placement:
    """Where the entry would sit on its board."""

    board: str
    rank: int
    tied: bool
    layer: int | None
    n_entries: int
    on_frontier: list[str]
    flags: list[Any]
    table: str  # header + the entry's row, GitHub Markdown


@dataclass
class PRCheckOptions:
    base: str
    root: Path = field(default_factory=Path.cwd)
    n_examples: int = DEFAULT_N_EXAMPLES
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    allow_update: tuple[str, ...] = ()
    device: str = "cpu"
    audit_sample: int = DEFAULT_AUDIT_SAMPLE
    audit_seed: int | None = None
    data_dir: Path | None = None
    keep: Path | None = None
    progress: bool = True


@dataclass
class PRCheckReport:
    base: str
    base_sha: str = ""
    changes: list[Change] = field(default_factory=list)
    entry_id: str | None = None
    kind: str | None = None  # "new" or "update"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    smoke: Any = None  # ResultRecord of the smoke evaluation
    smoke_seconds: float | None = None
    smoke_path: Path | None = None
    audit: Any = None  # AuditResult
    placement: Placement | None = None
    placement_source: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def markdown(self) -> str:
        return render_report(self)


# --------------------------------------------------------------------------------------------- git
def git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise HarnessError("git is not installed")
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["failed"])[0]
        raise HarnessError(f"git {' '.join(args[:2])}: {msg}")
    return out.stdout


def changed_files(root: Path, base: str) -> list[Change]:
    """Files changed on this branch since it left ``base`` (``git diff base...HEAD``)."""
    try:
        git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    except HarnessError:
        raise HarnessError(f"--base {base!r} is not a commit of this repository (fetch it first, e.g. "
                           "`git fetch origin main` and --base origin/main)")
    raw = git(root, "diff", "--name-status", "-z", "--no-renames", f"{base}...HEAD")
    tokens = [t for t in raw.split("\0") if t]
    return [Change(tokens[i][0], tokens[i + 1]) for i in range(0, len(tokens) - 1, 2)]


def exists_at(root: Path, ref: str, path: str) -> bool:
    return subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{ref}:{path}"],
                          capture_output=True, check=False).returncode == 0


def classify(path: str) -> tuple[str, str | None]:
    """("entry", id) for submissions/<id>/..., ("record", id) for leaderboard/results/<id>.json or
    .examples.npz, ("other", None) for anything else."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "submissions":
        return "entry", parts[1]
    if len(parts) == 3 and parts[:2] == ["leaderboard", "results"]:
        for suffix in RECORD_SUFFIXES:
            if parts[2].endswith(suffix) and len(parts[2]) > len(suffix):
                return "record", parts[2][: -len(suffix)]
    return "other", None


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def scope_problems(root: Path, base: str, changes: list[Change], allow_update: tuple[str, ...]
                   ) -> tuple[str | None, str | None, list[str]]:
    """The PR's entry id, whether it is new or an update, and the scope problems."""
    ids: dict[str, list[Change]] = {}
    other: list[str] = []
    for c in changes:
        kind, eid = classify(c.path)
        if eid is None:
            other.append(c.path)
        else:
            ids.setdefault(eid, []).append(c)
    if not ids:
        return None, None, []
    problems = []
    merge_base = git(root, "merge-base", base, "HEAD").strip()
    existing = {e for e in ids if exists_at(root, merge_base, f"submissions/{e}/submission.yaml")
                or exists_at(root, base, f"submissions/{e}/submission.yaml")
                or exists_at(root, merge_base, f"leaderboard/results/{e}.json")}
    new = sorted(set(ids) - existing)
    for e in sorted(existing):
        if e in allow_update:
            continue
        paths = [c.path for c in ids[e]]
        problems.append(f"{paths[0]}: the PR changes entry {e!r}, which is already on the base branch "
                        f"({len(paths)} file(s): {_few(paths)}); a PR adds one new entry, and changes to a merged "
                        "entry are a maintainer's (pr-check --allow-update ID)")
    if len(new) > 1:
        problems.append(f"the PR adds {len(new)} entries ({_few(new)}); send one entry per pull request")
    if other:
        problems.append(f"the PR changes files outside its entry ({_few(other)}) together with a submission; "
                        "send code, workflow or documentation changes as a separate pull request")
    own = new[0] if new else (sorted(ids)[0] if len(ids) == 1 else None)
    kind = None if own is None else ("new" if own in new else "update")
    return own, kind, problems


# ------------------------------------------------------------------------------------ the folder
def folder_problems(folder: Path, max_bytes: int) -> list[str]:
    """Limits on the files in a submission folder: size, no symlinks, no executables, regular files."""
    problems = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(folder.parent.parent) if folder.parent.parent in p.parents else p
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                problems.append(f"{rel}: symlinks are not allowed in a submission folder")
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel}: not a regular file")
            else:
                if st.st_mode & 0o111:
                    problems.append(f"{rel}: executable files are not allowed in a submission folder (chmod -x)")
                if st.st_size > max_bytes:
                    problems.append(f"{rel}: {st.st_size / 1e6:.1f} MB is over the {max_bytes / 1e6:g} MB limit for a "
                                    "file in a submission folder; host the checkpoint and give model.checkpoint.url")
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return problems


# the licence check lives in the submission layer (harness validate runs it too); kept importable here
from .submission import license_problems  # noqa: E402, F401


# ------------------------------------------------------------------------------------- the board
def place_on_board(root: Path, entry_id: str, candidate: tuple[Any, Path, Any] | None) -> Placement:
    """The entry's would-be row, rank and frontier layer on its board.

    Uses the leaderboard's own public functions on the PR's tree (``load_entries``, which runs every
    check the site build runs, then ``entry_from_record`` for a smoke record, ``make_boards`` and the
    Markdown renderer), so the row is the one the site would show."""
    from leaderboard.boards import FRONTIERS, Board, entry_from_record, load_entries, make_boards
    from leaderboard.render_md import board_table

    inputs = load_entries(root)
    entries = list(inputs.entries)
    if candidate is not None:
        rec, path, sub = candidate
        entries = [e for e in entries if e.id != entry_id] + [entry_from_record(rec, path, sub)]
    boards = make_boards(entries)
    for b in boards:
        for e in b.entries:
            if e.id == entry_id:
                titles = {key: title for key, _, _, title in FRONTIERS}
                on = [titles.get(k, k) for k, v in e.on_frontier.items() if v]
                table = board_table(Board(b.dataset, b.norm, b.eps, [e]))
                return Placement(b.title, e.rank, e.tied, e.layer, len(b.entries), on, list(e.flags), table)
    raise HarnessError(f"entry {entry_id!r} is on no board (it has no record)")


# ------------------------------------------------------------------------------------- the check
def _say(progress: bool) -> Callable[[str], None]:
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)


def run_pr_check(opts: PRCheckOptions) -> PRCheckReport:
    from .submission import check_files, parse_submission

    say = _say(opts.progress)
    root = Path(git(Path(opts.root), "rev-parse", "--show-toplevel").strip())
    rep = PRCheckReport(opts.base)
    rep.changes = changed_files(root, opts.base)
    rep.base_sha = git(root, "rev-parse", "--short", f"{opts.base}^{{commit}}").strip()
    rep.entry_id, rep.kind, scope = scope_problems(root, opts.base, rep.changes, tuple(opts.allow_update))
    rep.problems += scope
    if rep.entry_id is None:
        rep.notes.append("no submission or record changed: nothing to evaluate")
        return rep
    if scope:  # nothing is evaluated until the PR holds one entry and nothing else
        return rep
    eid = rep.entry_id
    folder = root / "submissions" / eid
    yaml_path = folder / "submission.yaml"
    rel_yaml = f"submissions/{eid}/submission.yaml"
    if not folder.is_dir() or folder.is_symlink():
        rep.problems.append(f"submissions/{eid}/: the PR removes or does not contain the entry's folder "
                            "(only maintainers remove entries)")
        return rep
    say(f"pr-check: entry {eid} ({rep.kind}), base {opts.base} ({rep.base_sha})")

    rep.problems += folder_problems(folder, int(opts.max_file_mb * 1e6))
    if not yaml_path.is_file() or yaml_path.is_symlink():
        rep.problems.append(f"{rel_yaml}: missing")
    if rep.problems:  # files the harness does not accept are neither parsed nor run
        return rep
    try:
        sub, problems = parse_submission(yaml_path)
    except HarnessError as e:
        rep.problems.append(str(e).replace(str(root) + os.sep, ""))
        return rep
    rep.problems += [f"{rel_yaml}: {p}" for p in problems]
    if sub is None:
        return rep
    rep.problems += [f"{rel_yaml}: {p}" for p in license_problems(sub.spec.license, folder)]
    if rep.problems:
        return rep

    ck = sub.spec.model.checkpoint
    if ck.url is not None:
        from .hosted import fetch

        say(f"pr-check: fetching {ck.url}")
        try:
            path, downloaded = fetch(ck.url, ck.sha256, progress=opts.progress)
            rep.notes.append(f"hosted checkpoint {'downloaded' if downloaded else 'found in the cache'} and verified "
                             f"({path.stat().st_size / 1e6:.1f} MB, sha256 {ck.sha256[:12]}...)")
        except HarnessError as e:
            rep.problems.append(f"{rel_yaml}: {e}")
            return rep
    rep.problems += [f"{rel_yaml}: {p}" for p in check_files(sub)]
    if rep.problems:  # the model is not evaluated as submitted
        return rep

    record_json = root / "leaderboard" / "results" / f"{eid}.json"
    record_changed = any(classify(c.path) == ("record", eid) for c in rep.changes)
    work = Path(tempfile.mkdtemp(prefix="pr-check-"))
    try:
        _smoke(rep, sub, yaml_path, work, opts, say)
        if record_changed:
            _audit(rep, root, record_json, yaml_path, opts, say)
        _place(rep, root, eid, record_changed, work, sub)
        if opts.keep is not None:
            keep = Path(opts.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for p in (work / "results").glob(f"{eid}*"):
                shutil.copy2(p, keep / f"smoke-{p.name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rep


def _smoke(rep: PRCheckReport, sub, yaml_path: Path, work: Path, opts: PRCheckOptions, say) -> None:
    from .audit import available_points
    from .pipeline import evaluate
    from .stages import EvalOptions

    spec = sub.spec
    try:
        n = min(opts.n_examples, available_points(spec.dataset, opts.data_dir, sub.dataset_path()))
        say(f"pr-check: smoke evaluation ({', '.join(SMOKE_STAGES)}) on {n} points, device {opts.device}")
        t0 = time.perf_counter()
        outcome = evaluate(yaml_path, EvalOptions(device=opts.device, n_examples=n, data_dir=opts.data_dir,
                                                  progress=opts.progress),
                           stages=SMOKE_STAGES, out=work / "results" / f"{spec.id}.json",
                           command=f"harness pr-check --base {opts.base} (smoke evaluation, {n} points)",
                           echo=say)
        rep.smoke_seconds = time.perf_counter() - t0
        rep.smoke = outcome.record
        rep.smoke_path = outcome.json_path
    except HarnessError as e:
        rep.problems.append(f"smoke evaluation: {e}")
    except Exception as e:  # a crash inside the model or a library is still one line, never a traceback
        detail = one_line(e, 300)
        rep.problems.append(f"smoke evaluation crashed: {type(e).__name__}: {detail}")


def _audit(rep: PRCheckReport, root: Path, record_json: Path, yaml_path: Path, opts: PRCheckOptions, say) -> None:
    from .audit import audit_record

    rel = record_json.relative_to(root)
    if not record_json.is_file():
        rep.problems.append(f"{rel}: the PR changes the entry's examples file but has no record beside it")
        return
    say(f"pr-check: auditing {rel}")
    try:
        rep.audit = audit_record(record_json, submission=yaml_path, sample=opts.audit_sample, seed=opts.audit_seed,
                                 device=opts.device, data_dir=opts.data_dir, progress=opts.progress)
    except HarnessError as e:
        rep.problems.append(f"{rel}: audit: {str(e).replace(str(root) + os.sep, '')}")
        return
    except Exception as e:
        rep.problems.append(f"{rel}: audit crashed: {type(e).__name__}: {one_line(e, 300)}")
        return
    rep.problems += [f"{rel}: audit: {p}" for p in rep.audit.problems]
    rep.notes += rep.audit.notes


def _place(rep: PRCheckReport, root: Path, eid: str, record_changed: bool, work: Path, sub) -> None:
    candidate = None
    if record_changed and rep.audit is not None and rep.audit.ok:
        rep.placement_source = (f"the record the PR carries (leaderboard/results/{eid}.json), audited on "
                                f"{len(rep.audit.clean_checked)} + {len(rep.audit.attack_checked)} sampled points")
    elif rep.smoke is not None:
        candidate = (rep.smoke, rep.smoke_path, sub)
        rep.placement_source = (f"the smoke evaluation on the first {rep.smoke.n_examples} test points (CPU): "
                                "indicative only; the board's figures come from the full evaluation "
                                "(label `full-eval`)")
    else:
        return
    try:
        rep.placement = place_on_board(root, eid, candidate)
    except HarnessError as e:
        msg = str(e).replace(str(root) + os.sep, "")
        if record_changed:
            rep.problems.append(f"leaderboard build would refuse the PR: {msg}")
        else:
            rep.notes.append(f"no board placement: {msg}")


# ------------------------------------------------------------------------------------ the report
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def render_report(rep: PRCheckReport) -> str:
    status = "passed" if rep.ok else f"failed ({len(rep.problems)} problem{'s' if len(rep.problems) != 1 else ''})"
    head = f"## pr-check: {rep.entry_id or 'no entry'} ({rep.kind or 'nothing to evaluate'}): {status}"
    out = [head, "", f"Base `{rep.base}` ({rep.base_sha}); {len(rep.changes)} changed file(s).", ""]
    if rep.problems:
        out += ["### Problems", ""] + [f"- {_md_line(p)}" for p in rep.problems] + [""]
    pl = rep.placement
    if pl is not None:
        tie = "=" if pl.tied else ""
        layer = "–" if pl.layer is None else str(pl.layer)
        out += [f"### Would-be row: {pl.board}", "", pl.table, "",
                f"Rank **{pl.rank}{tie}** of {pl.n_entries}, frontier layer **{layer}**"
                + (f"; on the frontier of {'; '.join(pl.on_frontier)}" if pl.on_frontier else "") + ".",
                f"Figures from {rep.placement_source}.", ""]
        if pl.flags:
            out += ["### Flags", ""] + [f"- `{f.name}` ({f.severity}): {_md_line(f.message)}" for f in pl.flags] + [""]
    if rep.smoke is not None:
        r = rep.smoke
        aa = r.autoattack
        out += ["### Smoke evaluation", "",
                f"{r.n_examples} points on {r.provenance.device}: clean {_pct(r.clean_accuracy)}, AutoAttack "
                f"({aa.version if aa else '–'}) {_pct(r.robust_accuracy)}, params {r.params or '–'}, inference FLOPs "
                f"{'–' if r.inference_flops is None else f'{r.inference_flops:.3g}'}, "
                f"{rep.smoke_seconds or 0:.1f} s.", ""]
    if rep.audit is not None:
        out += ["### Audit of the record", "", _md_line(rep.audit.summary()), ""]
    if rep.notes:
        out += ["### Notes", ""] + [f"- {_md_line(n)}" for n in rep.notes] + [""]
    return "\n".join(out)


def _md_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
