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
the folder digest of :mod:`harness.submission.manifest`). Every refusal is one line naming the file and field.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from harness.core.errors import field_path
from harness.data import registry as datasets
from harness.stages.registry import STAGE_NAMES, STAGES

if TYPE_CHECKING:
    pass


SCHEMA_VERSION = 1
FLOPS_CONVENTION = "fvcore: 1 FLOP = 1 multiply-add (papers such as Bartoldson et al. 2024 count 2)"
# certification methods are those of the registry (harness.certifiers, importable without torch):
# sound ones take part in the sandwich, the others must be marked probabilistic

MAX_RECORD_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
MAX_EXAMPLES_BYTES = 64 << 20  # an .examples.npz of the full 10,000-point test set is well under 1 MB
MAX_EXAMPLES_ARRAY_BYTES = 256 << 20
MAX_GALLERY = 64
#: the image shape (C, H, W) of a data set's gallery: the registry's (harness.data.registry); when it
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
    #: SHA-256 over every file of the submission folder (harness.submission.manifest); the build recomputes it
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
    #: (None without torchrun) and each rank's device (harness.runner.distributed)
    world_size: int = Field(default=1, ge=1, le=100_000)
    backend: Short | None = None
    ranks: list[RankRecord] = Field(default_factory=list, max_length=100_000)
    #: the work split: blocks of ``block_size`` consecutive examples per stage (harness.stages.blocks),
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
_SIGNED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class RecordSignature(BaseModel):
    """The ``signature`` block of a record (:mod:`harness.record.signing` makes and checks it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    algorithm: Literal["ed25519"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    examples_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_at: str = Field(max_length=20)
    value: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$")  # base64 of exactly 64 bytes

    @field_validator("signed_at")
    @classmethod
    def _utc_time(cls, v: str) -> str:
        if not _SIGNED_AT.fullmatch(v):
            raise ValueError("must be a UTC time YYYY-MM-DDTHH:MM:SSZ")
        try:
            datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise ValueError("is not a valid date and time") from None
        return v



class ResultRecord(DiagnosticsPart, CertifyPart, FlopsPart, AutoAttackPart, CleanPart, RecordHead):
    provenance: Provenance
    examples_file: str | None = None
    #: the Ed25519 signature of the trusted evaluation over this record and its examples file
    #: (harness.record.signing); None: unsigned (a local evaluation)
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
            raise ValueError(f"flags{field_path(tuple(first['loc']))}: {first['msg']}") from None
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


