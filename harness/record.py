"""The result record: one plain JSON file per submission (as RobustBench keeps one per model),
validated by a versioned pydantic model, plus ``<id>.examples.npz`` with per-example arrays.

Accuracies are fractions in [0, 1]; each comes with a 95% Clopper-Pearson interval in the field
``<name>_ci95``. Fields of stages that did not run are ``null``.

A record in a pull request is a stranger's input, and the leaderboard believes nothing it cannot
check: :func:`read_record` parses the JSON strictly (bounded size and depth, no duplicate keys, no
NaN or infinities), validates the schema (every accuracy a finite fraction, every compute figure
finite and >= 0, every count bounded) and then every invariant that ties the numbers together
(:func:`record_problems`: each accuracy is k/n with k an integer, its interval is the Clopper-Pearson
interval of k/n, certified <= robust <= clean, AutoAttack's accuracies after each attack fall and
end at the robust accuracy, ...), and the per-example arrays of ``<id>.examples.npz``
(:func:`read_examples`: bounded, shapes read from the headers before anything is allocated, each
summary equal to its array's mean, and the sandwich certified => robust => correct per example).
:func:`check_against_submission` ties the record to its submission (data set, threat model, eps,
the folder digest of :mod:`harness.manifest`). Every refusal is one line naming the file and field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from . import certifiers, datasets
from .errors import HarnessError
from .files import atomic_savez, atomic_write_text, read_bytes_confined
from .signing import RecordSignature
from .stages.registry import STAGE_NAMES, STAGES

if TYPE_CHECKING:
    from .submission import LoadedSubmission

SCHEMA_VERSION = 1
FLOPS_CONVENTION = "fvcore: 1 FLOP = 1 multiply-add (papers such as Bartoldson et al. 2024 count 2)"
# certification methods are those of the registry (harness.certifiers, importable without torch):
# sound ones take part in the sandwich, the others must be marked probabilistic

MAX_RECORD_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
MAX_EXAMPLES_BYTES = 64 << 20  # an .examples.npz of the full 10,000-point test set is well under 1 MB
MAX_EXAMPLES_ARRAY_BYTES = 256 << 20
MAX_GALLERY = 64
#: the image shape (C, H, W) of a data set's gallery: the registry's (harness.datasets); when it
#: depends on the data or the preprocessing (custom, imagenet): 1 or 3 channels, <= 512 px


def image_shape(dataset: str) -> tuple[int, int, int] | None:
    d = datasets.find(dataset)
    return None if d is None else d.shape_for("none")


def _dataset_name(v: str) -> str:
    if datasets.find(v) is None:
        raise ValueError(f"must be one of {', '.join(datasets.names())}, got {str(v)[:60]!r}")
    return v


class _Rec(BaseModel):
    # allow_inf_nan=False: every float of a record is finite
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Frac = Annotated[float, Field(ge=0, le=1)]
NonNeg = Annotated[float, Field(ge=0, le=1e40)]
Count = Annotated[int, Field(ge=0, le=10**15)]
Short = Annotated[str, Field(max_length=2000)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
CI = tuple[Frac, Frac]


#: the one severity vocabulary of trust flags, mildest first: ``info`` (context, e.g. an evaluation
#: on a subset), ``warning`` (read the figure with care), ``error`` (the figure is not valid as run)
SEVERITIES = ("info", "warning", "error")
Severity = Literal["info", "warning", "error"]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class Flag:
    """A trust flag: a structured warning that a figure should not be taken at face value.

    The one flag type of the project: the diagnostics create flags (:mod:`harness.diagnostics.rules`,
    :mod:`harness.diagnostics.aa_messages`), a record stores them under ``diagnostics.flags`` (and
    refuses one of an unknown severity), and the leaderboard shows them, with its own flags for
    reported rows. ``value`` is the measured quantity and ``threshold`` the limit it crossed."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    severity: Severity
    message: Annotated[str, Field(max_length=20_000)] = ""
    value: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a record holds."""
        return {"name": self.name, "severity": self.severity, "message": self.message,
                "value": self.value, "threshold": self.threshold, "details": dict(self.details)}


_FLAG_LIST = TypeAdapter(list[Flag])


class ThreatModelRecord(_Rec):
    norm: Literal["Linf", "L2"]
    eps: float = Field(gt=0, le=1000)


class AutoAttackRecord(_Rec):
    version: Short
    seed: Count
    attacks: list[Short] = Field(max_length=32)
    #: robust accuracy over all N points after each attack, in order ("clean" first)
    accuracy_after: dict[str, Frac] = Field(max_length=33)
    #: AutoAttack's own check messages (warnings it logged), verbatim
    checks: list[Annotated[str, Field(max_length=5000)]] = Field(default_factory=list, max_length=100)
    n_attacked: Count
    n_skipped_misclassified: Count
    n_skipped_certified: Count
    seconds_per_attack: dict[str, NonNeg] = Field(default_factory=dict)
    #: estimated attack seconds saved by not attacking certified points
    seconds_saved_by_certify_first: NonNeg | None = None
    batch_size: int = Field(ge=1, le=10**9)


class TrainingFlopsRecord(_Rec):
    value: NonNeg | None
    source: Literal["declared", "estimated", "unknown"]
    formula: Short
    convention: Short
    multiplier: NonNeg | None = None
    examples_seen: NonNeg | None = None
    forward_flops: NonNeg | None = None


class CertifiedRecord(_Rec):
    method: str
    eps: float = Field(gt=0, le=1000)
    certified_accuracy: Frac
    certified_accuracy_ci95: CI
    acr: NonNeg
    acr_percent: NonNeg
    eps_max: NonNeg
    tolerance: NonNeg
    seconds: NonNeg
    probabilistic: bool = False
    bound_calls_per_example: NonNeg | None = None
    #: certified accuracy at each eps of a grid over [0, eps_max]: [[eps, accuracy], ...]
    curve: list[tuple[NonNeg, Frac]] = Field(default_factory=list, max_length=10_000)
    details: dict[str, Any] = Field(default_factory=dict)


class RankRecord(_Rec):
    """One torchrun rank: where it ran and how many blocks it computed in this run."""
    rank: Count
    device: Short
    device_name: Short | None = None
    host: Short | None = None
    blocks: Count = 0


class Provenance(_Rec):
    harness_version: Short
    python: Short
    packages: dict[str, Short]
    device: Short
    device_name: Short | None = None
    torch_threads: Count | None = None
    checkpoint_sha256: Sha256
    #: SHA-256 of submission.yaml as evaluated (names and notes included)
    submission_sha256: Sha256
    #: SHA-256 of the submission's result-relevant fields (harness.submission.results_sha256): what
    #: ties the record to its submission, so that a metadata-only edit keeps the record. Records made
    #: before it (None) are tied by submission_sha256 instead (scripts/migrate_records.py adds it).
    results_sha256: Sha256 | None = None
    #: SHA-256 over every file of the submission folder (harness.manifest); the build recomputes it
    files_sha256: Sha256 | None = None
    data_source: Short
    seed: Count
    batch_size: int = Field(ge=1, le=10**9)
    started_at: Short
    finished_at: Short
    stage_seconds: dict[str, NonNeg]
    resumed_stages: list[Short] = Field(default_factory=list)
    command: Annotated[str, Field(max_length=20_000)]
    #: how the model ran: sandbox mode, network isolation, memory/CPU/wall-clock limits
    sandbox: dict[str, Any] | None = None
    #: torchrun: how many ranks ran the evaluation (1 without torchrun), the process group's backend
    #: (None without torchrun) and each rank's device (harness.distributed)
    world_size: int = Field(default=1, ge=1, le=100_000)
    backend: Short | None = None
    ranks: list[RankRecord] = Field(default_factory=list, max_length=100_000)
    #: the work split: blocks of ``block_size`` consecutive examples per stage (harness.blocks),
    #: and how many of them a previous, interrupted run had already finished
    block_size: int | None = Field(default=None, ge=1, le=10**9)
    blocks: dict[str, Count] = Field(default_factory=dict)
    resumed_blocks: dict[str, Count] = Field(default_factory=dict)


#: a stage's name: one of the registry's (harness.stages.registry)
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]


# Each stage writes one part of the record, a sub-model of its own: the stage's summary is validated
# against its part (extra fields refused), so a stage can never write another stage's field. The
# record's JSON stays flat (schema_version 1): ResultRecord inherits the parts' fields.
class RecordHead(_Rec):
    schema_version: Literal[1] = SCHEMA_VERSION
    submission_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    name: Annotated[str, Field(max_length=300)]
    dataset: Annotated[str, Field(max_length=64), AfterValidator(_dataset_name)]
    threat_model: ThreatModelRecord
    n_examples: int = Field(ge=1, le=10**9)
    stages: list[StageName] = Field(max_length=len(STAGE_NAMES))


class CleanPart(_Rec):
    """Written by the ``clean`` stage."""
    clean_accuracy: Frac | None = None
    clean_accuracy_ci95: CI | None = None


class AutoAttackPart(_Rec):
    """Written by the ``autoattack`` stage."""
    robust_accuracy: Frac | None = Field(default=None, description="final AutoAttack robust accuracy")
    robust_accuracy_ci95: CI | None = None
    autoattack: AutoAttackRecord | None = None


class FlopsPart(_Rec):
    """Written by the ``flops`` stage."""
    params: Count | None = None
    inference_flops: NonNeg | None = None
    flops_convention: Short | None = None
    flops_skipped_ops: dict[str, Count] | None = None
    flops_by_operator: dict[str, NonNeg] | None = None
    #: why inference FLOPs could not be counted (fvcore cannot trace some converted models)
    flops_error: Short | None = None
    forward_passes: int | None = Field(default=None, ge=1, le=10_000)
    training_flops: TrainingFlopsRecord | None = None


class CertifyPart(_Rec):
    """Written by the ``certify`` stage."""
    certified: dict[str, CertifiedRecord] | None = None
    certify_skipped: str | None = None



class DiagnosticsPart(_Rec):
    """Written by the ``diagnostics`` stage."""

    #: the diagnostics stage's summary; its ``flags`` are :class:`Flag` dicts (validated)
    diagnostics: dict[str, Any] | None = None


def _stage_parts() -> dict[str, type[_Rec]]:
    parts: dict[str, type[_Rec]] = {}
    for e in STAGES:
        part = globals().get(e.record_part)
        if not (isinstance(part, type) and issubclass(part, _Rec)):
            raise AssertionError(f"stage {e.name}: its record part {e.record_part} is not a class of harness.record")
        parts[e.name] = part
    return parts


#: the part of the record each stage writes (named by the stage registry)
STAGE_PARTS: dict[str, type[_Rec]] = _stage_parts()


def _check_parts_disjoint() -> None:
    seen: dict[str, str] = {name: "head" for name in RecordHead.model_fields}
    for stage, part in STAGE_PARTS.items():
        for name in part.model_fields:
            if name in seen:
                raise AssertionError(f"record field {name} belongs to both {seen[name]} and {stage}")
            seen[name] = stage


_check_parts_disjoint()


# the bases in reverse order of the JSON layout (pydantic lists inherited fields base by base,
# from the last base to the first)
class ResultRecord(DiagnosticsPart, CertifyPart, FlopsPart, AutoAttackPart, CleanPart, RecordHead):
    provenance: Provenance
    examples_file: str | None = None
    #: the Ed25519 signature of the trusted evaluation over this record and its examples file
    #: (harness.signing); None: unsigned (a local evaluation)
    signature: RecordSignature | None = None

    @field_validator("diagnostics")
    @classmethod
    def _valid_flags(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None or "flags" not in v:
            return v
        try:
            flags = _FLAG_LIST.validate_python(v["flags"])
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(f"flags{_loc(tuple(first['loc']))}: {first['msg']}") from None
        return {**v, "flags": [f.to_dict() for f in flags]}

    def diagnostic_flags(self) -> list[Flag]:
        """The flags the diagnostics stage recorded."""
        return [Flag(**f) for f in (self.diagnostics or {}).get("flags") or []]

    @field_validator("examples_file")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.npz", v):
            raise ValueError("must be a plain file name ending in .npz (no '/', no '..'), beside the record")
        return v


def _check_record_has_parts() -> None:
    missing = [f"{stage} ({part.__name__})" for stage, part in STAGE_PARTS.items()
               if part not in ResultRecord.__mro__]
    if missing:
        raise AssertionError(f"ResultRecord lacks the record part of stage(s) {', '.join(missing)}")


_check_record_has_parts()


def record_paths(out: Path) -> tuple[Path, Path]:
    """``<id>.json`` and its ``<id>.examples.npz`` beside it."""
    return out, out.with_name(out.name.removesuffix(".json") + ".examples.npz")


def write_record(record: ResultRecord, arrays: dict[str, np.ndarray], out: Path) -> tuple[Path, Path]:
    json_path, npz_path = record_paths(out)
    record.examples_file = npz_path.name
    atomic_savez(npz_path, arrays)
    atomic_write_text(json_path, record.model_dump_json(indent=2) + "\n")
    return json_path, npz_path


# ---------------------------------------------------------------------------------------------
# reading a record: strict JSON, the schema, the invariants, the per-example arrays
class _Refused(ValueError):
    pass


class _Bad:
    """A number the JSON held that a record may not: kept until its key is known, then refused."""

    def __init__(self, why: str):
        self.why = why


def _bad_in(v: Any) -> _Bad | None:
    if isinstance(v, _Bad):
        return v
    if isinstance(v, list):  # lists of numbers, and lists of pairs (curves)
        for x in v:
            if (b := _bad_in(x)) is not None:
                return b
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {k[:80]!r}")
        if (b := _bad_in(v)) is not None:
            raise _Refused(f"{k[:80]}: {b.why}")
        out[k] = v
    return out


def _refuse_constant(name: str) -> Any:
    return _Bad(f"{name} is not a number a record may hold (accuracies and figures are finite)")


def _finite_float(text: str) -> Any:
    v = float(text)
    if not math.isfinite(v):
        return _Bad(f"number {text[:40]} is out of range (not finite as a float)")
    return v


def _short_int(text: str) -> Any:
    if len(text.lstrip("-")) > 40:
        return _Bad(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _depth(obj: Any, limit: int) -> bool:
    """True if ``obj`` nests deeper than ``limit`` (iterative: no recursion on a stranger's data)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def parse_record_json(data: bytes, where: str) -> dict[str, Any]:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, finite numbers, bounded depth."""
    try:
        text = data.decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant,
                         parse_float=_finite_float, parse_int=_short_int)
    except _Refused as e:
        raise HarnessError(f"{where}: invalid result record: {e}")
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: cannot read result record: not UTF-8 (byte {e.start})")
    except RecursionError:
        raise HarnessError(f"{where}: invalid result record: nested too deeply")
    except ValueError as e:  # json.JSONDecodeError, with line and column
        raise HarnessError(f"{where}: cannot read result record: {e}")
    if not isinstance(raw, dict):
        if (b := _bad_in(raw)) is not None:
            raise HarnessError(f"{where}: invalid result record: {b.why}")
        raise HarnessError(f"{where}: a result record must be a JSON object")
    if _depth(raw, MAX_JSON_DEPTH):
        raise HarnessError(f"{where}: invalid result record: nested deeper than {MAX_JSON_DEPTH} levels")
    return raw


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def validate_record(raw: dict[str, Any], where: str) -> ResultRecord:
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        shown = version if isinstance(version, (int, float, type(None))) else str(version)[:20]
        raise HarnessError(f"{where}: schema_version {shown!r} is not the supported {SCHEMA_VERSION}")
    try:
        rec = ResultRecord.model_validate(raw)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise HarnessError(f"{where}: invalid result record: {_loc(tuple(first['loc']))}: {first['msg']}{more}")
    problems = record_problems(rec)
    if problems:
        field, msg = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HarnessError(f"{where}: invalid result record: {field}: {msg}{more}")
    return rec


