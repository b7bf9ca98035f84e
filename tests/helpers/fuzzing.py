"""Fuzz targets and hypothesis strategies over the readers of untrusted input, shared by
``tests/integration/test_fuzz.py`` (a modest campaign in the test command) and ``scripts/fuzz.py`` (the large one).

Four targets, each fed a generated input and classifying the outcome:

- ``yaml``:   bytes as ``submissions/fz/submission.yaml`` -> parse, validate the schema, check files
              (what ``harness validate`` does);
- ``schema``: a valid submission with one field (anywhere) replaced by a hostile value, or removed,
              or an unknown field added -> the same;
- ``record``: a valid result record with one field replaced / removed / added, or its JSON text
              mutated byte by byte -> ``read_record`` (schema, invariants, per-example arrays);
- ``npz``:    a valid ``.examples.npz`` with one array replaced (shape, dtype, flipped flags), its
              bytes mutated, or forged headers -> ``read_record``.

Outcomes: ``refused`` (a one-line HarnessError or one-line problems), ``accepted``, ``traceback``
(any other exception, or a message of more than one line: a bug), and ``false-accept`` (an accepted
record that breaks an invariant, checked here independently of harness.record: a bug).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import math
import random
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from hypothesis import strategies as st

from harness.certifiers import sound_names
from harness.core.errors import HarnessError
from harness.record.read import read_record
from harness.record.schema import ResultRecord
from harness.submission.load import check_files, parse_submission

OUTCOMES = ("accepted", "refused", "traceback", "false-accept")
#: the files beside the fuzzed submission.yaml, so that an unmutated submission passes every check
FOLDER_FILES = {"model.pt": b"stand-in checkpoint\n", "extra.bin": b"extra data\n"}

BASE_SPEC: dict[str, Any] = {
    "id": "fz", "name": "fuzzed model", "authors": ["someone"], "license": "MIT", "dataset": "mnist",
    "paper": {"title": "A paper", "url": "https://example.org/p", "venue": "X", "year": 2020},
    "threat_model": {"norm": "Linf", "eps": "8/255"},
    "model": {"format": "state_dict", "architecture": "mnist_small_cnn", "architecture_kwargs": {"num_classes": 10},
              "checkpoint": {"path": "model.pt", "sha256": hashlib.sha256(FOLDER_FILES["model.pt"]).hexdigest()},
              "preprocessing": {"mean": [0.1], "std": [0.3]}, "forward_passes": 1},
    "training": {"method": "pgd", "attack_steps": 10, "epochs": 5, "examples_per_epoch": 60000, "extra_data": 0,
                 "declared_flops": 1e15, "command": "python train.py", "seed": 0},
    "evaluation": {"n_examples": 100, "seed": 0, "batch_size": 50, "certify": ["ibp"], "eps_max": 0.1,
                   "radius_tol": 0.001, "certify_first": True},
    "smoothing": {"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001},
    "notes": "fuzz",
    "files": {"extra.bin": hashlib.sha256(FOLDER_FILES["extra.bin"]).hexdigest()},
}


# ---------------------------------------------------------------------------------------------
# hostile values
def hostile_scalars() -> st.SearchStrategy:
    return st.one_of(
        st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
        st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 2**64, 10**29, -(10**29), 10**400]),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.0, 1e300,
                                                                         5e-324]),
        st.booleans(), st.none(),
        st.text(max_size=40),
        st.sampled_from(["javascript:alert(1)", "8/255", "1/0", "../../etc/passwd", "/etc/passwd", "a\x00b",
                         "x" * 300, "<script>alert(1)</script>", ".inf", "NaN", "this.x", "pyautoattack",
                         "0" * 64, "https://x.org", "", " ", "\x1b[31m", "é" * 200]),
    )


def hostile_values() -> st.SearchStrategy:
    return st.recursive(hostile_scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=8)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@dataclass
class Mutation:
    path: tuple
    kind: str  # "set", "delete", "add"
    value: Any = None

    def apply(self, obj: Any) -> Any:
        obj = copy.deepcopy(obj)
        *head, last = self.path
        d = obj
        for k in head:
            d = d[k]
        if self.kind == "set":
            d[last] = self.value
        elif self.kind == "delete":
            if isinstance(d, dict):
                d.pop(last, None)
            elif isinstance(d, list) and len(d) > 0:
                d.pop(last)
        elif isinstance(d, dict):
            d[f"unknown_{last}"] = self.value
        return obj


@st.composite
def mutations(draw, base: Any, n_max: int = 3) -> list[Mutation]:
    paths = _paths(base)
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        out.append(Mutation(path, kind, draw(hostile_values()) if kind != "delete" else None))
    return out


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and b:
            del b[i: i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del b[i:]
        elif op == "dup" and b:
            j = draw(st.integers(i, min(len(b), i + 64)))
            b[j:j] = b[i:j]
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# YAML documents
YAML_TRICKS = [
    "id: fz\nid: fz2\n", "threat_model: {norm: Linf, eps: 0.3, eps: 0.01}\n",
    "a: " + "[" * 3000 + "]" * 3000 + "\n", "a: &a [1, 2]\nb: *a\n", "<<: {id: x}\n",
    "id: !!python/object/apply:os.system ['true']\n", "id: !!binary aGVsbG8=\n", "id: 1:2:3:4:5:6\n",
    "threat_model: {norm: Linf, eps: " + "9" * 400 + "}\n", "--- a\n--- b\n", "\x00", "\ufeffid: x\n",
    "? [a, b]\n: c\n", "id: 0x" + "f" * 900 + "\n", "eps: 1e99999\n", "id: .nan\n", "%YAML 1.1\n---\nid: x\n",
]


def yaml_documents() -> st.SearchStrategy[bytes]:
    base_text = yaml.safe_dump(BASE_SPEC, sort_keys=False)
    return st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
        byte_mutations(base_text.encode()),
        st.sampled_from(YAML_TRICKS).map(str.encode),
        st.tuples(st.sampled_from(YAML_TRICKS), byte_mutations(base_text.encode())).map(lambda t: t[1] + t[0].encode()),
    )


def specs() -> st.SearchStrategy[dict]:
    return mutations(BASE_SPEC).map(lambda ms: _apply_all(BASE_SPEC, ms))


def _apply_all(base: Any, ms: list[Mutation]) -> Any:
    for m in ms:
        try:
            base = m.apply(base)
        except (KeyError, IndexError, TypeError):
            pass
    return base


# ---------------------------------------------------------------------------------------------
# records and their arrays
def base_record() -> tuple[dict, dict[str, np.ndarray]]:
    """A valid record (with certified accuracies and a gallery) and its per-example arrays (copies)."""
    rec, arrays = _base_record()
    return copy.deepcopy(rec), {k: v.copy() for k, v in arrays.items()}


@functools.lru_cache(maxsize=1)
def _base_record() -> tuple[dict, dict[str, np.ndarray]]:
    from leaderboard.synthetic import BOARDS, example_arrays, gallery_arrays, synthetic_record

    rng = random.Random(1)
    rec = synthetic_record("fz", rng, board=BOARDS[1], submission_sha="a" * 64, checkpoint_sha="b" * 64,
                           files_sha="c" * 64, n_examples=60, certified=True, flags=True, separation=0.4)
    arrays = example_arrays(rec, rng)
    arrays.update(gallery_arrays(rng, BOARDS[1][4], k=2))
    rec.examples_file = "fz.examples.npz"
    return json.loads(rec.model_dump_json()), arrays


@functools.lru_cache(maxsize=1)
def _base_npz() -> bytes:
    return _npz_bytes(_base_record()[1])


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def forged_header_npz(headers: dict[str, tuple[tuple[int, ...], str]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (shape, dtype) in headers.items():
            member = io.BytesIO()
            np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
            zf.writestr(f"{name}.npy", member.getvalue())
    return buf.getvalue()


def records() -> st.SearchStrategy[bytes]:
    rec, _ = base_record()
    text = json.dumps(rec, indent=1).encode()
    dumped = mutations(rec).map(lambda ms: json.dumps(_apply_all(rec, ms), default=str).encode())
    raw_tricks = st.sampled_from([
        text.replace(b'"clean_accuracy": ', b'"clean_accuracy": NaN, "x": ', 1),
        text.replace(b'"robust_accuracy": ', b'"robust_accuracy": 0.999, "robust_accuracy": ', 1),
        b"[" * 100_000, b"1e400", b'{"schema_version": 1e999}', b"\xff\xfe", b"", b"null",
        b'{"schema_version": 1, "n_examples": ' + b"9" * 5000 + b"}",
    ])
    return st.one_of(dumped, dumped, byte_mutations(text), raw_tricks)


@st.composite
def examples_files(draw) -> bytes:
    _, arrays = base_record()
    kind = draw(st.sampled_from(["array", "array", "bytes", "forged"]))
    if kind == "bytes":
        return draw(byte_mutations(_npz_bytes(arrays)))
    if kind == "forged":
        names = draw(st.lists(st.sampled_from(list(arrays) + ["x", "../a", "a/b"]), min_size=1, max_size=4))
        shapes = st.lists(st.one_of(st.integers(0, 100), st.sampled_from([10**12, 2**62, 60, 2500])), max_size=5)
        dtypes = st.sampled_from(["<i8", "|b1", "|u1", "<f4", "|O", "<c16", "<U10", "|V8", ">i4"])
        return forged_header_npz({n: (tuple(draw(shapes)), draw(dtypes)) for n in names})
    arrays = dict(arrays)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(arrays)))
        op = draw(st.sampled_from(["flip", "drop", "shape", "dtype", "object"]))
        a = arrays[name]
        if op == "flip" and a.size and a.dtype.kind in "biuf":
            a = a.copy()
            i = draw(st.integers(0, a.size - 1))
            a.flat[i] = not bool(a.flat[i]) if a.dtype == bool else a.flat[i] + 1
            arrays[name] = a
        elif op == "drop":
            arrays.pop(name)
        elif op == "shape":
            arrays[name] = np.zeros(tuple(draw(st.lists(st.integers(0, 70), max_size=4))), a.dtype)
        elif op == "dtype" and a.dtype.kind in "biuf":
            arrays[name] = a.astype(draw(st.sampled_from([np.float64, np.int8, np.uint8, np.bool_])))
        elif op == "object":
            arrays[name] = np.array([None] * max(1, a.size), dtype=object)
    if not arrays:
        return b""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, allow_pickle=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# running a target
@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, target: str, outcome: str, detail: str = "") -> None:
        self.counts[(target, outcome)] += 1
        if outcome in ("traceback", "false-accept"):
            self.examples.setdefault(f"{target}/{outcome}", [])
            if len(self.examples[f"{target}/{outcome}"]) < 5:
                self.examples[f"{target}/{outcome}"].append(detail)

    def total(self, outcome: str | None = None, target: str | None = None) -> int:
        return sum(v for (t, o), v in self.counts.items()
                   if (outcome is None or o == outcome) and (target is None or t == target))


def _one_line(msg: str) -> bool:
    return "\n" not in msg and "Traceback" not in msg and bool(msg.strip())


def _classify(tally: Tally, target: str, fn: Callable[[], str]) -> None:
    try:
        outcome, detail = fn(), ""
    except HarnessError as e:
        outcome, detail = ("refused", "") if _one_line(str(e)) else ("traceback", f"multi-line error: {e!r}")
    except Exception:  # noqa: BLE001  (any other exception is what the fuzzing looks for)
        outcome, detail = "traceback", traceback.format_exc(limit=-3)
    if outcome.startswith("false-accept"):
        outcome, detail = "false-accept", outcome
    tally.add(target, outcome, detail)


def _validate(yaml_path: Path) -> str:
    sub, problems = parse_submission(yaml_path)
    if sub is not None:
        problems = check_files(sub)
    lines = [str(p) for p in problems]
    if any(not _one_line(x) for x in lines):
        raise AssertionError(f"multi-line problem: {lines!r}")
    return "refused" if lines else "accepted"


def _folder(workdir: Path) -> Path:
    folder = workdir / "submissions" / "fz"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for name, data in FOLDER_FILES.items():
            (folder / name).write_bytes(data)
    return folder


def run_yaml(tally: Tally, workdir: Path, data: bytes, target: str = "yaml") -> None:
    path = _folder(workdir) / "submission.yaml"
    path.write_bytes(data)
    _classify(tally, target, lambda: _validate(path))


def run_schema(tally: Tally, workdir: Path, spec: Any) -> None:
    try:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML: not an input a file can carry
    run_yaml(tally, workdir, text.encode("utf-8", "surrogatepass"), target="schema")


def independent_invariants(rec: ResultRecord, arrays: dict[str, np.ndarray]) -> str | None:
    """The invariants of an accepted record, checked without harness.record's code."""
    n = rec.n_examples
    accs = {"clean": rec.clean_accuracy, "robust": rec.robust_accuracy}
    cis = {"clean": rec.clean_accuracy_ci95, "robust": rec.robust_accuracy_ci95}
    for m, c in (rec.certified or {}).items():
        accs[f"certified_{m}"], cis[f"certified_{m}"] = c.certified_accuracy, c.certified_accuracy_ci95
    for k, v in accs.items():
        if v is None:
            continue
        if not (isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1):
            return f"{k} = {v!r}"
        lo, hi = cis[k]
        if not lo <= v <= hi:
            return f"{k} {v} outside its CI {cis[k]}"
    if accs["clean"] is not None and accs["robust"] is not None and accs["robust"] > accs["clean"]:
        return "robust > clean"
    for m in sound_names():
        c = accs.get(f"certified_{m}")
        if c is not None and accs["robust"] is not None and c > accs["robust"]:
            return f"certified_{m} > robust"
    keys = {"clean": "clean_correct", "robust": "autoattack_robust"}
    for k, v in accs.items():
        if v is None:
            continue
        arr = arrays.get(keys.get(k, k))
        if arr is None or arr.shape != (n,) or int(arr.sum()) != round(v * n):
            return f"{k} not backed by its array"
    if rec.n_examples <= 0 or any(x is not None and (x < 0 or not math.isfinite(x))
                                  for x in (rec.inference_flops, rec.params)):
        return "compute or n_examples out of range"
    for k, a in arrays.items():
        if k.startswith("gallery_") and a.ndim == 4 and a.shape[1:] != (1, 28, 28):
            return f"gallery shape {a.shape}"
    return None


