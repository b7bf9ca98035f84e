"""External evaluations: the ``attack.yaml`` a researcher submits with ``adversarial.npz``, and the
checked attack record that ``harness attack-check`` writes (docs/maintainers.md, "External attacks").

A submission of adversarial examples against a re-evaluated entry is a folder
``submissions/<entry-id>/attacks/<name>/`` with

- ``attack.yaml``: ``authors`` (a list), ``method`` (one line: the attack and its settings),
  ``url`` (the paper or the code, http(s)), ``licence`` (an SPDX expression, or a LICENSE file in the
  folder), optional ``notes``; no other field (:class:`AttackSpec`, pydantic v2, extra fields
  forbidden; every problem one line);
- ``adversarial.npz``: two arrays, ``index`` (k,) integers, the positions of the attacked points in
  the record's evaluated set (the record's ``index`` array: the first N points of the dataset's
  standard evaluation subset), and ``images`` (k, C, H, W) float32 or float64 pixels in [0, 1] at
  the model's input size. Read with :func:`harness.npzsafe.read_npz` (headers and sizes checked
  before anything is allocated, never a pickle).

The checked attack record (:class:`AttackRecord`, ``leaderboard/results/attacks/<entry-id>/<name>.json``;
the schema is agreed with the board, which recomputes best-known accuracy from it and never trusts
``best_known_accuracy``) names the record it was checked against by its results hash and the SHA-256
of its examples file, lists the dataset indices whose submitted image was checked and misclassified
(``broken_index``) and those of them that AutoAttack had left standing (``missed_by_autoattack``), and
carries the metadata of ``attack.yaml`` and the provenance of the check. It is signed like a result
record (:mod:`harness.record.signing`); the signed examples digest is the SHA-256 of ``adversarial.npz``.

This module imports no torch (the board and ``harness validate`` read it).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.core.errors import HarnessError, one_line
from harness.core.files import read_bytes_confined
from harness.record.schema import RecordSignature
from harness.submission.schema import Line, Url

ATTACK_SCHEMA_VERSION = 1
KIND = "external_attack"
#: an entry id or an attack name: the rule of submission ids
SAFE_ID = r"[a-z0-9][a-z0-9._-]{0,63}"
SAFE_ID_RE = re.compile(SAFE_ID)
ATTACK_YAML = "attack.yaml"
ADVERSARIAL_NPZ = "adversarial.npz"
ATTACKS_DIR = "attacks"
MAX_ATTACK_RECORD_BYTES = 16 << 20

#: The float tolerances of the checks, in pixel units ([0, 1]), stated in every attack record.
#: ``norm_atol``: the submitted image (as float32, clipped to [0, 1], exactly what the model sees) may
#: lie at distance eps + norm_atol of the original in the threat model's norm, the distance computed in
#: float64. 1e-5 covers float32 round-off of a projected attack: the spacing of float32 numbers near 1
#: is 1.2e-7 per pixel, and an L2 projection's rounding grows as sqrt(d) x that (1.8e-5 at worst
#: for an ImageNet 3x224x224 image, well below in practice: AutoAttack's own projections stay within
#: 1e-6); it is 1/390 of one 8-bit grey level, so it lends an attack nothing.
NORM_ATOL = 1e-5
#: ``box_atol``: a pixel may lie up to box_atol outside [0, 1] (float round-off of a clip); it is then
#: clipped to [0, 1] before the distance is measured and the model is run. Further out is refused.
BOX_ATOL = 1e-6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class AttackSpec(_Strict):
    """``attack.yaml``."""

    authors: list[Line] = Field(min_length=1, max_length=100)
    method: Line = Field(description="the attack and its settings, e.g. 'APGD-CE with BPDA, 10 restarts, 1000 steps'")
    url: Url = Field(description="the paper or the code of the attack, http:// or https://")
    licence: Line = Field(description="an SPDX licence expression, or a LICENSE file in the attack's folder")
    notes: Annotated[str, Field(max_length=5000)] | None = None


def spec_problem(err: ValidationError) -> str:
    """The first problem of a validation error as ``field: message``, and how many more."""
    errs = err.errors()
    first = errs[0]
    loc = ".".join(str(x) for x in first["loc"]) or "attack.yaml"
    msg = "unknown field (typo?)" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {msg}{more}"


def read_attack_spec(path: str | Path) -> AttackSpec:
    """``attack.yaml`` parsed strictly (harness.yamlsafe) and validated, its licence checked (an SPDX
    expression, or a LICENSE file beside it); one-line HarnessError naming the file otherwise."""
    from harness.submission.load import license_problem
    from harness.submission.yamlsafe import read_yaml

    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: must hold a YAML mapping of the fields authors, method, url, licence")
    try:
        spec = AttackSpec.model_validate(raw)
    except ValidationError as e:
        raise HarnessError(f"{path}: {spec_problem(e)}")
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        raise HarnessError(f"{path}: invalid attack.yaml: {type(e).__name__}: {one_line(e, 200)}")
    if (why := license_problem(spec.licence, path.parent)) is not None:
        raise HarnessError(f"{path}: licence: {why}")
    return spec


def locate(yaml_path: str | Path) -> tuple[Path, str, str]:
    """(repository root, entry id, attack name) of ``<root>/submissions/<entry-id>/attacks/<name>/attack.yaml``;
    one line otherwise."""
    p = Path(yaml_path).absolute()
    parts = p.parts
    if (len(parts) < 6 or parts[-1] != ATTACK_YAML or parts[-3] != ATTACKS_DIR or parts[-5] != "submissions"
            or not SAFE_ID_RE.fullmatch(parts[-4]) or not SAFE_ID_RE.fullmatch(parts[-2])):
        raise HarnessError(f"{one_line(yaml_path, 300)}: an external attack is "
                           "submissions/<entry-id>/attacks/<name>/attack.yaml (ids: lower-case letters, digits, "
                           "'.', '_', '-', at most 64)")
    return Path(*parts[:-5]), parts[-4], parts[-2]


def default_out(root: Path, entry_id: str, name: str, *, local: bool = True) -> Path:
    """The attack record's path: the scratch ``leaderboard/results/local/attacks/<entry>/<name>.json``
    (git-ignored), or the committed ``leaderboard/results/attacks/<entry>/<name>.json``."""
    base = root / "leaderboard" / "results"
    return (base / "local" if local else base) / ATTACKS_DIR / entry_id / f"{name}.json"


def adversarial_path_for(json_path: Path, entry_id: str, name: str) -> Path | None:
    """Where the ``adversarial.npz`` of an attack record at ``json_path`` lives, when the record lies in
    a repository's ``leaderboard/results/[local/]attacks/<entry>/<name>.json``; else None."""
    p = Path(json_path).absolute()
    parts = p.parts
    if len(parts) < 5 or parts[-3] != ATTACKS_DIR:
        return None
    up = parts[:-3]
    if up[-1] == "local":
        up = up[:-1]
    if len(up) < 3 or up[-2:] != ("leaderboard", "results"):
        return None
    return Path(*up[:-2]) / "submissions" / entry_id / ATTACKS_DIR / name / ADVERSARIAL_NPZ


