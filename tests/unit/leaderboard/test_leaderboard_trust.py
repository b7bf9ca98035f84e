"""The board trusts only signed records: `harness leaderboard build` on a git fixture repository
copied from the project (two bundled entries, their signed records and leaderboard/keys/), with a
pull-request branch per case. Every key made here is a throw-away key.

- the forged CIFAR-10 entry of issue 16 (the real arrays of points 0-99, points 100-9,999 invented,
  every hash recomputed), unsigned or signed with the attacker's own key: refused;
- a signed record replayed under a new id, and a committed record with one number changed: refused;
- a record signed by a key whose public half is in leaderboard/keys/: accepted, re-evaluated;
- --local: unsigned records and leaderboard/results/local/ shown, marked local, never re-evaluated;
- two entries of the same checkpoint are flagged; a missing root or an empty board is an error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from helpers.spec import REPO

from harness.cli import main
from harness.core.errors import HarnessError
from harness.core.files import sha256_file
from harness.core.stats import clopper_pearson
from harness.record.signing import generate_key, key_id, public_pem, sign_record
from harness.submission.load import load_submission, verify_files
from leaderboard.boards import load_entries
from leaderboard.build import build_leaderboard

CIFAR = "cifar10-autoattack-resnet18"
MNIST = "mnist-standard"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def commit(root, msg="pr"):
    git(root, "add", "-A")
    git(root, "commit", "-qm", msg)


@pytest.fixture
def repo(tmp_path):
    """A git repository whose `main` holds two bundled entries with their maintainer-signed records
    and the project's leaderboard/keys/; HEAD is a fresh branch `pr` off it."""
    root = tmp_path / "repo"
    res = root / "leaderboard" / "results"
    res.mkdir(parents=True)
    for eid in (CIFAR, MNIST):
        shutil.copytree(REPO / "submissions" / eid, root / "submissions" / eid)
        for suffix in (".json", ".examples.npz"):
            shutil.copy(REPO / "leaderboard" / "results" / f"{eid}{suffix}", res)
    shutil.copytree(REPO / "leaderboard" / "keys", root / "leaderboard" / "keys")
    git(root, "init", "-q", "-b", "main")
    commit(root, "base")
    git(root, "checkout", "-qb", "pr")
    return root


def rec_path(root, eid):
    return root / "leaderboard" / "results" / f"{eid}.json"


def trust_test_key(root):
    """A throw-away key of 'the trusted evaluation': its public half in the fixture's leaderboard/keys/."""
    key = generate_key()
    (root / "leaderboard" / "keys" / "test-ed25519.pub.pem").write_bytes(public_pem(key))
    return key


def copy_submission(root, src, eid, **spec_over):
    folder = root / "submissions" / eid
    shutil.copytree(root / "submissions" / src, folder)
    spec = yaml.safe_load((folder / "submission.yaml").read_text(encoding="utf-8"))
    spec.update(id=eid, **spec_over)
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return folder / "submission.yaml"


def rehash(d, yaml_path):
    """What a forger does: the provenance hashes of the new submission."""
    d["provenance"]["submission_sha256"] = sha256_file(yaml_path)
    d["provenance"]["files_sha256"] = verify_files(load_submission(yaml_path))
    d["provenance"]["results_sha256"] = load_submission(yaml_path).results_sha256


def _ci(k, n):
    return list(clopper_pearson(k, n))


