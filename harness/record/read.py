"""Reading a record: strict JSON, the schema, the per-example arrays (every refusal one line)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from harness.certifiers import registry as certifiers
from harness.core.errors import HarnessError, field_path
from harness.core.files import read_bytes_confined
from harness.record.checks import record_problems, verdict_problems
from harness.record.schema import (
    MAX_EXAMPLES_ARRAY_BYTES,
    MAX_EXAMPLES_BYTES,
    MAX_GALLERY,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    ResultRecord,
    image_shape,
)

if TYPE_CHECKING:
    pass


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
        raise HarnessError(f"{where}: invalid result record: {field_path(tuple(first['loc']))}: {first['msg']}{more}")
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
    from harness.data.npzsafe import read_npz

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
    for m, c in (rec.certified or {}).items():
        if "verified" in (c.details or {}):  # a verdict per example (the complete certifier)
            for field, msg in verdict_problems(m, c, n, arrays):
                raise bad(field, msg)
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