def read_record(path: Path, *, examples: bool = True) -> ResultRecord:
    """Read, validate and check a result record (see the module docstring); with ``examples``, its
    ``examples_file`` is required and checked against the summary (:func:`read_examples`)."""
    path = Path(path)
    data = read_bytes_confined(path, max_bytes=MAX_RECORD_BYTES, what="result record")
    rec = validate_record(parse_record_json(data, str(path)), str(path))
    if examples:
        read_examples(rec, path)
    return rec


# ---------------------------------------------------------------------------------------------
def _k_of(acc: float, n: int) -> int | None:
    """k if ``acc`` is k/n for an integer k (to float precision), else None."""
    k = round(acc * n)
    return k if abs(acc * n - k) <= 1e-6 * max(1.0, n) else None


def _accuracy_problems(field: str, acc: float | None, ci: tuple[float, float] | None, n: int,
                       ci_field: str | None = None) -> list[tuple[str, str]]:
    from .stats import clopper_pearson

    ci_field = ci_field or f"{field}_ci95"
    if acc is None:
        return [(ci_field, "given without its accuracy")] if ci is not None else []
    if ci is None:
        return [(ci_field, f"missing: {field} comes with its 95% interval")]
    lo, hi = ci
    if not lo <= hi:
        return [(ci_field, f"inverted interval [{lo}, {hi}]")]
    if not lo <= acc <= hi:
        return [(ci_field, f"[{lo}, {hi}] does not contain {field} = {acc}")]
    k = _k_of(acc, n)
    if k is None:
        return [(field, f"{acc} is not a count out of n_examples = {n}")]
    want = clopper_pearson(k, n)
    if abs(want[0] - lo) > 1e-6 or abs(want[1] - hi) > 1e-6:
        return [(ci_field, f"[{lo:.6g}, {hi:.6g}] is not the 95% Clopper-Pearson interval of {k}/{n} "
                           f"[{want[0]:.6g}, {want[1]:.6g}]")]
    return []