def _read(json_path: Path) -> str:
    rec = read_record(json_path)
    with np.load(json_path.with_name("fz.examples.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    why = independent_invariants(rec, arrays)
    return f"false-accept: {why}" if why else "accepted"


def run_record(tally: Tally, workdir: Path, text: bytes, npz: bytes | None = None, target: str = "record") -> None:
    folder = workdir / "results"
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "fz.json"
    if npz is None:
        npz = _base_npz()
    json_path.write_bytes(text)
    json_path.with_name("fz.examples.npz").write_bytes(npz)
    _classify(tally, target, lambda: _read(json_path))


def run_npz(tally: Tally, workdir: Path, npz: bytes) -> None:
    run_record(tally, workdir, json.dumps(_base_record()[0]).encode(), npz, target="npz")


# ---------------------------------------------------------------------------------------------
# signed records (harness.record.signing): a mutated signed record either verifies as the very record that
# was signed, or is refused with one line
_FUZZ_KEY_SEED = bytes(range(32))  # a throw-away key of the fuzzing, never a real one


@functools.lru_cache(maxsize=1)
def _signed_base() -> tuple[bytes, bytes, dict]:
    """The base record signed with the fuzzing key: (json bytes, npz bytes, the key's public entry)."""
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from harness.record.signing import load_public_key, public_pem, sign_record

    key = Ed25519PrivateKey.from_private_bytes(_FUZZ_KEY_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "fz.json").write_text(json.dumps(_base_record()[0], indent=2))
        (d / "fz.examples.npz").write_bytes(_base_npz())
        sign_record(d / "fz.json", key, signed_at="2026-01-01T00:00:00Z")
        (d / "fz.pub.pem").write_bytes(public_pem(key))
        trusted = load_public_key(d / "fz.pub.pem")
        return (d / "fz.json").read_bytes(), (d / "fz.examples.npz").read_bytes(), {trusted.key_id: trusted}


@st.composite
def signed_records(draw) -> tuple[bytes, bytes]:
    """(record json, examples npz): byte flips, re-dumped field edits with the signature kept, edits of
    the signature block itself, or the examples file changed under a good record."""
    text, npz, _ = _signed_base()
    rec = json.loads(text)
    kind = draw(st.sampled_from(["bytes", "fields", "signature", "npz", "reindent"]))
    if kind == "bytes":
        return draw(byte_mutations(text)), npz
    if kind == "npz":
        return text, draw(byte_mutations(npz))
    if kind == "reindent":  # the same record in another layout: must still verify
        return json.dumps(rec, indent=draw(st.sampled_from([None, 1, 4]))).encode(), npz
    if kind == "signature":
        sig = dict(rec["signature"])
        name = draw(st.sampled_from(sorted(sig) + ["extra"]))
        sig[name] = draw(hostile_values())
        return json.dumps({**rec, "signature": sig}, default=str).encode(), npz
    body = {k: v for k, v in rec.items() if k != "signature"}
    mutated = _apply_all(body, draw(mutations(body)))
    if isinstance(mutated, dict):
        mutated = {**mutated, "signature": rec["signature"]}
    return json.dumps(mutated, default=str).encode(), npz


def _verify_signed(json_path: Path) -> str:
    from harness.record.signing import canonical_json, verify_record

    text, npz, keys = _signed_base()
    verify_record(json_path, keys)
    # accepted: it must be the record that was signed, with the examples that were signed
    got = json.loads(json_path.read_bytes())
    want = json.loads(text)
    same = (canonical_json({k: v for k, v in got.items() if k != "signature"})
            == canonical_json({k: v for k, v in want.items() if k != "signature"}))
    if not same or json_path.with_name("fz.examples.npz").read_bytes() != npz:
        return "false-accept: a changed record or examples file verified"
    return "accepted"


def run_signed(tally: Tally, workdir: Path, pair: tuple[bytes, bytes]) -> None:
    folder = workdir / "signed"
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "fz.json"
    json_path.write_bytes(pair[0])
    json_path.with_name("fz.examples.npz").write_bytes(pair[1])
    _classify(tally, "signed", lambda: _verify_signed(json_path))


def check_base_inputs(workdir: Path) -> None:
    """The unmutated inputs are accepted (so refusals come from the mutations, not a broken base)."""
    tally = Tally()
    rec, arrays = base_record()
    run_record(tally, workdir, json.dumps(rec).encode(), _npz_bytes(arrays))
    assert tally.counts[("record", "accepted")] == 1, tally.examples
    run_schema(tally, workdir, BASE_SPEC)
    assert tally.counts[("schema", "accepted")] == 1, tally.counts
    text, npz, _ = _signed_base()
    run_signed(tally, workdir, (text, npz))
    assert tally.counts[("signed", "accepted")] == 1, tally.examples


__all__ = ["OUTCOMES", "Tally", "check_base_inputs", "examples_files", "records", "run_npz", "run_record",
           "run_schema", "run_signed", "run_yaml", "signed_records", "specs", "yaml_documents"]