def forge_cifar(root, eid="cifar10-forged"):
    """Issue 16's forgery: the bundled CIFAR-10 entry copied under a new id, the real arrays of points
    0-99 kept and points 100-9,999 invented (clean 95%, AutoAttack 70%, IBP 60%, 1,000 FLOPs and
    parameters), every interval and hash recomputed; no signature."""
    n = 10_000
    y = copy_submission(root, CIFAR, eid, name="Forged ResNet-18", evaluation={"n_examples": n, "seed": 0})
    d = json.loads(rec_path(root, CIFAR).read_text(encoding="utf-8"))
    d.pop("signature")
    with np.load(root / "leaderboard" / "results" / f"{CIFAR}.examples.npz") as z:
        real = {k: z[k] for k in z.files}
    g = np.random.default_rng(0)
    label = np.concatenate([real["label"], g.integers(0, 10, n - 100).astype(real["label"].dtype)])
    correct = np.concatenate([real["clean_correct"], np.zeros(n - 100, bool)])
    robust = np.concatenate([real["autoattack_robust"], np.zeros(n - 100, bool)])
    cert = np.concatenate([real["certified_ibp"], np.zeros(n - 100, bool)])
    fresh = 100 + np.arange(n - 100)
    correct[fresh[: 9500 - int(correct.sum())]] = True
    robust[fresh[: 7000 - int(robust.sum())]] = True
    cert[fresh[: 6000 - int(cert.sum())]] = True
    arrays = {"index": np.arange(n), "label": label, "clean_correct": correct, "autoattack_robust": robust,
              "certified_ibp": cert, **{k: v for k, v in real.items() if k.startswith("gallery_")}}
    np.savez_compressed(root / "leaderboard" / "results" / f"{eid}.examples.npz", **arrays)
    d.update(submission_id=eid, name="Forged ResNet-18", n_examples=n, stages=["clean", "flops", "certify",
                                                                               "autoattack"],
             clean_accuracy=0.95, clean_accuracy_ci95=_ci(9500, n),
             robust_accuracy=0.70, robust_accuracy_ci95=_ci(7000, n),
             params=1000, inference_flops=1000.0, flops_by_operator=None, diagnostics=None,
             examples_file=f"{eid}.examples.npz")
    after = {a: (0.95 if a == "clean" else 0.70) for a in d["autoattack"]["accuracy_after"]}
    d["autoattack"].update(accuracy_after=after, checks=[], n_attacked=9500, n_skipped_misclassified=500,
                           n_skipped_certified=0)
    d["certified"]["ibp"].update(certified_accuracy=0.60, certified_accuracy_ci95=_ci(6000, n), acr=0.01,
                                 acr_percent=30.0, curve=[], details={})
    rehash(d, y)
    path = rec_path(root, eid)
    path.write_text(json.dumps(d, indent=2), encoding="utf-8")
    return path


def refused(root, path, match):
    """`harness leaderboard build` refuses: one line on stderr naming the file, exit 2, no site."""
    out = root.parent / "site"
    with pytest.raises(HarnessError, match=match) as e:
        build_leaderboard(root, out)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert not out.exists()
    return msg