def record_problems(rec: ResultRecord) -> list[tuple[str, str]]:
    """Every broken invariant of a schema-valid record, as (field, message)."""
    n = rec.n_examples
    out: list[tuple[str, str]] = []
    ds = datasets.find(rec.dataset)
    if ds is not None and ds.n_test is not None and n > ds.n_test:
        out.append(("n_examples", f"{n} exceeds the {ds.n_test} points of the {ds.title} test set"))
    if len(set(rec.stages)) != len(rec.stages):
        out.append(("stages", "lists a stage twice"))
    out += _accuracy_problems("clean_accuracy", rec.clean_accuracy, rec.clean_accuracy_ci95, n)
    out += _accuracy_problems("robust_accuracy", rec.robust_accuracy, rec.robust_accuracy_ci95, n)
    clean, robust = rec.clean_accuracy, rec.robust_accuracy
    if clean is not None and robust is not None and robust > clean:
        out.append(("robust_accuracy", f"{robust} exceeds clean_accuracy {clean}"))
    if (rec.autoattack is None) != (robust is None):
        out.append(("autoattack", "robust_accuracy and autoattack must be given together"))
    if rec.autoattack is not None and robust is not None:
        aa = rec.autoattack
        after = list(aa.accuracy_after.items())
        if not after:
            out.append(("autoattack.accuracy_after", "is empty"))
        else:
            for name, v in after:
                if _k_of(v, n) is None:
                    out.append((f"autoattack.accuracy_after.{name}", f"{v} is not a count out of n_examples = {n}"))
            if any(b[1] > a[1] for a, b in zip(after, after[1:], strict=False)):
                out.append(("autoattack.accuracy_after", "rises from one attack to the next (each attack can only "
                                                        "lower robust accuracy)"))
            if abs(after[-1][1] - robust) > 1e-9:
                out.append(("robust_accuracy", f"{robust} differs from the accuracy after the last attack "
                                               f"({after[-1][0]}: {after[-1][1]})"))
            if clean is not None and "clean" in aa.accuracy_after and abs(aa.accuracy_after["clean"] - clean) > 1e-9:
                out.append(("autoattack.accuracy_after.clean", f"{aa.accuracy_after['clean']} differs from "
                                                              f"clean_accuracy {clean}"))
        if aa.n_attacked + aa.n_skipped_misclassified + aa.n_skipped_certified != n:
            out.append(("autoattack.n_attacked", "attacked + skipped (misclassified, certified) must equal "
                                                 f"n_examples = {n}"))
    for key, c in (rec.certified or {}).items():
        f = f"certified.{key}"
        if c.method != key:
            out.append((f"{f}.method", f"{c.method[:40]!r} differs from its key"))
        if c.method not in certifiers.names():
            out.append((f"{f}.method", f"unknown method; one of {', '.join(certifiers.names())}"))
        elif c.probabilistic != (not certifiers.is_sound(c.method)):
            out.append((f"{f}.probabilistic", f"must be {str(not c.probabilistic).lower()} for {c.method} "
                                              "(only probabilistic certifiers, e.g. smoothing, are)"))
        if abs(c.eps - rec.threat_model.eps) > 1e-9 * max(1.0, rec.threat_model.eps):
            out.append((f"{f}.eps", f"{c.eps} differs from threat_model.eps {rec.threat_model.eps}"))
        out += _accuracy_problems(f"{f}.certified_accuracy", c.certified_accuracy, c.certified_accuracy_ci95, n,
                                  f"{f}.certified_accuracy_ci95")
        if not c.probabilistic:
            if robust is not None and c.certified_accuracy > robust:
                out.append((f"{f}.certified_accuracy", f"{c.certified_accuracy} exceeds robust_accuracy {robust}"))
            if clean is not None and c.certified_accuracy > clean:
                out.append((f"{f}.certified_accuracy", f"{c.certified_accuracy} exceeds clean_accuracy {clean}"))
    if rec.training_flops is not None and rec.training_flops.source != "unknown" and rec.training_flops.value is None:
        out.append(("training_flops.value", f"missing for source {rec.training_flops.source!r}"))
    return out


