"""pr-check of a records PR: the branch the evaluation's sign job pushes (`records/<id>-...`) adds or
replaces only `leaderboard/results/<id>.json` + `.examples.npz`. It passes only when every record
verifies against the BASE branch's `leaderboard/keys/` (a key the PR brings vouches for nothing),
belongs to its submission as merged, and replaces no larger record."""
from __future__ import annotations

import json
import shutil

import pytest
from helpers.prcheck_repo import commit, git, make_repo, pr_check
from helpers.spec import REPO

from harness.record.signing import generate_key, public_pem, sign_record


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """The fixture repository, whose base branch trusts the maintainers' key and a throw-away evaluation key."""
    root = make_repo(tmp_path, monkeypatch)
    key = generate_key()
    git(root, "checkout", "-q", "main")
    shutil.copytree(REPO / "leaderboard" / "keys", root / "leaderboard" / "keys")  # the maintainers' key
    (root / "leaderboard" / "keys" / "ci-record-signing.pub.pem").write_bytes(public_pem(key))
    commit(root, "trust the evaluation key")
    git(root, "checkout", "-q", "pr")
    git(root, "reset", "-q", "--hard", "main")
    return root, key


def _resign(root, eid, key):
    """What the sign job does: the trusted evaluation's record, signed again (a new signing time)."""
    sign_record(root / "leaderboard" / "results" / f"{eid}.json", key, signed_at="2026-12-07T00:00:00Z")


def test_a_record_signed_by_a_base_key_passes(repo, capsys):
    root, key = repo
    _resign(root, "mnist-pgd", key)
    commit(root)
    code, out, problems, _ = pr_check(root, capsys)
    assert code == 0, problems
    assert out.startswith("## pr-check: records PR: passed")
    assert "record mnist-pgd" in out and "500 examples" in out


def test_a_record_signed_by_an_unknown_key_is_refused(repo, capsys):
    root, _ = repo
    _resign(root, "mnist-pgd", generate_key())  # the attacker's own key
    commit(root)
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1
    assert "leaderboard/results/mnist-pgd.json: signed by unknown key" in problems[0]


def test_a_key_brought_by_the_pr_vouches_for_nothing(repo, capsys):
    root, _ = repo
    attacker = generate_key()
    (root / "leaderboard" / "keys" / "mine.pub.pem").write_bytes(public_pem(attacker))
    _resign(root, "mnist-pgd", attacker)
    commit(root)
    code, out, problems, _ = pr_check(root, capsys)
    assert code == 1 and "not a submission PR" in problems[0] and "records PR" not in out


def test_an_edited_record_is_refused(repo, capsys):
    root, key = repo
    p = root / "leaderboard" / "results" / "mnist-pgd.json"
    d = json.loads(p.read_text())
    d["inference_flops"] = 1000.0
    p.write_text(json.dumps(d, indent=2))
    commit(root)
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1 and "mnist-pgd.json: bad signature" in problems[0]


def test_a_record_of_a_submission_not_on_the_base_is_refused(repo, capsys):
    root, key = repo
    res = root / "leaderboard" / "results"
    for suffix in (".json", ".examples.npz"):
        shutil.copy(res / f"mnist-pgd{suffix}", res / f"ghost{suffix}")
    commit(root)
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1
    assert "ghost.json: its submission submissions/ghost/submission.yaml is not on the base branch" in problems[0]


def test_a_record_is_never_replaced_by_a_smaller_one(repo, capsys):
    root, key = repo
    git(root, "checkout", "-q", "main")  # the base's record covers more examples than the PR's
    p = root / "leaderboard" / "results" / "mnist-pgd.json"
    d = json.loads(p.read_text())
    d["n_examples"] = 10000
    p.write_text(json.dumps(d, indent=2))
    commit(root, "a larger record on the base")
    git(root, "checkout", "-q", "pr")
    git(root, "reset", "-q", "--hard", "main")
    git(root, "checkout", "-q", "main~1", "--", "leaderboard/results/mnist-pgd.json")
    _resign(root, "mnist-pgd", key)
    commit(root)
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1
    assert "would replace the record on the base branch with a smaller one (500 examples)" in problems[0]
