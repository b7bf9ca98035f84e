"""Best-known robust accuracy: the lowest accuracy that any accepted attack reached (torch-free).

Two sources, as RobustBench ranks:

- **Re-evaluated records.** ``best_known = |{i : clean_correct[i] and autoattack_robust[i] and i not
  broken}| / N``, i.e. ``clean − |AutoAttack's successes ∪ the checked examples| / N``, recomputed
  here from the record's ``<id>.examples.npz`` (arrays ``index``, ``clean_correct``,
  ``autoattack_robust``) and the ``broken_index`` lists of the external attack records
  ``leaderboard/results/attacks/<entry-id>/<name>.json`` written by ``harness attack-check``. A
  broken example that the model already misclassified clean changes nothing (it is no success of
  the attack), so the formula cannot go below what AutoAttack and the attack together prove. The
  ``best_known_accuracy`` an attack record carries is never trusted: it is recomputed. An attack
  record checked against another examples file (``record_examples_sha256``) or another evaluation
  of the entry (``record_results_sha256``) is *stale*: it is shown on the entry page, not applied.
- **Reported rows.** ``min(AutoAttack, external)`` from RobustBench's model information
  (``stronger_attack_acc_percent`` in ``reported.csv``, imported from ``external`` by
  :mod:`leaderboard.robustbench_import`), naming the source of the lower number.

Attack records are signed like result records (:mod:`harness.record.signing`: the same Ed25519 block and
canonical serialisation, with the SHA-256 of the submitted ``adversarial.npz`` in the block's
``examples_sha256``). On the published board every attack record must verify against a key of
``leaderboard/keys/``, else the build refuses with one line; ``--local`` also shows unsigned ones
(and ``leaderboard/results/local/attacks/``, the scratch output of ``harness attack-check``),
marked "local, unsigned" and applied only on that local board.
"""
from __future__ import annotations

import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.core.errors import HarnessError, one_line
from harness.core.files import read_bytes_confined
from harness.core.stats import clopper_pearson
from harness.record.read import parse_record_json
from harness.record.schema import MAX_RECORD_BYTES, RecordSignature
from harness.record.signing import TrustedKey, Verified, signed_message

CI = tuple[float, float]
ATTACKS_DIR = Path("leaderboard") / "results" / "attacks"
LOCAL_ATTACKS_DIR = Path("leaderboard") / "results" / "local" / "attacks"
SCHEMA_VERSION = 1
AUTOATTACK = "AutoAttack"
MAX_ATTACK_FILES = 10_000  # a bound on what one build reads; far above any real board
_SAFE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _ThreatModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    norm: str
    eps: float


class _Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    norm_atol: float = Field(ge=0)
    box_atol: float = Field(ge=0)


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    authors: list[str] = Field(default_factory=list, max_length=200)
    method: str = Field(default="", max_length=2000)
    url: str | None = Field(default=None, max_length=2000)
    licence: str | None = Field(default=None, max_length=200)


