"""``harness pr-check --base REF``: the check CI runs on a pull request, on a CPU, with no dataset
(maintainers can run it locally too). A pull request carries a model, never a number: the figures
of the board come only from the trusted evaluation on the GPU runner, which signs its records.
pr-check checks the commits ``REF...HEAD`` of the repository in the current folder, in this order,
and stops at the first step that finds a problem:

1. **Path rules** (``git diff -z --name-status REF...HEAD``, read as bytes). A submission PR adds
   or changes one folder ``submissions/<id>/`` and nothing else. Any other path in such a PR
   (``leaderboard/results/`` records or state files, ``harness/``, ``leaderboard/`` code and data,
   ``.github/``, ``pyproject.toml``, tests, scripts, ...) is refused with one line naming it. A PR
   that changes no submission is not a submission PR: it fails (exit 1), saying it needs a
   maintainer's review, and never "passes". A file name that is not UTF-8 or holds control or
   invisible characters is one line. Editing or deleting an entry already on the base branch is
   refused unless a maintainer passes ``--allow-update <id>``; such an update gets every check below.
2. **The folder**: every file <= ``--max-file-mb`` (100 MB; a larger checkpoint must be hosted), no
   symlinks, no executables, only regular files and folders.
3. **Schema, licence** (an SPDX expression in ``license``, or a LICENSE file in the folder).
4. **Duplicate checkpoint**: a checkpoint SHA-256 that an entry on the base branch already has
   (its ``submission.yaml`` or its record) is refused, naming that entry.
5. **Hosting** (``harness fetch`` into the cache: hash and size) and the **manifest** (every file
   of the folder covered by a matching SHA-256).
6. **The architecture built on the meta device** (no memory, no weights), its parameters counted,
   then materialised empty (zeros, no checkpoint) to count its inference FLOPs with fvcore, as the
   flops stage does (:func:`harness.compute.flops.count_inference_flops`). Formats and zoo entries that
   cannot be built on the meta device are counted in the sandbox after loading instead.
7. **A sandboxed forward pass**: the evaluation worker (:mod:`harness.sandbox.worker`, job kind
   ``forward``, supervised by :mod:`harness.sandbox.supervisor`) loads the model as an evaluation does and
   runs :data:`FORWARD_INPUTS` random inputs in [0, 1] of the dataset's shape (from the dataset
   registry, :mod:`harness.data.registry`), within a wall-clock budget per phase (loading, forward):

       budget = BUDGET_BASE_S + (FORWARD_INPUTS + 2) x FLOPs / CPU_FLOPS_PER_S + checkpoint bytes / IO_BYTES_PER_S

   (60 s + 6 x FLOPs / 1e9 per s + bytes / 20 MB per s: loading also runs the 2-input output check,
   reads and hashes the checkpoint; 1e9 fvcore FLOPs per second is about 1/40 of one core), capped
   at ``--max-forward-seconds`` (default 1800) and at the maintainer's stage timeout; the cap alone
   when the FLOPs are unknown. Then **the logits check**: shape (B, classes), all finite, done by
   the worker and again here on the logits it returns.
8. **A Markdown report** on stdout (also appended to ``$GITHUB_STEP_SUMMARY`` when set): what was
   checked, parameters and FLOPs, the forward time and its budget, and the problems. Every string
   from the PR (ids, names, paths, error texts) goes through :func:`harness.core.errors.one_line` and
   Markdown escaping, so no terminal escape, bidi override, line separator or ``::error`` line
   reaches the terminal or the job summary raw. Each problem is also one line on stderr. Exit
   status 1 on any problem.

**Attack PRs.** A PR that only adds ``submissions/<id>/attacks/<name>/attack.yaml`` and
``adversarial.npz`` (and optionally a ``LICENSE`` file there), for one attack on an entry that is on
the base branch with its result record, is an external attack (:mod:`harness.record.attack`), not a
submission. pr-check then checks the attack folder's files (size, no symlinks or executables) and
runs ``harness attack-check`` on it (:func:`harness.review.attack_check.attack_check`, the model in
the sandboxed worker, on the CPU) against the record as it is on the base branch (the PR changes no
record and no key): ``attack.yaml``'s schema and licence, ``adversarial.npz`` read without pickle,
every index in the evaluated set and given once, every pixel in [0, 1], every point one the model
got right clean, every image within eps of the original, and every image misclassified by the model.
The eps-ball needs the original images: MNIST and the first 100 CIFAR-10 test images are bundled
with the harness, so for them everything is checked; for other data (no dataset on the CI runner)
every check but the eps-ball runs, the labels taken from the record's examples file, and the
report says that the ball is checked by the trusted job. pr-check writes no attack record
(``--keep DIR`` keeps the one it would write, for a fully checked attack, as
``DIR/attacks/<name>.json``); the trusted job runs
``harness attack-check --out leaderboard/results/attacks/<id>/<name>.json`` and signs it.

No smoke attack and no audit run here any more: both moved to the trusted GPU job
(``harness eval`` + ``harness audit``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.core.errors import HarnessError, one_line

DEFAULT_MAX_FILE_MB = 100.0
#: random inputs of the forward pass
FORWARD_INPUTS = 4
#: the forward budget (per phase of the worker: loading, forward): see the module docstring
BUDGET_BASE_S = 60.0
CPU_FLOPS_PER_S = 1e9
IO_BYTES_PER_S = 20e6
DEFAULT_MAX_FORWARD_S = 1800.0
ENTRY_ID = r"[a-z0-9][a-z0-9._-]{0,63}"

#: paths a submission PR may not touch, and what they are (the first match names the reason)
PROTECTED: tuple[tuple[str, str], ...] = (
    ("leaderboard/results/", "a result record or evaluation state: records come only from the trusted GPU "
                             "evaluation, which signs them; a pull request never carries one"),
    (".github/", "a workflow or repository setting"),
    ("harness/", "the harness's code"),
    ("leaderboard/", "the leaderboard's code or data"),
    ("tests/", "a test"),
    ("scripts/", "a script"),
    ("pyproject.toml", "the package configuration"),
    ("submissions/", "a file outside any submission folder"),
)
#: the flags pr-check no longer uses (it runs no evaluation), kept so that an old command line
#: still runs, with one note each
REMOVED_FLAGS = ("--n-examples", "--audit-sample", "--seed", "--device", "--data-dir")


@dataclass
class Change:
    status: str  # A, M, D, T, ... (git diff --name-status, renames split into D + A)
    path: str


@dataclass
class ModelCount:
    """What the meta-device build (or, failing that, the worker) counted."""

    params: int | None = None
    param_bytes: int | None = None
    flops_per_pass: float | None = None  # fvcore, 1 per multiply-add, one input
    forward_passes: int = 1
    skipped_ops: dict[str, int] = field(default_factory=dict)
    where: str = ""  # "meta device" or "sandbox"
    why_not: str = ""  # why the FLOPs are unknown

    @property
    def flops(self) -> float | None:
        return None if self.flops_per_pass is None else self.flops_per_pass * self.forward_passes


@dataclass
class ForwardResult:
    n_inputs: int
    input_shape: tuple[int, ...]
    num_classes: int
    seconds: float  # the forward pass, as the worker timed it
    wall_seconds: float  # the whole worker (start, load, forward), timed here
    budget_s: float
    budget_from_flops: bool


@dataclass
class PRCheckOptions:
    base: str
    root: Path = field(default_factory=Path.cwd)
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    allow_update: tuple[str, ...] = ()
    keep: Path | None = None
    progress: bool = True  # step messages on stderr
    bars: bool = False  # progress bars (the CLI: only when stderr is a terminal)
    sandbox: str = "worker"
    max_forward_s: float = DEFAULT_MAX_FORWARD_S


@dataclass
class PRCheckReport:
    base: str
    base_sha: str = ""
    changes: list[Change] = field(default_factory=list)
    entry_id: str | None = None
    kind: str | None = None  # "new" or "update"
    name: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, float]] = field(default_factory=list)  # (what, result, seconds), in order
    count: ModelCount | None = None
    forward: ForwardResult | None = None
    submission_pr: bool = True
    attack_name: str | None = None  # an attack PR's submissions/<entry>/attacks/<name>/

    @property
    def ok(self) -> bool:
        return not self.problems

    _mark: float = field(default_factory=time.perf_counter, repr=False)

    def problem(self, text: str) -> None:
        self.problems.append(one_line(text))

    def check(self, what: str, result: str) -> None:
        """A passed check, with the seconds since the previous one (or since the start)."""
        now = time.perf_counter()
        self.checks.append((what, result, now - self._mark))
        self._mark = now

    @property
    def seconds(self) -> float:
        return sum(c[2] for c in self.checks)

    def markdown(self) -> str:
        return render_report(self)

    def to_json(self) -> str:
        return json.dumps({
            "entry": self.entry_id, "kind": self.kind, "passed": self.ok, "base": self.base,
            "base_sha": self.base_sha, "problems": self.problems, "notes": [one_line(n) for n in self.notes],
            "checks": [{"check": c, "result": one_line(r), "seconds": round(t, 3)} for c, r, t in self.checks],
            "count": None if self.count is None else {**asdict(self.count), "flops": self.count.flops},
            "forward": None if self.forward is None else asdict(self.forward),
        }, indent=2)


# --------------------------------------------------------------------------------------------- git
def _git_bytes(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise HarnessError("git is not installed")
    if out.returncode != 0:
        msg = (out.stderr.decode("utf-8", "replace").strip().splitlines() or ["failed"])[0]
        raise HarnessError(f"git {' '.join(args[:2])}: {msg}")
    return out.stdout


def git(root: Path, *args: str) -> str:
    return _git_bytes(root, *args).decode("utf-8", "replace")


def resolve_base(root: Path, base: str) -> str:
    try:
        return git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").strip()
    except HarnessError:
        raise HarnessError(f"--base {base!r} is not a commit of this repository (fetch it first, e.g. "
                           "`git fetch origin main` and --base origin/main)")


def changed_files(root: Path, base: str) -> tuple[list[Change], list[str]]:
    """Files changed on this branch since it left ``base`` (``git diff -z base...HEAD``, read as
    bytes), and the names that are not UTF-8 or hold control or invisible characters (shown
    escaped)."""
    resolve_base(root, base)
    raw = _git_bytes(root, "diff", "--name-status", "-z", "--no-renames", f"{base}...HEAD")
    tokens = [t for t in raw.split(b"\0") if t]
    changes, bad = [], []
    for i in range(0, len(tokens) - 1, 2):
        status, name = tokens[i].decode("ascii", "replace")[:1], tokens[i + 1]
        try:
            path = name.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(one_line(name.decode("utf-8", "backslashreplace"), 200) + " (not UTF-8)")
            continue
        if not path.isprintable():
            bad.append(one_line(path, 200) + " (control or invisible characters)")
            continue
        changes.append(Change(status, path))
    return changes, bad


def exists_at(root: Path, ref: str, path: str) -> bool:
    return subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{ref}:{path}"],
                          capture_output=True, check=False).returncode == 0


def _blobs(root: Path, ref: str, paths: list[str]) -> dict[str, bytes]:
    """The contents of ``paths`` at ``ref`` (one ``git cat-file --batch``); missing ones are left out."""
    if not paths:
        return {}
    out = _git_bytes(root, "cat-file", "--batch", stdin=b"".join(f"{ref}:{p}\n".encode() for p in paths))
    blobs, i = {}, 0
    for p in paths:
        nl = out.index(b"\n", i)
        header, i = out[i:nl].split(), nl + 1
        if len(header) == 3 and header[2].isdigit():
            size = int(header[2])
            if header[1] == b"blob":
                blobs[p] = out[i:i + size]
            i += size + 1
    return blobs


def _few(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ------------------------------------------------------------------------------------ path rules
def entry_of(path: str) -> str | None:
    """The id of ``submissions/<id>/...``, else None."""
    parts = path.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "submissions" and parts[1] else None


def protected_reason(path: str) -> str:
    for prefix, what in PROTECTED:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return what
    return "outside any submission folder"


def scope_problems(root: Path, base: str, changes: list[Change], allow_update: tuple[str, ...]
                   ) -> tuple[str | None, str | None, list[str], bool]:
    """The PR's entry id, whether it is "new" or an "update", the path-rule problems (one line
    each), and whether it is a submission PR at all (it changes a ``submissions/<id>/`` folder)."""
    ids: dict[str, list[Change]] = {}
    other: list[str] = []
    for c in changes:
        eid = entry_of(c.path)
        if eid is None:
            other.append(c.path)
        else:
            ids.setdefault(eid, []).append(c)
    if not ids and other and records_only(changes):
        return None, "records", [], False
    if not other and attack_only(changes):
        found = sorted({(m.group(1), m.group(2)) for c in changes if (m := ATTACK_PATH.fullmatch(c.path))})
        if len(found) > 1:
            shown = _few([f"{e}/attacks/{a}" for e, a in found])
            return None, "attack", [f"the PR adds {len(found)} attacks ({shown}); send one attack per pull "
                                    "request"], True
        eid = found[0][0]
        if not (exists_at(root, base, f"submissions/{eid}/submission.yaml")
                and exists_at(root, base, f"leaderboard/results/{eid}.json")):
            return eid, "attack", [f"{changes[0].path}: an attack is checked against an entry re-evaluated on the "
                                   f"base branch, and {eid!r} has no submission and result record there"], True
        return eid, "attack", [], True
    if not ids:
        shown = f" ({_few(other)})" if other else ""
        return None, None, [f"not a submission PR: it changes {len(other)} file(s){shown} and no "
                            "submissions/<id>/ folder; changes to code, workflows, data or records are not "
                            "checked here and need a maintainer's review"], False
    problems = []
    if other:
        more = f" (and {len(other) - 1} more file(s) outside submissions/<id>/)" if len(other) > 1 else ""
        problems.append(f"{other[0]}: a submission PR changes only its submissions/<id>/ folder, and this is "
                        f"{protected_reason(other[0])}{more}; send other changes as a separate pull request "
                        "for a maintainer's review")
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
    elif len(ids) > 1 and len(problems) == (1 if other else 0):
        problems.append(f"the PR changes {len(ids)} entries ({_few(sorted(ids))}); one entry per pull request")
    own = new[0] if len(new) == 1 else (sorted(ids)[0] if len(ids) == 1 else None)
    kind = None if own is None else ("new" if own in new else "update")
    return own, kind, problems, True


RECORD_PATH = re.compile(rf"leaderboard/results/({ENTRY_ID})(\.json|\.examples\.npz)")
#: the files of an attack PR: submissions/<entry>/attacks/<name>/{attack.yaml,adversarial.npz,LICENSE[.ext]}
ATTACK_PATH = re.compile(rf"submissions/({ENTRY_ID})/attacks/({ENTRY_ID})/(attack\.yaml|adversarial\.npz|"
                         r"LICEN[CS]E(\.[a-z]{1,8})?)")


def attack_only(changes: list[Change]) -> bool:
    """An attack PR: it only adds files of ``submissions/<entry>/attacks/<name>/`` (a merged attack is
    changed by maintainers only), among them its attack.yaml."""
    return bool(changes) and all(c.status == "A" and ATTACK_PATH.fullmatch(c.path) for c in changes) \
        and any(c.path.endswith("/attack.yaml") for c in changes)


def check_attack(rep: PRCheckReport, root: Path, eid: str, opts: PRCheckOptions, say: Callable[[str], None]) -> None:
    """An attack PR: the attack folder's files, then ``harness attack-check`` in the sandboxed worker
    (see the module docstring); no attack record is written unless ``--keep`` names a folder."""
    from harness.review.attack_check import attack_check
    from harness.submission.load import load_submission

    m = next(m for c in rep.changes if (m := ATTACK_PATH.fullmatch(c.path)))
    name = rep.attack_name = m.group(2)
    rel = f"submissions/{eid}/attacks/{name}"
    folder = root / rel
    for p in folder_problems(folder, int(opts.max_file_mb * 1e6)):
        rep.problem(p)
    for f in ("attack.yaml", "adversarial.npz"):
        if not (folder / f).is_file():
            rep.problem(f"{rel}/{f}: missing (an attack is attack.yaml and adversarial.npz)")
    if rep.problems:
        return
    rep.check("path rules", f"one attack {rel}/ on an entry of the base branch, nothing else "
                            f"({len(rep.changes)} file(s))")
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    rep.check("folder", f"{n_files} file(s), no symlinks or executables, each at most {opts.max_file_mb:g} MB")
    try:
        ck = load_submission(root / "submissions" / eid / "submission.yaml").spec.model.checkpoint
        if ck.url is not None:  # the entry's hosted checkpoint, into the cache (hash and size checked)
            from harness.submission.hosted import fetch

            say(f"pr-check: fetching {ck.url}")
            fetch(ck.url, ck.sha256, progress=opts.bars, size_bytes=ck.size_bytes)
        say(f"pr-check: attack-check {rel} (the model in the sandboxed worker, CPU)")
        out = Path(opts.keep) / "attacks" / f"{name}.json" if opts.keep is not None else None
        res = attack_check(folder / "attack.yaml", out=out, device="cpu", sandbox=opts.sandbox,
                           command=f"harness attack-check {rel}/attack.yaml", write=out is not None,
                           data_optional=True)
    except HarnessError as e:
        rep.problem(str(e).replace(str(root) + os.sep, ""))
        return
    r = res.record
    what = ("index in the evaluated set and once, pixels in [0, 1], clean point correct, "
            + ("within eps of the original, " if res.ball_checked else "") + "misclassified by the model")
    rep.check("attack-check (sandboxed worker)",
              f"{r.n_submitted} example(s): {what}; {len(r.missed_by_autoattack)} that AutoAttack missed; "
              f"best-known accuracy {100 * r.best_known_accuracy:.2f}% "
              f"(AutoAttack {100 * res.autoattack_accuracy:.2f}%, N = {r.n_examples})")
    if not res.ball_checked:
        rep.notes.append(f"the eps-ball ({r.threat_model.norm}, eps = {r.threat_model.eps:g}) was not checked: "
                         f"{r.dataset} is not available on this runner; the trusted job checks it before it "
                         "writes and signs the attack record")
    rep.notes += [n for n in res.notes if "eps-ball was not checked" not in n]


def records_only(changes: list[Change]) -> bool:
    """A records PR: it adds or replaces only ``leaderboard/results/<id>.json`` and
    ``<id>.examples.npz`` files (what the evaluation's sign job pushes to a ``records/...`` branch)."""
    return all(c.status in ("A", "M") and RECORD_PATH.fullmatch(c.path) for c in changes)


def check_records(rep: PRCheckReport, root: Path, base: str) -> None:
    """A records PR: every record it adds or replaces verifies against the BASE branch's
    ``leaderboard/keys/`` (a key the PR adds vouches for nothing), belongs to its submission as that
    submission is on the base branch, and has no fewer examples or stages than the record it replaces."""
    from harness.record.checks import check_against_submission
    from harness.record.read import read_record
    from harness.record.signing import load_trusted_keys, verify_record
    from harness.submission.load import load_submission

    ids = sorted({m.group(1) for c in rep.changes if (m := RECORD_PATH.fullmatch(c.path))})
    names = [n.decode("utf-8", "replace") for n in _git_bytes(root, "ls-tree", "-r", "-z", "--name-only", base,
                                                               "--", "leaderboard/keys").split(b"\0") if n]
    with tempfile.TemporaryDirectory(prefix="pr-check-keys-") as tmp:
        for path, data in _blobs(root, base, [n for n in names if n.endswith(".pub.pem")]).items():
            (Path(tmp) / Path(path).name).write_bytes(data)
        keys = load_trusted_keys(tmp)
        for eid in ids:
            rel = f"leaderboard/results/{eid}.json"
            json_path = root / rel
            yaml_rel = f"submissions/{eid}/submission.yaml"
            if not exists_at(root, base, yaml_rel):
                rep.problem(f"{rel}: its submission {yaml_rel} is not on the base branch; the entry is merged first")
                continue
            try:
                verify_record(json_path, keys, keys_from=f"{base}:leaderboard/keys/")
                rec = read_record(json_path)
                if rec.submission_id != eid:
                    raise HarnessError(f"{rel}: claims submission {rec.submission_id!r}")
                check_against_submission(rec, json_path, load_submission(root / yaml_rel))
            except HarnessError as e:
                rep.problem(str(e).replace(str(root) + os.sep, ""))
                continue
            old = _blobs(root, base, [rel]).get(rel) if exists_at(root, base, rel) else None
            if old is not None:
                try:
                    was = json.loads(old)
                    fewer = int(was.get("n_examples") or 0) > rec.n_examples
                    lost = sorted(set(was.get("stages") or []) - set(rec.stages))
                except (ValueError, TypeError, AttributeError):
                    fewer, lost = False, []
                if fewer or lost:
                    rep.problem(f"{rel}: would replace the record on the base branch with a smaller one "
                                f"({rec.n_examples} examples" + (f", without stages {', '.join(lost)}" if lost else "")
                                + "); a record is never shrunk")
                    continue
            rep.check(f"record {eid}", f"signed by a key of the base branch, belongs to {yaml_rel}, "
                                       f"{rec.n_examples} examples")


def base_checkpoints(root: Path, base: str) -> dict[str, set[str]]:
    """checkpoint SHA-256 -> ids of the entries on ``base`` that have it: from their
    ``submission.yaml`` (``model.checkpoint.sha256``) and from their records
    (``provenance.checkpoint_sha256``). Unreadable files are skipped (the base is merged, trusted)."""
    from harness.submission.yamlsafe import load_yaml_text

    names = [n.decode("utf-8", "replace") for n in
             _git_bytes(root, "ls-tree", "-r", "-z", "--name-only", base, "--", "submissions",
                        "leaderboard/results").split(b"\0") if n]
    yamls = [n for n in names if re.fullmatch(rf"submissions/{ENTRY_ID}/submission\.yaml", n)]
    records = [n for n in names if re.fullmatch(rf"leaderboard/results/{ENTRY_ID}\.json", n)]
    found: dict[str, set[str]] = {}
    for path, data in _blobs(root, base, yamls + records).items():
        try:
            if path.endswith(".yaml"):
                spec = load_yaml_text(data.decode("utf-8"), path)
                sha, eid = spec["model"]["checkpoint"]["sha256"], path.split("/")[1]
            else:
                rec = json.loads(data)
                sha, eid = rec["provenance"]["checkpoint_sha256"], rec.get("submission_id") or Path(path).stem
        except Exception:  # noqa: BLE001 - a malformed file on the base is the board build's to refuse
            continue
        if isinstance(sha, str) and isinstance(eid, str):
            found.setdefault(sha.lower(), set()).add(eid)
    return found


# ------------------------------------------------------------------------------------ the folder
def folder_problems(folder: Path, max_bytes: int) -> list[str]:
    """Limits on the files in a submission folder: size, no symlinks, no executables, regular files."""
    problems = []
    top = folder.parent.parent
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(top) if top in p.parents else p
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
from harness.submission.load import license_problems  # noqa: E402, F401


# ------------------------------------------------------------------------------------- the model
def input_spec(sub) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and the number of classes of the model's inputs, from the dataset registry; for a
    custom dataset, from its file in the submission folder (it is part of the PR)."""
    from harness.data import registry as datasets

    spec = sub.spec
    d = datasets.get(spec.dataset)
    prep = spec.resize_crop
    if d.custom:
        from harness.data.loaders import load_test_data, num_classes_of

        data = load_test_data(spec.dataset, None, custom_path=sub.dataset_path(), preprocessing=prep)
        return tuple(data.input_shape), num_classes_of(data)
    shape = d.shape_for(prep)
    if shape is None or d.num_classes is None:
        raise HarnessError(f"the input shape of {d.title} under resize_crop {prep!r} is known only from the data; "
                           f"declare one of {', '.join(p for p in d.preprocessings if p != 'none')}",
                           field="model.preprocessing.resize_crop")
    return shape, d.num_classes


def build_on_meta(sub, max_bytes: int | None):
    """The architecture built on the meta device (no memory, no weights) and its parameters counted;
    refused if its tensors would take more than ``max_bytes``. (None, None) when the model cannot be
    built on the meta device (ONNX, TorchScript, zoo entries whose constructors need real tensors):
    the worker counts it after loading."""
    import torch

    from harness.models.architectures import build_architecture
    from leaderboard.importers.robustbench import offline_cpu_build

    model = sub.spec.model
    if model.format != "state_dict":
        return None, None
    try:
        with offline_cpu_build(), torch.device("meta"):
            net = build_architecture(model.architecture or "", model.architecture_kwargs, max_bytes=max_bytes)
    except HarnessError:
        raise
    except Exception:  # noqa: BLE001 - a zoo constructor that needs real tensors: counted in the worker
        return None, None
    tensors = list(net.parameters()) + list(net.buffers())
    count = ModelCount(params=sum(p.numel() for p in net.parameters()),
                       param_bytes=sum(t.numel() * t.element_size() for t in tensors),
                       forward_passes=model.forward_passes, where="meta device")
    if max_bytes is not None and count.param_bytes > max_bytes:
        raise HarnessError(f"{model.architecture} has {count.params:.3g} parameters ({count.param_bytes / 2**30:.3g} "
                           f"GiB), over the memory limit of {max_bytes / 2**30:.3g} GiB", field="model.architecture")
    return net, count


def count_flops(sub, net, count: ModelCount, input_shape: tuple[int, int, int]) -> None:
    """The meta-built ``net`` materialised empty (zeros: no checkpoint, no random initialisation),
    wrapped as every stage sees it (:class:`harness.models.load.NormalizedModel`), and its inference
    FLOPs counted with fvcore (:func:`harness.compute.flops.count_inference_flops`, as the flops stage
    does) into ``count``; on failure ``count.why_not`` says why."""
    import torch

    from harness.compute.flops import count_inference_flops
    from harness.models.load import NormalizedModel
    from leaderboard.importers.robustbench import offline_cpu_build

    pre = sub.spec.model.preprocessing
    try:
        with offline_cpu_build():
            net = net.to_empty(device="cpu")
            with torch.no_grad():
                for t in list(net.parameters()) + list(net.buffers()):
                    t.zero_()
            module = NormalizedModel(net, pre.mean, pre.std, channels=input_shape[0])
            with torch.no_grad():
                fc = count_inference_flops(module, input_shape)
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 - fvcore cannot trace it: the budget is the cap
        count.why_not = f"fvcore cannot trace it ({type(e).__name__}: {one_line(e, 200)})"
        return
    count.flops_per_pass, count.params, count.skipped_ops = fc.total, fc.params, dict(fc.skipped)


def forward_budget(flops_per_pass: float | None, checkpoint_bytes: int, cap: float) -> tuple[float, bool]:
    """Wall-clock seconds for each phase of the forward job, and whether they came from the FLOPs
    (else: the cap). See the module docstring."""
    if flops_per_pass is None:
        return cap, False
    scaled = (BUDGET_BASE_S + (FORWARD_INPUTS + 2) * flops_per_pass / CPU_FLOPS_PER_S
              + checkpoint_bytes / IO_BYTES_PER_S)
    return (scaled, True) if scaled < cap else (cap, False)


def sandboxed_forward(sub, input_shape: tuple[int, int, int], num_classes: int, *, budget: float,
                      count_flops: bool, limits: dict, opts: PRCheckOptions, say: Callable[[str], None]
                      ) -> tuple[ForwardResult, dict[str, Any]]:
    """The forward job in the evaluation worker; its result file read back and checked here."""
    import numpy as np
    import torch

    from harness.data.npzsafe import read_npz
    from harness.models.load import check_logits
    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import WorkerFailed, run_worker

    work = Path(tempfile.mkdtemp(prefix="pr-check-"))
    try:
        cpu = min(float(limits["cpu"]), budget * (os.cpu_count() or 1))
        job = WorkerJob(
            submission=str(sub.yaml_path), submission_sha256=sub.yaml_sha256, state_dir=str(work), stages=[],
            device="cpu", n_examples=0, batch_size=FORWARD_INPUTS, progress=False, trust_code=False,
            memory_limit=limits["memory"], cpu_limit=cpu, isolate_network=opts.sandbox != "bwrap",
            parent_pid=None if opts.sandbox == "bwrap" else os.getpid(), max_model_bytes=limits["memory"],
            kind="forward", forward={"input_shape": list(input_shape), "num_classes": num_classes,
                                     "n_inputs": FORWARD_INPUTS, "seed": 0, "count_flops": count_flops})
        read_only = [sub.folder, sub.checkpoint_path().parent]
        t0 = time.monotonic()
        try:
            run_worker(job, mode=opts.sandbox, stage_timeout=budget, read_only=read_only, echo=say)
        except WorkerFailed as e:
            msg = str(e).split("; finished stages are kept in", 1)[0].replace(" (--stage-timeout)", "")
            if "wall-clock limit" in msg:
                msg += (" (the forward budget: 60 s + 6 x FLOPs / 1e9 per s + checkpoint bytes / 20 MB per s, "
                        "capped by the maintainer's --max-forward-seconds)")
            log = work / "worker.log"
            if opts.keep is not None and log.is_file():
                Path(opts.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, Path(opts.keep) / "worker.log")
                msg = msg.replace(str(log), str(Path(opts.keep) / "worker.log"))
            raise HarnessError(f"sandboxed forward pass: {msg}")
        wall = time.monotonic() - t0
        n = FORWARD_INPUTS
        arrays = read_npz(work / "forward.npz", max_file_bytes=64 * 2**20, max_total_bytes=64 * 2**20,
                          names=("logits", "seconds", "flops", "params"), what="the forward job's result")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        logits, seconds = arrays["logits"], float(arrays["seconds"])
        flops, params = float(arrays["flops"]), int(arrays["params"])
    except (KeyError, TypeError, ValueError):
        raise HarnessError("the forward job's result is malformed (missing or non-scalar fields)")
    check_logits(torch.from_numpy(np.ascontiguousarray(logits)), n, num_classes,
                 stage=f"forward pass on {n} random inputs")  # again, on what the worker returned
    if logits.dtype.kind != "f" or not (seconds >= 0 and seconds < float("inf")):
        raise HarnessError("the forward job's result is malformed (logits or time)")
    result = ForwardResult(n, tuple(input_shape), num_classes, seconds, wall, budget, False)
    return result, {"flops": flops if flops >= 0 else None, "params": params if params >= 0 else None}


# ------------------------------------------------------------------------------------- the check
def _say(progress: bool) -> Callable[[str], None]:
    return (lambda msg: print(one_line(msg), file=sys.stderr, flush=True)) if progress else (lambda msg: None)


def run_pr_check(opts: PRCheckOptions) -> PRCheckReport:
    say = _say(opts.progress)
    root = Path(git(Path(opts.root), "rev-parse", "--show-toplevel").strip())
    rep = PRCheckReport(opts.base)
    changes, bad_names = changed_files(root, opts.base)
    rep.changes = changes
    rep.base_sha = git(root, "rev-parse", "--short", f"{opts.base}^{{commit}}").strip()
    if bad_names:
        more = f" (and {len(bad_names) - 1} more)" if len(bad_names) > 1 else ""
        rep.problem(f"file name {bad_names[0]}{more}: a file name in a pull request must be printable UTF-8; "
                    "rename it")
        return rep
    rep.entry_id, rep.kind, scope, rep.submission_pr = scope_problems(root, opts.base, rep.changes,
                                                                      tuple(opts.allow_update))
    for p in scope:
        rep.problem(p)
    if rep.kind == "records":
        check_records(rep, root, opts.base)
        return rep
    if rep.kind == "attack":
        if not rep.problems:
            check_attack(rep, root, rep.entry_id, opts, say)
        return rep
    if rep.problems:  # nothing is checked further until the PR holds one entry and nothing else
        return rep
    eid = rep.entry_id
    assert eid is not None
    rep.check("path rules", f"one {'new' if rep.kind == 'new' else 'updated'} entry, nothing outside "
                            f"submissions/{eid}/ ({len(rep.changes)} file(s))")
    _check_entry(rep, root, eid, opts, say)
    return rep


def _check_entry(rep: PRCheckReport, root: Path, eid: str, opts: PRCheckOptions, say) -> None:
    from harness.runner.evaluate import resolve_limits
    from harness.stages import EvalOptions
    from harness.submission.load import check_files, parse_submission

    folder = root / "submissions" / eid
    yaml_path = folder / "submission.yaml"
    rel_yaml = f"submissions/{eid}/submission.yaml"
    if not folder.is_dir() or folder.is_symlink():
        rep.problem(f"submissions/{eid}/: the PR removes or does not contain the entry's folder "
                    "(only maintainers remove entries)")
        return
    say(f"pr-check: entry {eid} ({rep.kind}), base {opts.base} ({rep.base_sha})")

    # the folder, the schema, the licence
    for p in folder_problems(folder, int(opts.max_file_mb * 1e6)):
        rep.problem(p)
    if not yaml_path.is_file() or yaml_path.is_symlink():
        rep.problem(f"{rel_yaml}: missing")
    if rep.problems:  # files the harness does not accept are neither parsed nor run
        return
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    rep.check("folder", f"{n_files} file(s), no symlinks or executables, each at most {opts.max_file_mb:g} MB")
    try:
        sub, problems = parse_submission(yaml_path)
    except HarnessError as e:
        rep.problem(str(e).replace(str(root) + os.sep, ""))
        return
    for p in problems:
        rep.problem(f"{rel_yaml}: {p}")
    if sub is None:
        return
    rep.name = sub.spec.name
    rep.check("schema", "valid")
    for p in license_problems(sub.spec.license, folder):
        rep.problem(f"{rel_yaml}: {p}")
    if rep.problems:
        return
    rep.check("licence", sub.spec.license)

    # the same checkpoint as an entry already on the base branch
    ck = sub.spec.model.checkpoint
    others = sorted(base_checkpoints(root, opts.base).get(ck.sha256.lower(), set()) - {eid})
    if others:
        rep.problem(f"{rel_yaml}: model.checkpoint.sha256: this checkpoint ({ck.sha256[:12]}...) is already on the "
                    f"base branch as entry {others[0]!r}" + (f" (and {_few(others[1:])})" if len(others) > 1 else "")
                    + "; the same checkpoint under a new id is refused (a maintainer updates that entry instead)")
        return
    rep.check("duplicate checkpoint", "none on the base branch")
    if sub.spec.model.format == "torchscript":
        from harness.models.load import TORCHSCRIPT_REFUSED

        rep.problem(f"{rel_yaml}: model.format: {TORCHSCRIPT_REFUSED}")
        return

    # hosting, then every file against its hash
    if ck.url is not None:
        from harness.submission.hosted import fetch

        say(f"pr-check: fetching {ck.url}")
        try:
            path, downloaded = fetch(ck.url, ck.sha256, progress=opts.bars, size_bytes=ck.size_bytes)
        except HarnessError as e:
            rep.problem(f"{rel_yaml}: {e}")
            return
        rep.check("hosted checkpoint", f"{'downloaded' if downloaded else 'found in the cache'} and verified: "
                                                f"{path.stat().st_size / 1e6:.1f} MB, sha256 {ck.sha256[:12]}...")
    for p in check_files(sub):
        rep.problem(f"{rel_yaml}: {p}")
    if rep.problems:  # the model is not run as submitted
        return
    rep.check("manifest", "every file matches its SHA-256")

    # the architecture on the meta device, its FLOPs; then the sandboxed forward pass
    model = sub.spec.model
    try:
        limits = resolve_limits(sub, EvalOptions())
        shape, num_classes = input_spec(sub)
        say(f"pr-check: building {model.architecture or model.format} on the meta device")
        net, count = build_on_meta(sub, limits["memory"])
        if count is not None:
            rep.check("architecture (meta device)", f"{model.architecture}: {_si(count.params)} parameters "
                                                    f"({count.param_bytes / 1e6:.1f} MB with the buffers)")
            count_flops(sub, net, count, shape)
            del net
    except HarnessError as e:
        rep.problem(f"{rel_yaml}: {str(e).replace(str(root) + os.sep, '')}")
        return
    if count is None:
        rep.notes.append(f"a {model.format} model" + (f" ({model.architecture})" if model.architecture else "")
                         + " cannot be built on the meta device: its parameters and FLOPs are counted in the "
                         "sandbox after loading, and the forward budget is the cap")
    elif count.flops_per_pass is None:
        rep.notes.append(f"FLOPs not counted: {count.why_not}; the forward budget is the cap")
    else:
        rep.check("FLOPs (fvcore, on the empty model)", _flops_text(count))
    ckpt_bytes = sub.checkpoint_path().stat().st_size
    cap = min(float(opts.max_forward_s), float(limits["stage_timeout"]))
    budget, scaled = forward_budget(None if count is None else count.flops_per_pass, ckpt_bytes, cap)
    say(f"pr-check: forward pass on {FORWARD_INPUTS} random inputs {'x'.join(map(str, shape))} in the sandboxed "
        f"worker (budget {budget:.0f} s per phase)")
    try:
        fwd, counted = sandboxed_forward(sub, shape, num_classes, budget=budget, count_flops=count is None,
                                         limits=limits, opts=opts, say=say)
    except HarnessError as e:
        rep.problem(f"{rel_yaml}: {str(e).replace(str(root) + os.sep, '')}")
        return
    fwd.budget_from_flops = scaled
    how = ("scaled by the FLOPs: 60 s + 6 x FLOPs / 1e9 per s + checkpoint bytes / 20 MB per s" if scaled
           else "the cap (--max-forward-seconds, or the maintainer's stage timeout)")
    rep.check("forward pass (sandboxed worker)",
              f"{fwd.n_inputs} random inputs {'x'.join(map(str, fwd.input_shape))}: {fwd.seconds:.2f} s "
              f"(the worker in all, start and load included: {fwd.wall_seconds:.1f} s); budget {budget:.0f} s "
              f"per phase, {how}")
    rep.check("logits", f"shape ({fwd.n_inputs}, {fwd.num_classes}), all finite")
    if count is None:
        count = ModelCount(params=counted["params"], flops_per_pass=counted["flops"],
                           forward_passes=model.forward_passes, where="sandbox",
                           why_not="" if counted["flops"] is not None else "fvcore cannot trace it")
        rep.check("parameters and FLOPs (fvcore, in the sandbox)",
                  f"{_si(count.params)} parameters; " + (_flops_text(count) if count.flops_per_pass is not None
                                                          else "FLOPs not counted (fvcore cannot trace it)"))
    rep.count, rep.forward = count, fwd


def _flops_text(count: ModelCount) -> str:
    text = f"{_si(count.flops_per_pass)} per forward pass"
    if count.forward_passes > 1:
        text += f", {_si(count.flops)} per prediction ({count.forward_passes} forward passes)"
    if count.skipped_ops:
        text += f"; operators fvcore does not count: {_few(sorted(count.skipped_ops))}"
    return text


def _si(v: float | int | None) -> str:
    from leaderboard.fmt import si

    return si(v)


# ------------------------------------------------------------------------------------ the report
def md(text: object) -> str:
    """A stranger's string as one inert line of Markdown (a table cell or a list item): control,
    escape, bidi and line-separator characters escaped or folded (:func:`harness.core.errors.one_line`),
    table pipes, backticks and HTML angle brackets replaced by their HTML entities (no backslash
    escapes: a stranger's trailing backslash cannot undo them)."""
    return (one_line(text).replace("&", "&amp;").replace("|", "&#124;").replace("`", "&#96;")
            .replace("<", "&lt;").replace(">", "&gt;"))


def render_report(rep: PRCheckReport) -> str:
    n = len(rep.problems)
    status = "passed" if rep.ok else f"failed ({n} problem{'s' if n != 1 else ''})"
    if rep.kind == "records":
        head = f"## pr-check: records PR: {status}"
    elif rep.kind == "attack":
        head = (f"## pr-check: attack {md(rep.entry_id or '')}/{md(rep.attack_name or '')}: {status}"
                if rep.attack_name else f"## pr-check: attack PR: {status}")
    elif rep.entry_id is not None:
        head = f"## pr-check: {md(rep.entry_id)} ({rep.kind}): {status}"
    else:
        head = f"## pr-check: {'no entry' if rep.submission_pr else 'not a submission PR'}: {status}"
    intro = f"Base {md(rep.base)} ({md(rep.base_sha)}); {len(rep.changes)} changed file(s)."
    if rep.name is not None:
        intro += f" Entry name: {md(rep.name)}."
    out = [head, "", intro, ""]
    if rep.problems:
        out += ["### Problems", ""] + [f"- {md(p)}" for p in rep.problems] + [""]
    if rep.checks:
        out += ["### Checks", "", "| Check | Result | Time |", "|---|---|---|"]
        out += [f"| {md(what)} | {md(result)} | {t:.1f} s |" for what, result, t in rep.checks]
        out += [f"| total | | {rep.seconds:.1f} s |", ""]
    if rep.ok and rep.kind == "attack":
        out += ["No attack record is written here: the trusted job runs `harness attack-check --out "
                "leaderboard/results/attacks/<id>/<name>.json` and signs it; only then does the board apply it.", ""]
    elif rep.ok and rep.entry_id is not None:
        out += ["The board's figures come only from the trusted evaluation on the GPU runner (a maintainer starts "
                "it), which signs its record; this check runs no attack and claims no accuracy.", ""]
    if rep.notes:
        out += ["### Notes", ""] + [f"- {md(x)}" for x in rep.notes] + [""]
    return "\n".join(out)
