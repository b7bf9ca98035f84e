"""Every file of a submission is covered by a SHA-256, and the folder as a whole by one digest.

The rule (checked by ``harness validate``, by :func:`verify_files` before any model file is read, and
by the leaderboard build):

- every regular file in the submission folder, in any sub-folder, is covered:
  ``submission.yaml`` by itself (its hash is the record's ``provenance.submission_sha256``), the
  checkpoint by ``model.checkpoint.sha256``, and every other file (ONNX external data, a custom
  data set, a README) by an entry ``<relative path>: <sha256>`` under the submission's ``files``;
- every entry of ``files`` names an existing file whose SHA-256 matches;
- symlinks may point only inside the folder (the file they point at is what is covered), and
  anything that is not a regular file, a folder or such a symlink (a FIFO, a device) is refused.

A single-file submission (``submission.yaml`` plus its checkpoint) needs no ``files`` section.

The top-level folder ``attacks/`` is not part of the entry: it holds external attacks against it
(``attacks/<name>/attack.yaml`` + ``adversarial.npz``, :mod:`harness.record.attack`), added later by
other people and checked by ``harness attack-check``, so it is left out of the walk and of the digest
(adding an attack keeps the entry's record valid). Nothing of the entry may live there.

The **folder digest** (``provenance.files_sha256`` of a record) is the SHA-256 of the lines
``<sha256>  <relative path>\\n`` (the format of ``sha256sum``), sorted by path, of every file of the
folder, followed by ``<sha256>  <package>:<path>`` (or ``url:<url>``) for a checkpoint that ships
inside an allowed package or is hosted. The line of ``submission.yaml`` holds not the file's
SHA-256 but its ``results_sha256`` (:func:`harness.submission.results_sha256`: the hash of the
result-relevant fields), so that a metadata-only edit (a name, the licence, notes) keeps the digest
and the record. ``sha256sum`` reproduces it for a single-folder submission, given that hash::

    cd submissions/<id> && R=<results_sha256> && find . -type f -printf '%P\\n' | LC_ALL=C sort \\
      | xargs sha256sum | sed "s/^[0-9a-f]*  submission.yaml$/$R  submission.yaml/" | sha256sum

Records made before ``results_sha256`` existed hold the :func:`legacy_digest` (the file's own
SHA-256 on that line).
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file

if TYPE_CHECKING:
    from harness.submission.load import LoadedSubmission

MAX_FILES = 1000
MAX_DEPTH = 16
YAML_NAME = "submission.yaml"
#: the folder of external attacks against an entry (harness.record.attack.ATTACKS_DIR)
ATTACKS_DIR = "attacks"


@dataclass(frozen=True)
class FileProblem:
    field: str
    message: str


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return one_line(e, 200) or type(e).__name__


def list_files(folder: Path) -> tuple[dict[str, Path], list[FileProblem]]:
    """Regular files under ``folder`` by relative POSIX path, and the problems met on the way."""
    files: dict[str, Path] = {}
    problems: list[FileProblem] = []
    try:
        root = folder.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        return files, [FileProblem("", f"cannot read the submission folder: {_reason(e)}")]

    def walk(d: Path, rel: PurePosixPath, depth: int) -> None:
        if depth > MAX_DEPTH:
            problems.append(FileProblem("files", f"{rel}: folders nested deeper than {MAX_DEPTH} levels"))
            return
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            problems.append(FileProblem("files", f"{rel or '.'}: cannot list: {_reason(e)}"))
            return
        for entry in entries:
            r = rel / entry.name
            if depth == 0 and entry.name == ATTACKS_DIR and entry.is_dir(follow_symlinks=False):
                continue  # external attacks against the entry, not the entry's files (module docstring)
            if len(files) >= MAX_FILES:
                problems.append(FileProblem("files", f"more than {MAX_FILES} files in the submission folder"))
                return
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = Path(entry.path).resolve(strict=True)
                    if target != root and root not in target.parents:
                        problems.append(FileProblem("files", f"{r}: a symlink that leaves the submission folder "
                                                             "(escapes it); refused"))
                    continue  # a symlink inside the folder: the file it points at is covered
                if stat.S_ISDIR(st.st_mode):
                    walk(Path(entry.path), r, depth + 1)
                elif stat.S_ISREG(st.st_mode):
                    files[str(r)] = Path(entry.path)
                else:
                    problems.append(FileProblem("files", f"{r}: not a regular file (FIFO, socket or device); refused"))
            except (OSError, RuntimeError, ValueError) as e:  # broken links, symlink loops
                problems.append(FileProblem("files", f"{r}: cannot resolve: {_reason(e)}"))

    walk(root, PurePosixPath(), 0)
    return files, problems


def _relative_to(root: Path, target: Path) -> str | None:
    try:
        return PurePosixPath(target.relative_to(root)).as_posix()
    except ValueError:
        return None


def _line(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def check(sub: "LoadedSubmission") -> tuple[list[FileProblem], str | None]:
    """Every problem with the submission's files, and the folder digest (None when there are problems).

    Hashes every file once."""
    problems, digests = _check(sub)
    return problems, None if digests is None else digests[0]


def legacy_digest(sub: "LoadedSubmission") -> str | None:
    """The folder digest as records made before ``provenance.results_sha256`` computed it (the line of
    submission.yaml holds the file's own SHA-256), or None when a file does not match its hash; for
    ``scripts/migrate_records.py`` and for reading such records."""
    problems, digests = _check(sub)
    return None if problems or digests is None else digests[1]


def _check(sub: "LoadedSubmission") -> tuple[list[FileProblem], tuple[str, str] | None]:
    """The problems, and the (folder digest, legacy folder digest) when there are none."""
    from harness.submission.checkpoint import resolve_checkpoint

    spec = sub.spec
    problems: list[FileProblem] = []
    try:
        root = sub.folder.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        return [FileProblem("", f"cannot read the submission folder: {_reason(e)}")], None
    found, walk_problems = list_files(root)
    problems += walk_problems
    started = time.time()
    key = _cache_key(sub, root, found) if not walk_problems else None
    if key is not None and key in _VERIFIED:
        return [], _VERIFIED[key]

    # what covers each file: relative path -> (field, expected sha256)
    expected: dict[str, tuple[str, str]] = {}
    yaml_rel = _relative_to(root, sub.yaml_path)
    if yaml_rel is not None:
        expected[yaml_rel] = ("", sub.yaml_sha256)
    package_line: str | None = None
    ck_sha = spec.model.checkpoint.sha256
    try:
        ck = resolve_checkpoint(spec, sub.folder)
    except HarnessError as e:
        problems.append(FileProblem(e.field or "model.checkpoint.path", str(e).split(": ", 1)[-1]))
        ck = None
    if ck is not None:
        hosted = spec.model.checkpoint.url is not None  # in the local cache (submission.hosted), outside the folder
        if spec.model.checkpoint.package is None and not hosted:
            rel = _relative_to(root, ck)
            if rel is not None:
                expected[rel] = ("model.checkpoint.sha256", ck_sha)
            if rel not in found:
                problems.append(FileProblem("model.checkpoint.path", f"file not found: {ck}"))
        elif not _is_regular(ck):
            problems.append(FileProblem("model.checkpoint.path", f"file not found: {ck}"))
        else:
            actual = sha256_file(ck)
            if actual != ck_sha:
                problems.append(FileProblem("model.checkpoint.sha256", f"checkpoint hash mismatch: file has {actual}, "
                                                                       f"submission says {ck_sha}"))
            package_line = _line(ck_sha, f"url:{spec.model.checkpoint.url}" if hosted
                                 else f"{spec.model.checkpoint.package}:{spec.model.checkpoint.path}")
    for name, digest in (spec.files or {}).items():
        field = f"files.{name}"
        try:
            target = (root / name).resolve(strict=True)
        except FileNotFoundError:
            problems.append(FileProblem(field, "file not found"))
            continue
        except (OSError, RuntimeError, ValueError) as e:
            problems.append(FileProblem(field, f"cannot resolve: {_reason(e)}"))
            continue
        rel = _relative_to(root, target)
        if rel is None:
            problems.append(FileProblem(field, "escapes the submission folder (through a symlink)"))
        elif rel not in found:
            problems.append(FileProblem(field, "not a regular file"))
        elif rel in expected:
            other = expected[rel][0] or "submission.yaml itself"
            problems.append(FileProblem(field, f"already covered by {other}; list each file once"))
        else:
            expected[rel] = (field, digest)

    lines: list[str] = []
    legacy: list[str] = []
    for rel, path in sorted(found.items()):
        if rel not in expected:
            try:
                hint = f"add `{rel}: {sha256_file(path)}` under `files:`"
            except OSError as e:
                hint = f"cannot read it: {_reason(e)}"
            problems.append(FileProblem("files", f"{rel} is not covered by any hash; {hint}"))
            continue
        field, want = expected[rel]
        try:
            actual = sha256_file(path)
        except OSError as e:
            problems.append(FileProblem(field or "files", f"{rel}: cannot read: {_reason(e)}"))
            continue
        if actual != want:
            if field == "model.checkpoint.sha256":
                msg = f"checkpoint hash mismatch: file has {actual}, submission says {want}"
            elif field == "":
                field, msg = "", f"{rel} changed while it was being checked"
            else:
                msg = f"hash mismatch: file has {actual}, submission says {want}"
            problems.append(FileProblem(field, msg))
        # submission.yaml enters the digest by its result-relevant fields only (a metadata edit keeps it)
        lines.append(_line(sub.results_sha256, rel) if rel == yaml_rel else _line(actual, rel))
        legacy.append(_line(actual, rel))
    if problems:
        return problems, None
    if package_line is not None:
        lines.append(package_line)
        legacy.append(package_line)
    digests = (hashlib.sha256("".join(lines).encode("utf-8")).hexdigest(),
               hashlib.sha256("".join(legacy).encode("utf-8")).hexdigest())
    if key is not None and all(st[3] < (started - RACY_SECONDS) * 1e9 for st in key[-1]):
        _VERIFIED[key] = digests
    return [], digests


#: folder digests already verified, by everything they depend on: the declared hashes, and the
#: (size, mtime, ctime, inode) of every file. ctime changes on any write and cannot be set from user
#: space, so a file changed since it was hashed misses the cache (as git's index works). File
#: timestamps are coarse (a few ms), so, like git's "racily clean" rule, a folder with a file changed
#: less than RACY_SECONDS before hashing began is never cached: it is hashed again every time.
_VERIFIED: dict[tuple, tuple[str, str]] = {}
RACY_SECONDS = 2.0


def _cache_key(sub: "LoadedSubmission", root: Path, found: dict[str, Path]) -> tuple | None:
    spec = sub.spec
    ck = spec.model.checkpoint
    try:
        stats = [(rel, *_stat(path)) for rel, path in sorted(found.items())]
        if ck.package is not None:
            from harness.submission.checkpoint import resolve_checkpoint

            stats.append(("package:", *_stat(resolve_checkpoint(spec, sub.folder))))
    except (OSError, ValueError, HarnessError):
        return None
    return (str(root), str(sub.yaml_path), sub.yaml_sha256, ck.path, ck.sha256, ck.package,
            tuple(sorted((spec.files or {}).items())), tuple(stats))


def _stat(path: Path) -> tuple[int, int, int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def verify_files(sub: "LoadedSubmission") -> str:
    """Check that every file of the submission is covered by a matching hash; return the folder digest.

    Call it before reading any file of the submission. Raises a one-line HarnessError on the first problem."""
    problems, digest = check(sub)
    if problems:
        p = problems[0]
        extra = f" (and {len(problems) - 1} more; run `harness validate`)" if len(problems) > 1 else ""
        raise HarnessError(f"{p.message}{extra}", field=p.field or None)
    assert digest is not None
    return digest