class AttackRecordModel(BaseModel):
    """The external attack record (the interface of issue 18, written by ``harness attack-check``)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    schema_version: int
    kind: str
    entry_id: str = Field(pattern=_SAFE)
    attack_name: str = Field(pattern=_SAFE)
    record_results_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    record_examples_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dataset: str = Field(max_length=200)
    threat_model: _ThreatModel
    n_examples: int = Field(gt=0)
    tolerance: _Tolerance
    n_submitted: int = Field(ge=0)
    broken_index: list[int] = Field(max_length=10_000_000)
    missed_by_autoattack: list[int] = Field(default_factory=list, max_length=10_000_000)
    best_known_accuracy: float | None = None
    metadata: _Metadata = Field(default_factory=_Metadata)
    provenance: dict[str, Any] = Field(default_factory=dict)
    signature: RecordSignature | None = None


@dataclass
class ExternalEvaluation:
    """One external attack record as the board shows it."""
    path: Path
    rel_path: str
    entry_id: str
    attack_name: str
    metadata: dict[str, Any]
    provenance: dict[str, Any]
    tolerance: dict[str, float]
    n_submitted: int
    broken: list[int]                    # dataset indices, checked and misclassified
    trust: str                           # "verified", "local, unsigned" or "local, signed by <key id>"
    signed_by: Verified | None = None
    stale: str | None = None             # why it is not applied, or None
    #: recomputed against the entry's examples (None when stale): the examples it broke that the
    #: model classified correctly and AutoAttack did not break, and the best-known accuracy with
    #: this attack alone
    missed_by_autoattack: list[int] = field(default_factory=list)
    accuracy_alone: float | None = None
    model: AttackRecordModel | None = field(default=None, repr=False)

    @property
    def applied(self) -> bool:
        return self.stale is None

    @property
    def label(self) -> str:
        return f"{self.attack_name} (external)"


@dataclass(frozen=True)
class BestKnown:
    value: float
    ci: CI | None
    source: str                          # "AutoAttack" or "<attack> (external)", or RobustBench's
    autoattack: float | None
    note: str = ""
    n_extra: int = 0                     # examples broken beyond AutoAttack (records)

    @property
    def below_autoattack(self) -> bool:
        return self.autoattack is not None and self.value < self.autoattack


# ---------------------------------------------------------------------------------------------
def _sha256_file(path: Path, max_bytes: int, what: str) -> str:
    return hashlib.sha256(read_bytes_confined(path, max_bytes=max_bytes, what=what)).hexdigest()


def verify_attack_record(path: Path, raw: Mapping[str, Any], keys: Mapping[str, TrustedKey], *,
                         keys_from: str = "leaderboard/keys/") -> Verified:
    """Check the Ed25519 signature of an attack record (the record scheme of :mod:`harness.record.signing`;
    the digest in the block is that of the submitted ``adversarial.npz``, which must equal
    ``provenance.adversarial_npz_sha256``). One-line HarnessError otherwise."""
    import base64

    where = str(path)
    block = raw.get("signature")
    if block is None:
        raise HarnessError(f"{where}: unsigned attack record: only one signed by a trusted key ({keys_from}) is "
                           "applied; build with --local to show it as a local evaluation")
    try:
        sig = RecordSignature.model_validate(block)
    except ValidationError as e:
        first = e.errors()[0]
        raise HarnessError(f"{where}: malformed signature block: "
                           f"signature.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
    trusted = keys.get(sig.key_id)
    if trusted is None:
        raise HarnessError(f"{where}: signed by unknown key {sig.key_id}, not one of the trusted keys in "
                           f"{keys_from} ({', '.join(sorted(keys)) or 'none'})")
    prov = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
    if prov.get("adversarial_npz_sha256") != sig.examples_sha256:
        raise HarnessError(f"{where}: the signature covers adversarial.npz sha256 {sig.examples_sha256}, but "
                           f"provenance.adversarial_npz_sha256 is {one_line(prov.get('adversarial_npz_sha256'), 80)}")
    try:
        value = base64.b64decode(sig.value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise HarnessError(f"{where}: malformed signature block: signature.value: not base64")
    msg = signed_message(raw, sig.examples_sha256, key=sig.key_id, signed_at=sig.signed_at,
                         algorithm=sig.algorithm, where=where)
    try:
        trusted.public_key.verify(value, msg)
    except InvalidSignature:
        raise HarnessError(f"{where}: bad signature: the attack record changed after key {sig.key_id} "
                           f"({trusted.name}) signed it") from None
    return Verified(key_id=sig.key_id, key_name=trusted.name, signed_at=sig.signed_at,
                    examples_sha256=sig.examples_sha256)


def read_attack_record(path: Path, repo_root: Path) -> tuple[AttackRecordModel, dict[str, Any]]:
    """Parse and validate one attack record file (strict JSON, the schema above, its folder and file
    name equal to its entry id and attack name). One-line HarnessError otherwise."""
    where = str(path)
    raw = parse_record_json(read_bytes_confined(path, max_bytes=MAX_RECORD_BYTES, what="attack record"), where)
    try:
        rec = AttackRecordModel.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "record"
        raise HarnessError(f"{where}: invalid attack record: {loc}: {one_line(first['msg'], 200)}")
    if rec.schema_version != SCHEMA_VERSION or rec.kind != "external_attack":
        raise HarnessError(f"{where}: not an external attack record of schema version {SCHEMA_VERSION} "
                           f"(kind {one_line(rec.kind, 40)!r}, schema_version {rec.schema_version})")
    if path.parent.name != rec.entry_id or path.stem != rec.attack_name:
        raise HarnessError(f"{where}: an attack record must be named <entry-id>/<attack-name>.json; this one "
                           f"claims entry {rec.entry_id!r} and attack {rec.attack_name!r}")
    b = rec.broken_index
    if any(x < 0 for x in b) or any(x >= y for x, y in zip(b, b[1:], strict=False)):
        raise HarnessError(f"{where}: invalid attack record: broken_index must be sorted, distinct and non-negative")
    if len(b) > rec.n_submitted:
        raise HarnessError(f"{where}: invalid attack record: {len(b)} broken examples but only "
                           f"{rec.n_submitted} submitted")
    npz = repo_root / "submissions" / rec.entry_id / "attacks" / rec.attack_name / "adversarial.npz"
    want = rec.provenance.get("adversarial_npz_sha256")
    if os.path.lexists(npz) and want is not None:
        from harness.record.schema import MAX_EXAMPLES_BYTES

        got = _sha256_file(npz, MAX_EXAMPLES_BYTES, "adversarial examples")
        if got != want:
            raise HarnessError(f"{where}: {npz.relative_to(repo_root)} has sha256 {got}, but the attack was checked "
                               f"on a file with sha256 {want}; run `harness attack-check` on it again")
    return rec, raw


def attack_files(repo_root: Path, *, local: bool) -> list[tuple[Path, bool]]:
    """(path, scratch) of every attack record to load: the published ones, then (local boards only)
    the scratch ones of ``leaderboard/results/local/attacks/``, which replace a published record of
    the same entry and name."""
    def glob(d: Path) -> list[Path]:
        if not d.is_dir() or d.is_symlink():
            return []
        return sorted(p for p in d.glob("*/*.json") if not p.parent.is_symlink())

    published = glob(repo_root / ATTACKS_DIR)
    scratch = glob(repo_root / LOCAL_ATTACKS_DIR) if local else []
    replaced = {(p.parent.name, p.name) for p in scratch}
    out = [(p, False) for p in published if (p.parent.name, p.name) not in replaced] + [(p, True) for p in scratch]
    if len(out) > MAX_ATTACK_FILES:
        raise HarnessError(f"{repo_root / ATTACKS_DIR}: {len(out)} attack records, more than the "
                           f"{MAX_ATTACK_FILES} one build reads")
    return out


def load_attack_records(repo_root: Path, keys: Mapping[str, TrustedKey], extra: Mapping[str, TrustedKey], *,
                        local: bool) -> dict[str, list[ExternalEvaluation]]:
    """Every attack record, by entry id, signature checked (see the module docstring)."""
    out: dict[str, list[ExternalEvaluation]] = {}
    for path, scratch in attack_files(repo_root, local=local):
        rec, raw = read_attack_record(path, repo_root)
        if not local:
            v: Verified | None = verify_attack_record(path, raw, keys)
            trust = "verified"
        elif raw.get("signature") is None:
            v, trust = None, "local, unsigned"
        else:
            v = verify_attack_record(path, raw, {**extra, **keys}, keys_from="leaderboard/keys/ or --trust-key")
            trust = "verified" if v.key_id in keys and not scratch else f"local, signed by {v.key_id}"
        try:
            rel = str(path.relative_to(repo_root))
        except ValueError:
            rel = path.name
        out.setdefault(rec.entry_id, []).append(ExternalEvaluation(
            path=path, rel_path=rel, entry_id=rec.entry_id, attack_name=rec.attack_name,
            metadata=rec.metadata.model_dump(), provenance=dict(rec.provenance),
            tolerance=rec.tolerance.model_dump(), n_submitted=rec.n_submitted, broken=list(rec.broken_index),
            trust=trust, signed_by=v,
            model=rec,
        ))
    for evals in out.values():
        evals.sort(key=lambda x: x.attack_name)
    return out


# ---------------------------------------------------------------------------------------------
def record_best_known(*, n: int, index: np.ndarray, clean_correct: np.ndarray, autoattack_robust: np.ndarray,
                      autoattack: float | None, examples_sha256: str, results_sha256: str | None,
                      dataset: str, norm: str, eps: float, evaluations: list[ExternalEvaluation]) -> BestKnown:
    """Best-known accuracy of a re-evaluated record, applying every attack record that matches it
    (the others are marked stale, in place). ``index``: the dataset index of each example."""
    pos = {int(i): k for k, i in enumerate(np.asarray(index).tolist())}
    robust = np.asarray(autoattack_robust, dtype=bool) & np.asarray(clean_correct, dtype=bool)
    still = robust.copy()
    applied = []
    for ev in evaluations:
        rec = ev.model
        assert rec is not None
        why = None
        if rec.record_examples_sha256 != examples_sha256:
            why = (f"checked against examples file sha256 {rec.record_examples_sha256[:16]}..., the entry's is now "
                   f"{examples_sha256[:16]}... (re-evaluated since)")
        elif results_sha256 is not None and rec.record_results_sha256 not in (None, results_sha256):
            why = "checked against another evaluation of the entry (record_results_sha256 differs)"
        elif rec.n_examples != n or rec.dataset != dataset or rec.threat_model.norm != norm \
                or abs(rec.threat_model.eps - eps) > 1e-12:
            why = "its data set, N, norm or ε differ from the entry's"
        elif (missing := [b for b in ev.broken if b not in pos]):
            why = f"indices {missing[:5]} are not in the entry's evaluated set"
        ev.stale = why
        if why is not None:
            continue
        mask = np.zeros_like(robust)
        mask[[pos[b] for b in ev.broken]] = True
        ev.missed_by_autoattack = [int(i) for i in np.asarray(index)[robust & mask].tolist()]
        ev.accuracy_alone = int((robust & ~mask).sum()) / n
        still &= ~mask
        applied.append(ev)
    k = int(still.sum())
    value = k / n
    extra = int(robust.sum()) - k
    if extra and applied:
        best = [ev for ev in applied if ev.missed_by_autoattack]
        best.sort(key=lambda ev: (ev.accuracy_alone, ev.attack_name))
        source = " + ".join(ev.label for ev in best) if len(best) > 1 else best[0].label
        note = (f"{extra} example{'s' if extra != 1 else ''} that AutoAttack missed broken by "
                + ", ".join(f"{ev.attack_name} ({len(ev.missed_by_autoattack)})" for ev in best)
                + "; checked by harness attack-check")
    else:
        source, note = AUTOATTACK, ""
    return BestKnown(value=value, ci=clopper_pearson(k, n), source=source, autoattack=autoattack, note=note,
                     n_extra=extra)


def reported_best_known(autoattack: float, external: float | None, n: int) -> BestKnown:
    """``min(AutoAttack, RobustBench's external evaluation)`` of a reported row, with its source;
    the interval is Clopper-Pearson with RobustBench's n."""
    if external is not None and external < autoattack:
        return BestKnown(value=external, ci=clopper_pearson(int(round(external * n)), n),
                         source="RobustBench external evaluation", autoattack=autoattack,
                         note=(f"a stronger attack than AutoAttack reaches {100 * external:.2f}% "
                               "(RobustBench's external evaluation of this model)"))
    return BestKnown(value=autoattack, ci=clopper_pearson(int(round(autoattack * n)), n), source=AUTOATTACK,
                     autoattack=autoattack)
