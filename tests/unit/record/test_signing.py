"""harness.record.signing: Ed25519 signatures over a record and its examples file, the keys, `harness sign`
and `harness keygen`. Every key here is a throw-away key made by the test."""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.core.errors import HarnessError
from harness.record import signing
from harness.record.read import read_record
from harness.record.schema import ResultRecord
from harness.record.signing import (
    KEYS_DIR,
    canonical_json,
    generate_key,
    key_id,
    keygen,
    load_public_key,
    load_signing_key,
    load_trusted_keys,
    private_pem,
    public_pem,
    sign_record,
    signature_of,
    verify_record,
)

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "leaderboard" / "results"
EID = "mnist-pgd"


def one_line_error(exc_info, *, path: Path | None = None) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    if path is not None:
        assert str(path) in msg, msg
    return msg


@pytest.fixture
def record(tmp_path) -> Path:
    """A copy of a bundled record and its examples, its maintainers' signature removed."""
    for suffix in (".json", ".examples.npz"):
        shutil.copy(RESULTS / f"{EID}{suffix}", tmp_path / f"{EID}{suffix}")
    path = tmp_path / f"{EID}.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    d.pop("signature", None)
    path.write_text(json.dumps(d, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def key():
    return generate_key()


def trust(folder: Path, *keys) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(keys):
        (folder / f"k{i}.pub.pem").write_bytes(public_pem(k))
    return load_trusted_keys(folder)


# ---------------------------------------------------------------------------------------------
def test_canonical_serialisation_is_sorted_compact_utf8_and_finite():
    assert canonical_json({"b": 1, "a": [1.5, "é", None, True], "c": {"z": 0.1, "y": 10**20}}) == \
        '{"a":[1.5,"é",null,true],"b":1,"c":{"y":100000000000000000000,"z":0.1}}'.encode()
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(HarnessError, match="finite"):
            canonical_json({"x": [bad]})
    with pytest.raises(HarnessError, match="surrogate"):
        canonical_json({"x": "\ud800"})


def test_round_trip_and_idempotent(record, key, tmp_path):
    keys = trust(tmp_path / "keys", key)
    before = json.loads(record.read_text(encoding="utf-8"))
    res = sign_record(record, key)
    assert res.status == "signed" and res.key_id == key_id(key.public_key())
    v = verify_record(record, keys)
    assert v.key_id == res.key_id and v.key_name == "k0"
    after = json.loads(record.read_text(encoding="utf-8"))
    sig = after.pop("signature")
    assert after == before  # only the signature block was added
    assert set(sig) == {"algorithm", "key_id", "examples_sha256", "signed_at", "value"}
    assert sig["algorithm"] == "ed25519" and len(base64.b64decode(sig["value"])) == 64
    assert read_record(record).signature.key_id == res.key_id  # the schema accepts the block
    signed = record.read_bytes()
    assert sign_record(record, key).status == "unchanged"  # idempotent: same bytes
    assert record.read_bytes() == signed
    # re-indenting the JSON keeps the signature valid (it covers the values, not the layout)
    record.write_text(json.dumps(json.loads(signed), indent=1, ensure_ascii=True), encoding="utf-8")
    verify_record(record, keys)


def test_signing_keeps_the_harness_layout_byte_for_byte(record, key):
    rec = read_record(record)
    record.write_text(rec.model_dump_json(indent=2) + "\n", encoding="utf-8")  # as harness eval writes it
    original = record.read_text(encoding="utf-8")
    sign_record(record, key)
    signed = record.read_text(encoding="utf-8")
    head = original.split('"signature"')[0]
    assert signed.startswith(head) and signed.endswith("}\n")


def test_another_key_re_signs(record, key, tmp_path):
    sign_record(record, generate_key())
    res = sign_record(record, key)
    assert res.status == "re-signed" and res.previous_key_id != res.key_id
    verify_record(record, trust(tmp_path / "keys", key))


def test_unsigned_and_unknown_key_are_refused(record, key, tmp_path):
    keys = trust(tmp_path / "keys", key)
    with pytest.raises(HarnessError, match="unsigned record") as e:
        verify_record(record, keys)
    one_line_error(e, path=record)
    attacker = generate_key()
    sign_record(record, attacker)
    with pytest.raises(HarnessError, match=f"signed by unknown key {key_id(attacker.public_key())}") as e:
        verify_record(record, keys)
    one_line_error(e, path=record)


@pytest.mark.parametrize("old,new", [
    ('"seed": 0', '"seed": 1'),                              # a number
    ('"name": "', '"name": "X'),                             # a name
    ('"submission_id": "mnist-pgd"', '"submission_id": "mnist-pgh"'),  # a replay under another id
    ('"inference_flops": ', '"inference_flops": 1'),         # one digit more
])
def test_one_byte_changed_in_the_json_is_refused(record, key, tmp_path, old, new):
    keys = trust(tmp_path / "keys", key)
    sign_record(record, key)
    text = record.read_text(encoding="utf-8")
    assert old in text
    record.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(HarnessError, match="bad signature") as e:
        verify_record(record, keys)
    one_line_error(e, path=record)


def test_one_byte_changed_in_the_examples_is_refused(record, key, tmp_path):
    keys = trust(tmp_path / "keys", key)
    sign_record(record, key)
    npz = record.with_name(f"{EID}.examples.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    with pytest.raises(HarnessError, match="examples digest mismatch") as e:
        verify_record(record, keys)
    one_line_error(e, path=record)
    # claiming the new digest in the signature block does not help: the block is signed too
    d = json.loads(record.read_text(encoding="utf-8"))
    d["signature"]["examples_sha256"] = signing.examples_digest(record)
    record.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(HarnessError, match="bad signature"):
        verify_record(record, keys)
    npz.unlink()
    with pytest.raises(HarnessError, match="does not exist") as e:
        verify_record(record, keys)
    one_line_error(e, path=record)


def test_a_forged_signed_at_is_refused(record, key, tmp_path):
    keys = trust(tmp_path / "keys", key)
    sign_record(record, key, signed_at="2026-01-01T00:00:00Z")
    d = json.loads(record.read_text(encoding="utf-8"))
    d["signature"]["signed_at"] = "2027-01-01T00:00:00Z"
    record.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(HarnessError, match="bad signature"):
        verify_record(record, keys)


def _valid_block(key) -> dict:
    return {"algorithm": "ed25519", "key_id": key_id(key.public_key()), "examples_sha256": "0" * 64,
            "signed_at": "2026-01-01T00:00:00Z", "value": base64.b64encode(bytes(64)).decode()}


@pytest.mark.parametrize("mutate,match", [
    (lambda b: "abc", "signature"),
    (lambda b: [b], "signature"),
    (lambda b: {}, "algorithm"),
    (lambda b: {**b, "algorithm": "rsa"}, "algorithm"),
    (lambda b: {**b, "extra": 1}, "extra"),
    (lambda b: {k: v for k, v in b.items() if k != "value"}, "value"),
    (lambda b: {**b, "key_id": "ABC"}, "key_id"),
    (lambda b: {**b, "key_id": 12345}, "key_id"),
    (lambda b: {**b, "value": "!" * 88}, "value"),
    (lambda b: {**b, "value": base64.b64encode(bytes(63)).decode()}, "value"),
    (lambda b: {**b, "examples_sha256": "z" * 64}, "examples_sha256"),
    (lambda b: {**b, "signed_at": "yesterday"}, "signed_at"),
    (lambda b: {**b, "signed_at": "2026-02-30T00:00:00Z"}, "signed_at"),
])
def test_malformed_signature_blocks_are_refused_in_one_line(record, key, tmp_path, mutate, match):
    keys = trust(tmp_path / "keys", key)
    d = json.loads(record.read_text(encoding="utf-8"))
    d["signature"] = mutate(_valid_block(key))
    record.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(HarnessError, match="malformed signature block") as e:
        verify_record(record, keys)
    assert match in one_line_error(e, path=record)
    with pytest.raises(HarnessError, match="signature") as e:  # the record schema refuses it too
        read_record(record)
    one_line_error(e, path=record)


def test_a_null_signature_is_unsigned(record, key, tmp_path):
    d = json.loads(record.read_text(encoding="utf-8"))
    d["signature"] = None
    record.write_text(json.dumps(d), encoding="utf-8")
    assert signature_of(record) is None and read_record(record).signature is None
    with pytest.raises(HarnessError, match="unsigned record"):
        verify_record(record, trust(tmp_path / "keys", key))


def test_only_a_valid_record_is_signed(record, key):
    d = json.loads(record.read_text(encoding="utf-8"))
    d["robust_accuracy"] = 0.999
    record.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(HarnessError, match="robust_accuracy") as e:
        sign_record(record, key)
    one_line_error(e, path=record)
    assert "signature" not in json.loads(record.read_text(encoding="utf-8"))


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=90),
                          lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=20), c, max_size=6),
                          max_leaves=12),
       field=st.sampled_from(["value", "key_id", "signed_at", "examples_sha256", "algorithm", None]))
