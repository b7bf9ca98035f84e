"""The result record: one plain JSON file per submission (as RobustBench keeps one per model),
validated by a versioned pydantic model, plus ``<id>.examples.npz`` with per-example arrays.

Accuracies are fractions in [0, 1]; each comes with a 95% Clopper-Pearson interval in the field
``<name>_ci95``. Fields of stages that did not run are ``null``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import HarnessError
from .files import atomic_savez, atomic_write_text

SCHEMA_VERSION = 1
FLOPS_CONVENTION = "fvcore: 1 FLOP = 1 multiply-add (papers such as Bartoldson et al. 2024 count 2)"


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid")


CI = tuple[float, float]


class ThreatModelRecord(_Rec):
    norm: Literal["Linf", "L2"]
    eps: float


class AutoAttackRecord(_Rec):
    version: str
    seed: int
    attacks: list[str]
    #: robust accuracy over all N points after each attack, in order ("clean" first)
    accuracy_after: dict[str, float]
    #: AutoAttack's own check messages (warnings it logged), verbatim
    checks: list[str] = Field(default_factory=list)
    n_attacked: int
    n_skipped_misclassified: int
    n_skipped_certified: int
    seconds_per_attack: dict[str, float] = Field(default_factory=dict)
    #: estimated attack seconds saved by not attacking certified points
    seconds_saved_by_certify_first: float | None = None
    batch_size: int


class TrainingFlopsRecord(_Rec):
    value: float | None
    source: Literal["declared", "estimated", "unknown"]
    formula: str
    convention: str
    multiplier: float | None = None
    examples_seen: float | None = None
    forward_flops: float | None = None


class CertifiedRecord(_Rec):
    method: str
    eps: float
    certified_accuracy: float
    certified_accuracy_ci95: CI
    acr: float
    acr_percent: float
    eps_max: float
    tolerance: float
    seconds: float
    probabilistic: bool = False
    bound_calls_per_example: float | None = None
    #: certified accuracy at each eps of a grid over [0, eps_max]: [[eps, accuracy], ...]
    curve: list[tuple[float, float]] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class Provenance(_Rec):
    harness_version: str
    python: str
    packages: dict[str, str]
    device: str
    device_name: str | None = None
    torch_threads: int | None = None
    checkpoint_sha256: str
    submission_sha256: str
    data_source: str
    seed: int
    batch_size: int
    started_at: str
    finished_at: str
    stage_seconds: dict[str, float]
    resumed_stages: list[str] = Field(default_factory=list)
    command: str
    #: how the model ran: sandbox mode, network isolation, memory/CPU/wall-clock limits
    sandbox: dict[str, Any] | None = None


class ResultRecord(_Rec):
    schema_version: Literal[1] = SCHEMA_VERSION
    submission_id: str
    name: str
    dataset: str
    threat_model: ThreatModelRecord
    n_examples: int
    stages: list[str]

    clean_accuracy: float | None = None
    clean_accuracy_ci95: CI | None = None
    robust_accuracy: float | None = Field(default=None, description="final AutoAttack robust accuracy")
    robust_accuracy_ci95: CI | None = None
    autoattack: AutoAttackRecord | None = None

    params: int | None = None
    inference_flops: float | None = None
    flops_convention: str | None = None
    flops_skipped_ops: dict[str, int] | None = None
    flops_by_operator: dict[str, float] | None = None
    #: why inference FLOPs could not be counted (fvcore cannot trace some converted models)
    flops_error: str | None = None
    forward_passes: int | None = None
    training_flops: TrainingFlopsRecord | None = None

    certified: dict[str, CertifiedRecord] | None = None
    certify_skipped: str | None = None

    diagnostics: dict[str, Any] | None = None

    provenance: Provenance
    examples_file: str | None = None


def record_paths(out: Path) -> tuple[Path, Path]:
    """``<id>.json`` and its ``<id>.examples.npz`` beside it."""
    return out, out.with_name(out.name.removesuffix(".json") + ".examples.npz")


def write_record(record: ResultRecord, arrays: dict[str, np.ndarray], out: Path) -> tuple[Path, Path]:
    json_path, npz_path = record_paths(out)
    record.examples_file = npz_path.name
    atomic_savez(npz_path, arrays)
    atomic_write_text(json_path, record.model_dump_json(indent=2) + "\n")
    return json_path, npz_path


def read_record(path: Path) -> ResultRecord:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"{path}: cannot read result record: {e}")
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: a result record must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise HarnessError(f"{path}: schema_version {version!r} is not the supported {SCHEMA_VERSION}")
    try:
        return ResultRecord.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise HarnessError(f"{path}: invalid result record: {loc}: {first['msg']}")