# ------------------------------------------------------------------------------ the attack record
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Short = Annotated[str, Field(max_length=2000)]
Index = Annotated[int, Field(ge=0, le=10**9)]


class AttackThreatModel(_Strict):
    norm: Literal["Linf", "L2"]
    eps: float = Field(gt=0, le=1000)


class Tolerance(_Strict):
    norm_atol: float = Field(ge=0, le=1e-3)
    box_atol: float = Field(ge=0, le=1e-3)


class AttackMetadata(_Strict):
    authors: list[Line] = Field(min_length=1, max_length=100)
    method: Line
    url: Url
    licence: Line


class AttackProvenance(_Strict):
    harness_version: Short
    packages: dict[str, Short]
    device: Short
    device_name: Short | None = None
    seed: int = Field(ge=0, le=2**63)
    started_at: Short
    finished_at: Short
    seconds: float = Field(ge=0, le=1e9)
    attack_yaml_sha256: Sha256
    adversarial_npz_sha256: Sha256
    command: Annotated[str, Field(max_length=20_000)]
    #: forward passes per image (1; more for a random forward pass: broken only if wrong in every one)
    forward_passes: int = Field(default=1, ge=1, le=1000)
    #: how the model ran (sandbox mode, network, limits), as harness eval records it
    sandbox: dict[str, Any] | None = None
    #: the key that signed the result record checked against, when a trusted key did
    record_signed_by: Short | None = None


class AttackRecord(_Strict):
    schema_version: Literal[1]
    kind: Literal["external_attack"]
    entry_id: Annotated[str, Field(pattern=rf"^{SAFE_ID}$")]
    attack_name: Annotated[str, Field(pattern=rf"^{SAFE_ID}$")]
    record_results_sha256: Sha256 | None
    record_examples_sha256: Sha256
    dataset: Short
    threat_model: AttackThreatModel
    n_examples: int = Field(ge=1, le=10**9)
    tolerance: Tolerance
    n_submitted: int = Field(ge=1, le=10**9)
    broken_index: list[Index] = Field(max_length=10**7)
    missed_by_autoattack: list[Index] = Field(max_length=10**7)
    best_known_accuracy: float = Field(ge=0, le=1)
    metadata: AttackMetadata
    provenance: AttackProvenance
    signature: RecordSignature | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AttackRecord":
        b, m = self.broken_index, self.missed_by_autoattack
        if any(x >= y for x, y in zip(b, b[1:], strict=False)) or any(x >= y for x, y in zip(m, m[1:], strict=False)):
            raise ValueError("broken_index and missed_by_autoattack must be sorted and without repeats")
        if not set(m) <= set(b):
            raise ValueError("missed_by_autoattack must be a subset of broken_index")
        if len(b) != self.n_submitted or len(b) > self.n_examples or (b and b[-1] >= 10**9):
            raise ValueError("broken_index must hold every submitted example (a refused one fails the whole check), "
                             "at most n_examples")
        if not math.isfinite(self.best_known_accuracy):
            raise ValueError("best_known_accuracy must be finite")
        return self


def validate_attack_record(raw: dict[str, Any], where: str) -> AttackRecord:
    """The attack record's schema and invariants; one line naming the file and the field otherwise."""
    if raw.get("schema_version") != ATTACK_SCHEMA_VERSION or raw.get("kind") != KIND:
        raise HarnessError(f"{where}: not an external attack record (schema_version {ATTACK_SCHEMA_VERSION}, "
                           f"kind {KIND!r})")
    try:
        return AttackRecord.model_validate(raw)
    except ValidationError as e:
        raise HarnessError(f"{where}: invalid attack record: {spec_problem(e)}")


def read_attack_record(path: str | Path) -> AttackRecord:
    """Read and validate an attack record file (strict JSON: no duplicate keys, NaN or deep nesting)."""
    from harness.record.read import parse_record_json

    path = Path(path)
    data = read_bytes_confined(path, max_bytes=MAX_ATTACK_RECORD_BYTES, what="attack record")
    return validate_attack_record(parse_record_json(data, str(path)), str(path))


def is_attack_record(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == KIND