def test_fuzzed_signature_blocks_give_one_line_errors(record, key, tmp_path, block, field):
    keys = trust(tmp_path / "keys", key)
    d = json.loads(record.read_text(encoding="utf-8"))
    d["signature"] = block if field is None else {**_valid_block(key), field: block}
    record.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(HarnessError) as e:
        verify_record(record, keys)
    one_line_error(e)


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_garbage_record_files_give_one_line_errors(tmp_path, key, data):
    p = tmp_path / "garbage.json"
    p.write_bytes(data)
    for call in (lambda: verify_record(p, {}), lambda: sign_record(p, key), lambda: sign_record(p, key, check=False)):
        with pytest.raises(HarnessError) as e:
            call()
        one_line_error(e)


# ---------------------------------------------------------------------------------------------
# keys
def test_keygen_writes_a_private_key_0600_and_refuses_to_overwrite(tmp_path):
    priv, pub, kid = keygen(tmp_path / "k", "mine")
    assert priv.name == "mine.pem" and pub.name == "mine.pub.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert key_id(load_signing_key(priv).public_key()) == kid == load_public_key(pub).key_id
    assert b"PRIVATE" not in pub.read_bytes()
    with pytest.raises(HarnessError, match="refusing to overwrite"):
        keygen(tmp_path / "k", "mine")
    with pytest.raises(HarnessError, match="--name"):
        keygen(tmp_path / "k", "../evil")


