"""Loading a submission: parse and validate ``submission.yaml``, resolve the checkpoint, check the licence and
every file's hash (:mod:`harness.submission.manifest`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from harness.core.errors import HarnessError, field_path, one_line
from harness.core.files import confine, sha256_file
from harness.submission.checkpoint import resolve_checkpoint
from harness.submission.schema import (
    Checkpoint,
    Evaluation,
    Limits,
    ModelSpec,
    Paper,
    Preprocessing,
    Smoothing,
    Submission,
    ThreatModel,
    Training,
    results_sha256,
)
from harness.submission.yamlsafe import read_yaml


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return one_line(f"{self.field}: {self.message}" if self.field else self.message)


@dataclass(frozen=True)
class LoadedSubmission:
    spec: Submission
    folder: Path
    yaml_path: Path
    yaml_sha256: str
    #: the folder digest (harness.submission.manifest) when every file was verified at load time
    files_sha256: str | None = None

    @property
    def results_sha256(self) -> str:
        """The hash of the result-relevant fields (:func:`results_sha256`)."""
        return results_sha256(self.spec)

    def checkpoint_path(self) -> Path:
        return resolve_checkpoint(self.spec, self.folder)

    def dataset_path(self) -> Path | None:
        if self.spec.dataset_path is None:
            return None
        return confine(self.folder, self.spec.dataset_path, field="dataset_path")


def _field_names() -> set[str]:
    models = (Submission, ModelSpec, Training, Preprocessing, Evaluation, Checkpoint, ThreatModel, Smoothing, Paper,
              Limits)
    return {name for cls in models for name in cls.model_fields}


#: fields that a Submission-level check blames, by their full path
NESTED_FIELDS = {"resize_crop": ("model", "preprocessing", "resize_crop")}


def validation_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        elif e["type"] == "value_error" and (m := re.match(r"([a-z_0-9]+) ", msg)) \
                and m.group(1) in _field_names() and loc[-1:] != (m.group(1),):
            # cross-field checks (model validators) start their message with the field they blame
            loc = loc + NESTED_FIELDS.get(m.group(1), (m.group(1),))
        problems.append(Problem(field_path(loc), msg))
    return problems


def parse_submission(path: str | Path) -> tuple[LoadedSubmission | None, list[Problem]]:
    """Parse and validate the schema; returns the submission (or None) and every problem found.

    Raises a one-line HarnessError when the file cannot be read or is not well-formed YAML."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        return None, [Problem("", "the file must hold a YAML mapping of submission fields")]
    try:
        spec = Submission.model_validate(raw)
    except ValidationError as err:
        return None, validation_problems(err)
    except (ValueError, TypeError, RecursionError, OverflowError) as e:  # never a traceback
        return None, [Problem("", f"invalid submission: {type(e).__name__}: {one_line(e, 200)}")]
    try:
        loaded = LoadedSubmission(spec, path.parent.resolve(), path.resolve(), sha256_file(path))
    except (OSError, RuntimeError, ValueError) as e:
        raise HarnessError(f"{path}: cannot read: {e}")
    return loaded, []


#: a licence file in a submission folder: LICENSE, LICENCE, COPYING, optionally with a suffix
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING)([._-].*)?$", re.IGNORECASE)


def license_problem(license_text: str, folder: Path) -> str | None:
    """Why the submission has no usable licence, or None. A licence must be present: an SPDX
    expression in ``license`` (e.g. MIT, Apache-2.0, CC-BY-4.0; checked with ``packaging.licenses``),
    or a LICENSE file in the folder (needed anyway for a custom ``LicenseRef-...``)."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    try:
        has_file = any(LICENSE_FILE.match(p.name) and p.is_file() and not p.is_symlink() for p in folder.iterdir())
    except OSError:
        has_file = False
    try:
        canon = canonicalize_license_expression(license_text)
    except InvalidLicenseExpression:
        canon = None
    if has_file or (canon is not None and "LicenseRef-" not in canon):
        return None
    shown = one_line(repr(license_text), 100)
    what = (f"{shown} is a custom licence reference" if canon else
            f"{shown} is not an SPDX licence expression (e.g. MIT, Apache-2.0, CC-BY-4.0)")
    return f"{what} and the folder has no LICENSE file; name an SPDX licence or add the licence text"


def license_problems(license_text: str, folder: Path) -> list[str]:
    """:func:`license_problem` as the list of lines ``license: ...`` that pr-check reports."""
    problem = license_problem(license_text, folder)
    return [] if problem is None else [f"license: {problem}"]


def check_files(sub: LoadedSubmission, *, check_hash: bool = True) -> list[Problem]:
    """Problems with the files a valid schema points at: folder name, paths, existence, hashes, and
    the coverage of every file of the folder by a hash (:mod:`harness.submission.manifest`)."""
    from harness.submission import manifest

    problems: list[Problem] = []
    spec = sub.spec
    if sub.folder.name != spec.id:
        problems.append(Problem("id", f"must equal the folder name {one_line(repr(sub.folder.name), 100)}, "
                                      f"got {spec.id!r}"))
    if (why := license_problem(spec.license, sub.folder)) is not None:
        problems.append(Problem("license", why))
    if spec.dataset == "custom":
        try:
            data = sub.dataset_path()
            if data is not None and not data.is_file():
                problems.append(Problem("dataset_path", f"file not found: {data}"))
        except HarnessError as e:
            problems.append(Problem("dataset_path", str(e).split(": ", 1)[-1]))
    if check_hash:
        found, _ = manifest.check(sub)
        problems += [Problem(p.field, p.message) for p in found]
    else:
        try:
            ck = resolve_checkpoint(spec, sub.folder)
            if not ck.is_file():
                problems.append(Problem("model.checkpoint.path", f"file not found: {ck}"))
        except HarnessError as e:
            problems.append(Problem(e.field or "model.checkpoint", str(e).split(": ", 1)[-1]))
    return problems


def load_submission(path: str | Path, *, check_hash: bool = True) -> LoadedSubmission:
    """Parse, validate and check files; raise a one-line HarnessError on the first problem.

    With ``check_hash``, the result carries the folder digest (``files_sha256``) of the files it
    verified, which the record's provenance keeps."""
    sub, problems = parse_submission(path)
    if sub is not None:
        problems = check_files(sub, check_hash=check_hash)
    if problems:
        extra = f" (and {len(problems) - 1} more; run `harness validate {path}`)" if len(problems) > 1 else ""
        raise HarnessError(f"{path}: {problems[0]}{extra}")
    assert sub is not None
    if check_hash:
        sub = replace(sub, files_sha256=verify_files(sub))  # the manifest's cache: no second hashing
    return sub


def verify_files(sub: LoadedSubmission) -> str:
    """Every file of the submission is covered by a matching SHA-256; returns the folder digest
    (``provenance.files_sha256``). Call before reading any file of the submission."""
    from harness.submission.manifest import verify_files as _verify

    return _verify(sub)

