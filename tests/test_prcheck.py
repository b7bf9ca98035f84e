"""`harness pr-check` on throw-away git repositories: a base commit on `main` with two real entries
(mnist-standard and mnist-pgd, their checkpoints and records copied from this repository), and a PR
branch per case. Every failure must print one line per problem and no traceback.

The smoke evaluations use the MNIST standard CNN on a handful of points (AutoAttack breaks every
point in its first attack, so the later attacks have nothing to do).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO
from hosting import FileServer

from harness.cli import main
from harness.files import sha256_file
from harness.hosted import CACHE_ENV
from harness.stats import accuracy_with_ci
from harness.submission import load_submission, verify_files

BASE_ENTRIES = ("mnist-standard", "mnist-pgd")
CKPT = REPO / "submissions" / "mnist-standard" / "model.safetensors"
CKPT_SHA = sha256_file(CKPT)
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository whose `main` holds two entries; HEAD is a fresh branch `pr` off it."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "repo"
    for eid in BASE_ENTRIES:
        shutil.copytree(REPO / "submissions" / eid, root / "submissions" / eid)
        for suffix in (".json", ".examples.npz"):
            src = REPO / "leaderboard" / "results" / f"{eid}{suffix}"
            (root / "leaderboard" / "results").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / "leaderboard" / "results" / src.name)
    shutil.copy(REPO / "leaderboard" / "reported.csv", root / "leaderboard" / "reported.csv")
    (root / "harness").mkdir()
    (root / "harness" / "cli.py").write_text("# stands in for the harness code\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    git(root, "checkout", "-qb", "pr")
    return root


def commit(root, msg="pr"):
    git(root, "add", "-A")
    git(root, "commit", "-qm", msg)


def new_entry(root, eid, *, checkpoint=None, url=None, sha=CKPT_SHA, license="MIT", name="new model"):
    """A new submission folder (a copy of mnist-standard's), with a local or a hosted checkpoint."""
    folder = root / "submissions" / eid
    folder.mkdir(parents=True)
    spec = yaml.safe_load((REPO / "submissions" / "mnist-standard" / "submission.yaml").read_text())
    spec.update(id=eid, name=name, license=license)
    if url is not None:
        spec["model"]["checkpoint"] = {"url": url, "sha256": sha}
    else:
        shutil.copy(checkpoint or CKPT, folder / "model.safetensors")
        spec["model"]["checkpoint"] = {"path": "model.safetensors", "sha256": sha}
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def pr_check(root, capsys, *extra):
    code = main(["pr-check", "--base", "main", "--root", str(root), "--no-progress", "--n-examples", "4", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    problems = [ln for ln in err.splitlines() if ln.startswith("problem: ")]
    listed = out.split("### Problems\n\n", 1)[1].split("\n\n", 1)[0].splitlines() if "### Problems" in out else []
    assert len(problems) == len(listed)  # one stderr line per problem, as in the report
    assert all(ln.startswith("- ") for ln in listed)
    return code, out, problems


# ------------------------------------------------------------------------------------------- pass
def test_good_hosted_submission_passes_with_its_row(repo, tmp_path, capsys, monkeypatch):
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = srv.add("/ckpt/model.safetensors", CKPT.read_bytes())
        new_entry(repo, "hosted-cnn", url=url, name="Hosted standard CNN")
        commit(repo)
        summary = tmp_path / "step-summary.md"
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
        code, out, problems = pr_check(repo, capsys, "--keep", str(tmp_path / "kept"))
    assert code == 0 and problems == [], out
    assert "## pr-check: hosted-cnn (new): passed" in out
    assert "### Would-be row: MNIST, Linf, ε = 0.3" in out
    header, rule, row = out.split("### Would-be row: MNIST, Linf, ε = 0.3\n\n", 1)[1].splitlines()[:3]
    assert header.startswith("| Rank") and "AutoAttack" in header and rule.startswith("|---")
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")],
                     strict=False))
    assert cells["Model"] == "Hosted standard CNN" and cells["Source"] == "re-evaluated (n=4)"
    # 3 entries on the MNIST board; a 0%-robust model with mnist-standard's FLOPs ties it, behind mnist-pgd
    assert "of 3, frontier layer" in out and "Rank **2" in out
    assert "### Smoke evaluation" in out and "downloaded and verified" in out
    assert summary.read_text().strip() == out.strip()  # the same report in the job summary
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == ["pr-check.md", "smoke-hosted-cnn.examples.npz", "smoke-hosted-cnn.json"]
    assert not (repo / "leaderboard" / "results" / "hosted-cnn.json").exists()  # never written there
    assert not (repo / "leaderboard" / "results" / ".state").exists()


def test_a_pr_without_submissions_has_nothing_to_check(repo, capsys):
    (repo / "harness" / "cli.py").write_text("# a code change\n")
    commit(repo)
    code, out, problems = pr_check(repo, capsys)
    assert code == 0 and "nothing to evaluate" in out


# ------------------------------------------------------------------------------------------- scope
def test_a_pr_editing_another_entry_fails(repo, capsys):
    new_entry(repo, "mine")
    yml = repo / "submissions" / "mnist-pgd" / "submission.yaml"
    yml.write_text(yml.read_text().replace("name: ", "name: Better ", 1))
    commit(repo)
    code, out, problems = pr_check(repo, capsys)
    assert code == 1
    assert len(problems) == 1 and "changes entry 'mnist-pgd', which is already on the base branch" in problems[0]
    assert "Would-be row" not in out  # nothing is evaluated before the PR's scope is right


def test_a_pr_mixing_code_and_a_submission_fails(repo, capsys):
    new_entry(repo, "mine")
    (repo / "harness" / "cli.py").write_text("print('the checker, changed')\n")
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "outside its entry (harness/cli.py)" in problems[0]


def test_two_new_entries_fail_and_maintainers_may_update_one(repo, capsys):
    new_entry(repo, "first")
    new_entry(repo, "second")
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 1 and problems == ["problem: the PR adds 2 entries (first, second); send one entry per pull request"]


def test_pr_check_from_the_command_line_is_one_line_per_problem(repo):
    """The same check through `python -m harness` in a subprocess: exit 1, no traceback."""
    new_entry(repo, "mine")
    shutil.rmtree(repo / "submissions" / "mnist-standard")
    commit(repo)
    # run from outside the repository: its stand-in harness/ folder must not shadow the real package
    out = subprocess.run([sys.executable, "-m", "harness", "pr-check", "--base", "main", "--no-progress",
                          "--root", str(repo)], cwd=repo.parent, capture_output=True, text=True,
                         env={**os.environ, **GIT_ENV})
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("problem: ") and "'mnist-standard'" in lines[0]


# ------------------------------------------------------------------------------------------ folder
def test_a_checkpoint_over_the_size_limit_fails(repo, capsys):
    new_entry(repo, "big")
    commit(repo)
    size_mb = CKPT.stat().st_size / 1e6
    code, out, problems = pr_check(repo, capsys, "--max-file-mb", f"{size_mb / 2:.3f}")
    assert code == 1 and len(problems) == 1
    assert "submissions/big/model.safetensors" in problems[0] and "over the" in problems[0]
    assert "model.checkpoint.url" in problems[0]  # says what to do instead
    code, out, problems = pr_check(repo, capsys)  # under the default 100 MB it is fine
    assert code == 0, problems


def test_symlinks_executables_and_a_missing_licence_fail(repo, capsys):
    folder = new_entry(repo, "odd", license="my own terms")
    (folder / "train.sh").write_text("#!/bin/sh\n")
    (folder / "train.sh").chmod(0o755)
    (folder / "link.pt").symlink_to(folder / "model.safetensors")
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 1
    assert any("train.sh: executable files are not allowed" in p for p in problems)
    assert any("link.pt: symlinks are not allowed" in p for p in problems)
    (folder / "train.sh").unlink()
    (folder / "link.pt").unlink()
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "license: 'my own terms' is not an SPDX" in problems[0]
    (folder / "LICENSE.txt").write_text("my own terms, in full\n")
    commit(repo)
    code, _, problems = pr_check(repo, capsys)  # every file of a submission must be covered by a hash
    assert code == 1 and len(problems) == 1 and "files: LICENSE.txt is not covered by any hash" in problems[0]
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["files"] = {"LICENSE.txt": hashlib.sha256((folder / "LICENSE.txt").read_bytes()).hexdigest()}
    (folder / "submission.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 0, problems


# -------------------------------------------------------------------------------------------- hash
def test_a_hash_mismatch_fails(repo, tmp_path, capsys, monkeypatch):
    bad_sha = hashlib.sha256(b"something else").hexdigest()
    new_entry(repo, "local-bad", sha=bad_sha)
    commit(repo)
    code, _, problems = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "model.checkpoint.sha256: checkpoint hash mismatch" in problems[0]


def test_a_hosted_hash_mismatch_fails_and_caches_nothing(repo, tmp_path, capsys, monkeypatch):
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = srv.add("/ckpt/model.safetensors", CKPT.read_bytes() + b"\0")
        new_entry(repo, "hosted-bad", url=url)
        commit(repo)
        code, _, problems = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "hash mismatch for https://127.0.0.1" in problems[0]
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


# ---------------------------------------------------------------------------------- forged records
def forge_record(root, eid, flip: list[int]):
    """A record for the new entry `eid` made from mnist-standard's honest 500-point record, with the
    provenance hash updated (what a forger would do) and `flip` claimed robust by hand."""
    res = root / "leaderboard" / "results"
    rec = json.loads((REPO / "leaderboard" / "results" / "mnist-standard.json").read_text())
    with np.load(REPO / "leaderboard" / "results" / "mnist-standard.examples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["clean_correct"][flip].all() and not arrays["autoattack_robust"][flip].any()
    arrays["autoattack_robust"][flip] = True
    arrays["autoattack_broken_by"][flip] = -1
    acc, ci = accuracy_with_ci(arrays["autoattack_robust"])
    rec.update(submission_id=eid, robust_accuracy=acc, robust_accuracy_ci95=list(ci),
               examples_file=f"{eid}.examples.npz")
    after = rec["autoattack"]["accuracy_after"]
    for a in after:
        if a != "clean":
            after[a] = max(min(after[a], rec["clean_accuracy"]), acc)
    after[list(after)[-1]] = acc
    yaml_path = root / "submissions" / eid / "submission.yaml"
    rec["provenance"]["submission_sha256"] = sha256_file(yaml_path)
    rec["provenance"]["files_sha256"] = verify_files(load_submission(yaml_path))
    (res / f"{eid}.json").write_text(json.dumps(rec, indent=2))
    np.savez_compressed(res / f"{eid}.examples.npz", **arrays)


def test_a_record_with_flipped_robust_flags_fails_naming_the_examples(repo, capsys):
    new_entry(repo, "forged")
    flip = [3, 17, 42, 101]
    forge_record(repo, "forged", flip)
    commit(repo)
    code, out, problems = pr_check(repo, capsys, "--audit-sample", "16", "--seed", "5")
    assert code == 1
    (problem,) = problems
    assert problem.startswith("problem: leaderboard/results/forged.json: audit: autoattack_robust: 4 of 4 sampled")
    assert "at indices 3, 17, 42, 101 " in problem and "more than 5% of its robust points are not robust" in problem
    assert "### Audit of the record" in out and "seed 5" in out


def test_an_honest_record_passes_the_audit_in_a_pr(repo, capsys):
    new_entry(repo, "honest")
    forge_record(repo, "honest", flip=[])  # only the id and the submission hash change
    commit(repo)
    code, out, problems = pr_check(repo, capsys, "--audit-sample", "16", "--seed", "5")
    assert code == 0, problems
    assert "Figures from the record the PR carries" in out
    assert "n=500" in out  # the row is the record's, not the smoke evaluation's


def test_an_unknown_base_is_a_one_line_error(repo, capsys):
    assert main(["pr-check", "--base", "origin/nope", "--root", str(repo), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base 'origin/nope' is not a commit" in err and "Traceback" not in err