def test_load_signing_key_from_file_env_text_and_env_file(tmp_path, key):
    pem = private_pem(key)
    f = tmp_path / "k.pem"
    f.write_bytes(pem)
    kid = key_id(key.public_key())
    assert key_id(load_signing_key(f, env={}).public_key()) == kid
    assert key_id(load_signing_key(env={"ROBUST_FRONTIER_SIGNING_KEY": pem.decode()}).public_key()) == kid
    assert key_id(load_signing_key(env={"ROBUST_FRONTIER_SIGNING_KEY_FILE": str(f)}).public_key()) == kid
    # an empty secret (as GitHub Actions gives an unset one) falls through to the file
    assert key_id(load_signing_key(env={"ROBUST_FRONTIER_SIGNING_KEY": "",
                                        "ROBUST_FRONTIER_SIGNING_KEY_FILE": str(f)}).public_key()) == kid
    with pytest.raises(HarnessError, match="no signing key"):
        load_signing_key(env={})


def test_bad_signing_keys_are_refused_without_quoting_them(tmp_path, key):
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    cases = {"encrypted": (enc, "encrypted"), "rsa": (rsa_pem, "not an Ed25519"),
             "public": (public_pem(key), "not an Ed25519 private key"), "junk": (b"\x00\xffjunk", "not an Ed25519")}
    for name, (data, match) in cases.items():
        p = tmp_path / f"{name}.pem"
        p.write_bytes(data)
        with pytest.raises(HarnessError, match=match) as e:
            load_signing_key(p, env={})
        msg = one_line_error(e, path=p)
        assert "BEGIN" not in msg and "MII" not in msg
    with pytest.raises(HarnessError, match="ROBUST_FRONTIER_SIGNING_KEY") as e:
        load_signing_key(env={"ROBUST_FRONTIER_SIGNING_KEY": "-----BEGIN PRIVATE KEY-----\nsecretstuff\n"})
    assert "secretstuff" not in one_line_error(e)


