"""pr-check of an attack PR: a PR that only adds ``submissions/<id>/attacks/<name>/{attack.yaml,
adversarial.npz}`` for an entry re-evaluated on the base branch is validated and checked with
``harness attack-check`` (the model in the sandboxed worker), in the git fixture repositories of
tests/helpers/prcheck_repo.py. The base's mnist-pgd record is the weakened one of tests/helpers/attack.py
(signed there by a throw-away key), so that a PGD written in the tests breaks points AutoAttack missed."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers.attack import ENTRY, attack_dir, model_and_data, pgd, weaken
from helpers.prcheck_repo import check_rows, commit, git, make_repo, pr_check
from helpers.spec import REPO

from harness.core.errors import HarnessError
from harness.record.signing import generate_key, public_pem, sign_record


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The fixture repository (built once): the base's weakened record signed by a trusted throw-away
    key, and PGD images that break the weakened points."""
    tmp = tmp_path_factory.mktemp("attack-pr")
    with pytest.MonkeyPatch.context() as mp:
        root = make_repo(tmp, mp)
        git(root, "checkout", "-q", "main")
        res = root / "leaderboard" / "results"
        pos = weaken(res / f"{ENTRY}.json", res / f"{ENTRY}.examples.npz")
        key = generate_key()
        (root / "leaderboard" / "keys").mkdir(parents=True)
        (root / "leaderboard" / "keys" / "test.pub.pem").write_bytes(public_pem(key))
        sign_record(res / f"{ENTRY}.json", key)
        commit(root, "the weakened record, signed by a trusted key")
        git(root, "checkout", "-q", "pr")
        git(root, "reset", "-q", "--hard", "main")
    model, data = model_and_data(REPO)
    x, y = data.floats(pos), data.labels(pos)
    adv, wrong = pgd(model, x, y, 0.3, restarts=2)
    keep = wrong.numpy()
    assert keep.sum() >= 3
    return {"root": root, "cache": tmp / "cache", "index": pos[keep], "adv": adv[keep].numpy(),
            "clean": x[keep].numpy()}


@pytest.fixture
def repo(base, monkeypatch):
    """The base repository with the branch ``pr`` reset to ``main`` and no stray files."""
    from harness.submission.hosted import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(base["cache"]))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    git(base["root"], "checkout", "-q", "pr")
    git(base["root"], "reset", "-q", "--hard", "main")
    git(base["root"], "clean", "-qfdx")
    return base


@pytest.mark.slow  # the sandboxed worker starts torch: 2-6 s on a busy 2-core machine
def test_an_attack_pr_is_checked_with_attack_check_and_passes(repo, capsys, tmp_path):
    root = repo["root"]
    attack_dir(root, "pgd", repo["index"], repo["adv"])
    commit(root, "an attack")
    code, out, problems, _ = pr_check(root, capsys, "--keep", str(tmp_path / "keep"))
    assert code == 0, problems
    assert out.startswith(f"## pr-check: attack {ENTRY}/pgd: passed")
    rows = check_rows(out)
    k = len(repo["index"])
    row = rows["attack-check (sandboxed worker)"]
    assert f"{k} example(s)" in row and "within eps of the original" in row and f"{k} that AutoAttack missed" in row
    assert "No attack record is written here" in out
    kept = json.loads((tmp_path / "keep" / "attacks" / "pgd.json").read_text())  # --keep: the record it would write
    assert kept["broken_index"] == sorted(int(i) for i in repo["index"]) == kept["missed_by_autoattack"]


def test_an_out_of_ball_attack_is_refused_in_one_line(repo, capsys):
    root = repo["root"]
    imgs = repo["adv"].copy()
    imgs[0] = np.clip(repo["clean"][0] + 0.31, 0, 1)
    attack_dir(root, "pgd", repo["index"], imgs)
    commit(root, "an attack")
    code, out, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1
    assert "outside the Linf ball" in problems[0] and f"index {int(repo['index'][0])}" in problems[0]
    assert out.startswith(f"## pr-check: attack {ENTRY}/pgd: failed (1 problem)")


def test_an_attack_with_anything_else_is_no_attack_pr_and_two_attacks_are_refused(repo, capsys):
    root = repo["root"]
    attack_dir(root, "pgd", repo["index"], repo["adv"])
    (root / "leaderboard" / "results" / f"{ENTRY}.json").write_text("{}")  # a record edited beside it
    commit(root, "an attack and a record")
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and "leaderboard/results/mnist-pgd.json" in problems[0]
    git(root, "reset", "-q", "--hard", "main")
    attack_dir(root, "pgd", repo["index"], repo["adv"])
    attack_dir(root, "pgd2", repo["index"], repo["adv"])
    commit(root, "two attacks")
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1 and "one attack per pull request" in problems[0]


def test_an_attack_on_an_entry_not_on_the_base_branch_is_refused(repo, capsys):
    root = repo["root"]
    d = attack_dir(root, "pgd", repo["index"], repo["adv"]).parent
    shutil.move(str(d), str(root / "submissions" / "mnist-nope" / "attacks" / "pgd"))
    commit(root, "an attack on no entry")
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1 and "has no submission and result record there" in problems[0]


@pytest.mark.slow  # two sandboxed-worker runs
def test_without_the_dataset_every_check_but_the_ball_runs(repo, capsys, monkeypatch):
    import harness.data.loaders as loaders

    def absent(*a, **k):
        raise HarnessError("no dataset on this runner")

    monkeypatch.setattr(loaders, "load_test_data", absent)
    root = repo["root"]
    imgs = repo["adv"].copy()
    imgs[0] = repo["clean"][0]  # the clean image: the model gets it right (forged), found without the data
    attack_dir(root, "pgd", repo["index"], imgs)
    commit(root, "a forged attack")
    code, _, problems, _ = pr_check(root, capsys)
    assert code == 1 and len(problems) == 1 and "classifies the submitted image correctly" in problems[0]
    git(root, "reset", "-q", "--hard", "main")
    attack_dir(root, "pgd", repo["index"], repo["adv"])
    commit(root, "an attack")
    code, out, problems, _ = pr_check(root, capsys)
    assert code == 0, problems
    row = check_rows(out)["attack-check (sandboxed worker)"]
    assert "within eps" not in row and "misclassified by the model" in row
    assert "was not checked: mnist is not available on this runner" in out