def cli_refuses(root, capsys, *args) -> str:
    assert main(["leaderboard", "build", "--root", str(root), "--out", str(root.parent / "site"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def entries(root, **kw):
    return {e.id: e for e in load_entries(root, **kw).entries}


# ---------------------------------------------------------------------------------------------
def test_the_fixture_builds_with_the_maintainers_signatures(repo):
    got = entries(repo)
    assert {got[CIFAR].kind, got[MNIST].kind} == {"re-evaluated"}
    assert got[CIFAR].signed_by.key_name == "maintainers-ed25519"


def test_the_forged_cifar10_entry_unsigned_is_refused(repo, capsys):
    path = forge_cifar(repo)
    commit(repo)
    refused(repo, path, "unsigned record")
    assert "cifar10-forged.json: unsigned record" in cli_refuses(repo, capsys)
    # every other check passes: a local board shows the forgery, marked local, and the clash with the
    # genuine entry of the same checkpoint is flagged on both
    got = entries(repo, local=True)
    forged, genuine = got["cifar10-forged"], got[CIFAR]
    assert (forged.kind, forged.trust) == ("local", "local, unsigned") and forged.robust == 0.70
    assert genuine.kind == "re-evaluated"
    for e, other in ((forged, CIFAR), (genuine, "cifar10-forged")):
        (flag,) = [f for f in e.flags if f.name == "duplicate-checkpoint"]
        assert other in flag.message and flag.details["others"] == [other] and "on this board" in flag.message


def test_the_forged_entry_signed_with_the_attackers_own_key_is_refused(repo, capsys, tmp_path):
    path = forge_cifar(repo)
    attacker = generate_key()
    sign_record(path, attacker)
    commit(repo)
    kid = key_id(attacker.public_key())
    refused(repo, path, f"signed by unknown key {kid}")
    cli_refuses(repo, capsys)
    with pytest.raises(HarnessError, match="--trust-key"):  # a local board does not trust it either
        load_entries(repo, local=True)
    # unless the researcher names the key: then it is theirs, shown as local, never re-evaluated
    pub = tmp_path / "attacker.pub.pem"
    pub.write_bytes(public_pem(attacker))
    e = entries(repo, local=True, trust_keys=[pub])["cifar10-forged"]
    assert (e.kind, e.trust) == ("local", f"local, signed by {kid}")
    with pytest.raises(HarnessError, match="--local"):
        load_entries(repo, trust_keys=[pub])


def test_a_signed_record_replayed_under_a_new_id_is_refused(repo, capsys):
    y = copy_submission(repo, CIFAR, "cifar10-replay", name="Replayed ResNet-18")
    shutil.copy(repo / "leaderboard" / "results" / f"{CIFAR}.examples.npz",
                repo / "leaderboard" / "results" / "cifar10-replay.examples.npz")
    d = json.loads(rec_path(repo, CIFAR).read_text(encoding="utf-8"))
    d.update(submission_id="cifar10-replay", examples_file="cifar10-replay.examples.npz")
    rehash(d, y)
    path = rec_path(repo, "cifar10-replay")
    path.write_text(json.dumps(d, indent=2), encoding="utf-8")
    commit(repo)
    refused(repo, path, "bad signature")
    assert "cifar10-replay.json: bad signature" in cli_refuses(repo, capsys)


def test_an_edited_committed_record_is_refused(repo, capsys):
    path = rec_path(repo, MNIST)
    text = path.read_text(encoding="utf-8")
    old = f'"inference_flops": {json.loads(text)["inference_flops"]}'
    assert old in text
    path.write_text(text.replace(old, '"inference_flops": 1000.0', 1), encoding="utf-8")  # one number
    commit(repo)
    refused(repo, path, "bad signature")
    cli_refuses(repo, capsys)
    with pytest.raises(HarnessError, match="bad signature"):  # nor on a local board
        load_entries(repo, local=True)


def test_a_correctly_signed_record_is_accepted_and_shown_re_evaluated(repo, tmp_path):
    key = trust_test_key(repo)
    kid = key_id(key.public_key())
    y = copy_submission(repo, CIFAR, "cifar10-again", name="ResNet-18, evaluated again")
    shutil.copy(repo / "leaderboard" / "results" / f"{CIFAR}.examples.npz",
                repo / "leaderboard" / "results" / "cifar10-again.examples.npz")
    d = json.loads(rec_path(repo, CIFAR).read_text(encoding="utf-8"))
    d.update(submission_id="cifar10-again", name="ResNet-18, evaluated again",
             examples_file="cifar10-again.examples.npz")
    d.pop("signature")
    rehash(d, y)
    path = rec_path(repo, "cifar10-again")
    path.write_text(json.dumps(d, indent=2), encoding="utf-8")
    assert sign_record(path, key).status == "signed"  # what the trusted evaluation's signing step does
    commit(repo)
    out = build_leaderboard(repo, tmp_path / "site")
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert data["local_board"] is False
    shown = {e["id"]: e for b in data["boards"] for e in b["entries"]}
    e = shown["cifar10-again"]
    assert (e["source"], e["trust"]) == ("re-evaluated", "re-evaluated")
    assert e["signature"]["key_id"] == kid and e["signature"]["key_name"] == "test-ed25519"
    assert shown[CIFAR]["signature"]["key_name"] == "maintainers-ed25519"
    # the same checkpoint twice: both flagged, naming the other
    assert any(f["name"] == "duplicate-checkpoint" and CIFAR in f["message"] for f in e["flags"])
    assert any(f["name"] == "duplicate-checkpoint" and "cifar10-again" in f["message"]
               for f in shown[CIFAR]["flags"])
    assert f"signed by {kid}" in (out / "leaderboard.md").read_text(encoding="utf-8")
    page = (out / "entries" / "cifar10-again.html").read_text(encoding="utf-8")
    assert kid in page and "Re-evaluated" in page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="local-board"' not in index and 'class="badge local"' not in index


def test_local_board_shows_unsigned_and_scratch_records_marked_local(repo, tmp_path, capsys):
    # an unsigned record under leaderboard/results/ (a researcher's own evaluation)...
    forge_cifar(repo, "cifar10-mine")
    # ... and a scratch record of `harness eval` in leaderboard/results/local/, of a published id
    local = repo / "leaderboard" / "results" / "local"
    local.mkdir()
    shutil.copy(repo / "leaderboard" / "results" / f"{MNIST}.examples.npz", local)
    d = json.loads(rec_path(repo, MNIST).read_text(encoding="utf-8"))
    d.pop("signature")
    d["name"] = "Standard CNN, my run"
    (local / f"{MNIST}.json").write_text(json.dumps(d, indent=2), encoding="utf-8")

    cli_refuses(repo, capsys)  # the published board refuses the unsigned record
    (repo / "leaderboard" / "results" / "cifar10-mine.json").rename(tmp_path / "mine.json")
    published = entries(repo)  # results/local/ is not read without --local
    assert published[MNIST].kind == "re-evaluated" and published[MNIST].name != "Standard CNN, my run"
    (tmp_path / "mine.json").rename(repo / "leaderboard" / "results" / "cifar10-mine.json")

    assert main(["leaderboard", "build", "--local", "--root", str(repo), "--out", str(tmp_path / "site")]) == 0
    assert "local board written to" in capsys.readouterr().out
    out = tmp_path / "site"
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert data["local_board"] is True
    shown = {e["id"]: e for b in data["boards"] for e in b["entries"]}
    assert (shown["cifar10-mine"]["source"], shown["cifar10-mine"]["trust"]) == ("local", "local, unsigned")
    mine = shown[MNIST]  # the scratch record in place of the published one, marked local
    assert (mine["source"], mine["trust"], mine["name"]) == ("local", "local, unsigned", "Standard CNN, my run")
    assert shown[CIFAR]["source"] == "re-evaluated"
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "local board" in md and md.count("local, unsigned \\(n=") == 2  # Markdown-escaped
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="local-board"' in index and index.count('<span class="badge local" title=') == 2  # one per local row
    assert "Local evaluation, not re-evaluated" in (out / "entries" / "cifar10-mine.html").read_text(encoding="utf-8")


def test_a_local_scratch_record_is_never_re_evaluated(repo):
    """Even signed by a trusted key, a record in leaderboard/results/local/ stays local."""
    key = trust_test_key(repo)
    local = repo / "leaderboard" / "results" / "local"
    local.mkdir()
    for suffix in (".json", ".examples.npz"):
        shutil.copy(repo / "leaderboard" / "results" / f"{MNIST}{suffix}", local)
    sign_record(local / f"{MNIST}.json", key)
    e = entries(repo, local=True)[MNIST]
    assert (e.kind, e.trust) == ("local", f"local, signed by {key_id(key.public_key())}")
    assert e.record_path == local / f"{MNIST}.json"


# ---------------------------------------------------------------------------------------------
def test_a_missing_root_or_an_empty_board_is_a_one_line_error(tmp_path, capsys):
    for root, match in ((tmp_path / "nonexistent", "no such folder"),
                        (tmp_path, "not a robust-frontier repository")):
        assert main(["leaderboard", "build", "--root", str(root), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err
    (tmp_path / "leaderboard" / "results").mkdir(parents=True)
    (tmp_path / "submissions").mkdir()
    assert main(["leaderboard", "build", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no entries" in err
    assert not (tmp_path / "o").exists()


def test_a_private_key_in_leaderboard_keys_stops_the_build(repo):
    (repo / "leaderboard" / "keys" / "oops.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(HarnessError, match="oops.pem: only public keys"):
        load_entries(repo)