def test_trusted_keys_folder(tmp_path, key):
    folder = tmp_path / "keys"
    keys = trust(folder, key)
    assert list(keys) == [key_id(key.public_key())]
    assert load_trusted_keys(tmp_path / "none") == {}
    (folder / "junk.pub.pem").write_text("not a key")
    with pytest.raises(HarnessError, match="junk.pub.pem: not a public key"):
        load_trusted_keys(folder)
    (folder / "junk.pub.pem").unlink()
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (folder / "rsa.pub.pem").write_bytes(rsa_pub.public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(HarnessError, match="rsa.pub.pem: not an Ed25519 public key"):
        load_trusted_keys(folder)
    (folder / "rsa.pub.pem").unlink()
    (folder / "oops.pem").write_bytes(private_pem(key))  # a private key committed by mistake
    with pytest.raises(HarnessError, match="oops.pem: only public keys"):
        load_trusted_keys(folder)


def test_the_bundled_records_are_signed_by_the_maintainers_key():
    keys = load_trusted_keys(REPO / KEYS_DIR)
    names = {k.name for k in keys.values()}
    assert "maintainers-ed25519" in names
    for k in keys.values():  # only public halves in the project
        assert b"PRIVATE" not in k.path.read_bytes()
    records = sorted(RESULTS.glob("*.json"))
    assert records
    for p in records:
        assert verify_record(p, keys).key_name == "maintainers-ed25519", p


def test_the_record_schema_has_the_optional_signature_block():
    assert "signature" in ResultRecord.model_fields
    assert ResultRecord.model_fields["signature"].default is None


# ---------------------------------------------------------------------------------------------
# the command line
def test_cli_keygen_sign_and_errors(tmp_path, record, capsys, monkeypatch):
    monkeypatch.delenv("ROBUST_FRONTIER_SIGNING_KEY", raising=False)
    monkeypatch.delenv("ROBUST_FRONTIER_SIGNING_KEY_FILE", raising=False)
    assert main(["keygen", "--out", str(tmp_path / ".keys")]) == 0
    out = capsys.readouterr().out
    priv = tmp_path / ".keys" / "local-ed25519.pem"
    kid = key_id(load_signing_key(priv).public_key())
    assert kid in out and "0600" in out
    assert main(["keygen", "--out", str(tmp_path / ".keys")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "refusing to overwrite" in err

    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe{not json")
    assert main(["sign", str(record), str(garbage), str(tmp_path / "missing.json"), "--key", str(priv)]) == 2
    cap = capsys.readouterr()
    assert f"{record}: signed by key {kid}" in cap.out
    errs = cap.err.splitlines()
    assert len(errs) == 2 and all(e.startswith("error: ") for e in errs) and "Traceback" not in cap.err
    assert str(garbage) in errs[0] and "missing.json" in errs[1]
    # idempotent, and the key from the environment (PEM text, as a CI secret gives it)
    monkeypatch.setenv("ROBUST_FRONTIER_SIGNING_KEY", priv.read_text())
    assert main(["sign", str(record)]) == 0
    assert "unchanged" in capsys.readouterr().out
    monkeypatch.delenv("ROBUST_FRONTIER_SIGNING_KEY")
    assert main(["sign", str(record)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no signing key" in err


def test_gitignore_keeps_private_keys_out(tmp_path):
    text = (REPO / ".gitignore").read_text(encoding="utf-8")
    assert ".keys/" in text.split() and "leaderboard/keys/*.pem" in text.split()
    if shutil.which("git") and (REPO / ".git").exists():
        import subprocess

        for path, ignored in ((".keys/local-ed25519.pem", True), ("leaderboard/keys/x.pem", True),
                              ("leaderboard/keys/maintainers-ed25519.pub.pem", False)):
            r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path],
                               capture_output=True, env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"})
            assert (r.returncode == 0) == ignored, path