# ---------------------------------------------------------------------------------------------
def _examples_check(rec: ResultRecord):
    n = rec.n_examples
    image = image_shape(rec.dataset)
    sizes: dict[str, int] = {}

    def check(name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if not name.startswith("gallery_"):
            if shape != (n,):
                return f"has shape {shape[:8]}; per-example arrays have shape (n_examples,) = ({n},)"
            return None
        k = shape[0] if shape else -1
        if not 0 <= k <= MAX_GALLERY:
            return f"has shape {shape[:8]}; a gallery holds at most {MAX_GALLERY} images"
        if sizes.setdefault("k", k) != k:
            return f"has {k} entries, other gallery arrays have {sizes['k']}"
        if len(shape) == 1:
            return None
        if len(shape) != 4 or dtype != np.uint8:
            return f"has shape {shape[:8]} and dtype {dtype}; gallery images are uint8 (k, C, H, W)"
        if image is not None and shape[1:] != image:
            return f"images of shape {shape[1:]}, but {rec.dataset} images have shape {image}"
        if image is None and not (shape[1] in (1, 3) and 1 <= shape[2] <= 512 and 1 <= shape[3] <= 512):
            return (f"images of shape {shape[1:]}; {rec.dataset} gallery images have 1 or 3 channels and at most "
                    "512x512 pixels")
        return None

    return check


def read_examples(rec: ResultRecord, json_path: Path) -> dict[str, np.ndarray]:
    """The per-example arrays of ``rec``, checked against its summary; one-line HarnessError otherwise.

    Required: ``examples_file``; ``index`` and ``label``; ``clean_correct``, ``autoattack_robust`` and
    ``certified_<m>`` for the accuracies the record reports, each boolean with exactly as many true
    entries as the accuracy says; every ``*_robust`` within ``clean_correct``, and every exact
    certificate within every ``*_robust`` and ``clean_correct`` (the sandwich); gallery images of the
    data set's shape."""
    from .npzsafe import read_npz

    where = str(json_path)
    if rec.examples_file is None:
        raise HarnessError(f"{where}: invalid result record: examples_file: missing; the summary is checked "
                           "against the per-example arrays, so a record comes with its .examples.npz")
    npz = Path(json_path).with_name(rec.examples_file)
    try:
        arrays = read_npz(npz, max_file_bytes=MAX_EXAMPLES_BYTES, max_total_bytes=MAX_EXAMPLES_ARRAY_BYTES,
                          check=_examples_check(rec), what="examples file")
    except HarnessError as e:  # name the record and the field, then what is wrong in the npz
        why = str(e).removeprefix(f"{npz}: ").removeprefix("examples file: ")
        raise HarnessError(f"{where}: invalid result record: examples_file: {npz.name}: {why}")

    def bad(field: str, msg: str) -> HarnessError:
        return HarnessError(f"{where}: invalid result record: {field}: {msg} (per {npz.name})")

    n = rec.n_examples
    for key in ("index", "label"):
        if key not in arrays:
            raise bad("examples_file", f"has no array {key!r}")
        if arrays[key].dtype.kind not in "iu":
            raise bad("examples_file", f"array {key!r} must hold integers")
    flags = {k: v for k,
             v in arrays.items() if k == "clean_correct" or k.endswith("_robust") or k.startswith("certified_")}
    for k, v in flags.items():
        if v.dtype != np.bool_:
            raise bad("examples_file", f"array {k!r} must be boolean, got {v.dtype}")
    wanted: list[tuple[str, str, float]] = []
    if rec.clean_accuracy is not None:
        wanted.append(("clean_accuracy", "clean_correct", rec.clean_accuracy))
    if rec.robust_accuracy is not None:
        wanted.append(("robust_accuracy", "autoattack_robust", rec.robust_accuracy))
    for m, c in (rec.certified or {}).items():
        wanted.append((f"certified.{m}.certified_accuracy", f"certified_{m}", c.certified_accuracy))
    for field, key, acc in wanted:
        if key not in arrays:
            raise bad(field, f"the examples file has no array {key!r} to back it")
        count = int(arrays[key].sum())
        if count != round(acc * n):
            raise bad(field, f"{acc} but {key} has {count} of {n} examples ({count / n:.4g})")
    correct = arrays.get("clean_correct")
    robust = {k: v for k, v in flags.items() if k.endswith("_robust")}
    if correct is not None:
        for k, v in robust.items():
            if (idx := np.nonzero(v & ~correct)[0]).size:
                raise bad("examples_file", f"{k} marks misclassified examples {idx[:5].tolist()} robust")
    for m in certifiers.sound_names():
        cert = flags.get(f"certified_{m}")
        if cert is None:
            continue
        if correct is not None and (idx := np.nonzero(cert & ~correct)[0]).size:
            raise bad("examples_file", f"certified_{m} certifies misclassified examples {idx[:5].tolist()}")
        for k, v in robust.items():
            if (idx := np.nonzero(cert & ~v)[0]).size:
                raise bad("examples_file", f"certified_{m} certifies examples {idx[:5].tolist()} that {k} broke")
    return arrays


def submission_hash_problem(rec: ResultRecord, sub: "LoadedSubmission") -> str | None:
    """Why the record was not made from this submission's result-relevant fields, or None.

    ``provenance.results_sha256`` must equal the hash of the submission's result-relevant fields now
    (:func:`harness.submission.results_sha256`), so that a metadata-only edit (a name, the licence,
    the paper, notes) keeps the record valid. A record made before that field existed is tied by
    ``provenance.submission_sha256``: the file must be byte for byte the one evaluated."""
    prov = rec.provenance
    yaml = sub.yaml_path.name
    if prov.results_sha256 is not None:
        if prov.results_sha256 != sub.results_sha256:
            return (f"provenance.results_sha256: results hash mismatch: the record was made from a submission whose "
                    f"result-relevant fields hash to {prov.results_sha256}, but those of {yaml} now hash to "
                    f"{sub.results_sha256}; a field that changes results (model, checkpoint, preprocessing, data set, "
                    "threat model, training, evaluation) was edited after the evaluation, re-run `harness eval` on it")
        return None
    if prov.submission_sha256 != sub.yaml_sha256:
        return (f"provenance.submission_sha256: submission hash mismatch: the record (made before results_sha256) was "
                f"made from a {yaml} with sha256 {prov.submission_sha256}, but {sub.yaml_path} has sha256 "
                f"{sub.yaml_sha256}; the submission changed after the evaluation, re-run `harness eval` on it "
                "(if only names or notes changed: restore the file, run scripts/migrate_records.py, then edit it)")
    return None


def check_against_submission(rec: ResultRecord, path: Path, sub: "LoadedSubmission") -> None:
    """The record belongs to this submission: same id, the result-relevant fields of the submission
    as evaluated (:func:`submission_hash_problem`), same data set, threat model and eps; its examples
    file is ``<id>.examples.npz``; and ``provenance.files_sha256`` is the digest of the folder as it
    is now (every file of the submission hashed again: :func:`harness.manifest.verify_files`)."""
    from .manifest import legacy_digest
    from .submission import verify_files

    where = f"{path}: invalid result record"
    spec = sub.spec
    if rec.submission_id != spec.id:
        raise HarnessError(f"{where}: submission_id: {rec.submission_id!r} differs from the submission's id "
                           f"{spec.id!r}")
    if (why := submission_hash_problem(rec, sub)) is not None:
        raise HarnessError(f"{path}: {why}")
    if rec.dataset != spec.dataset:
        raise HarnessError(f"{where}: dataset: {rec.dataset!r} differs from the submission's {spec.dataset!r}")
    if rec.threat_model.norm != spec.threat_model.norm:
        raise HarnessError(f"{where}: threat_model.norm: {rec.threat_model.norm!r} differs from the submission's "
                           f"{spec.threat_model.norm!r}")
    if abs(rec.threat_model.eps - spec.threat_model.eps) > 1e-12 * max(1.0, spec.threat_model.eps):
        raise HarnessError(f"{where}: threat_model.eps: {rec.threat_model.eps} differs from the submission's "
                           f"{spec.threat_model.eps}")
    want_npz = record_paths(Path(path))[1].name
    if rec.examples_file is not None and rec.examples_file != want_npz:
        raise HarnessError(f"{where}: examples_file: {rec.examples_file!r} must be {want_npz!r}")
    if rec.provenance.files_sha256 is None:
        raise HarnessError(f"{where}: provenance.files_sha256: missing (the record predates the file manifest); "
                           "re-run `harness eval` on the submission")
    try:
        digest = verify_files(sub)
    except HarnessError as e:
        raise HarnessError(f"{path}: the submission's files do not match their hashes: {e}")
    # a record from before results_sha256 (tied by the file's own hash above) may hold the old digest
    legacy = legacy_digest(sub) if rec.provenance.results_sha256 is None else None
    if rec.provenance.files_sha256 not in (digest, legacy):
        raise HarnessError(f"{where}: provenance.files_sha256: {rec.provenance.files_sha256} differs from the "
                           f"digest of {sub.folder.name}/ now ({digest}); a file changed after the evaluation, "
                           "re-run `harness eval` on it")
