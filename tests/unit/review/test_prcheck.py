"""`harness pr-check` on throw-away git repositories (tests/helpers/prcheck_repo.py): a base commit on `main`
with two real entries, and a PR branch per case. pr-check is a CPU check with no dataset: path
rules, folder limits, schema and licence, duplicate checkpoints, hosting and manifest, the
architecture on the meta device with its FLOPs, and a sandboxed forward pass on random inputs with
the logits check. Every failure must be one line per problem and no traceback.
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
from helpers.hosting import FileServer
from helpers.prcheck_repo import (
    GIT_ENV,
    check_rows,
    commit,
    git,
    make_repo,
    new_entry,
    pr_check,
    random_cnn,
    write_spec,
)
from helpers.spec import REPO
from safetensors.torch import save_file

from harness.cli import main
from harness.core.files import sha256_file
from harness.models.architectures import mnist_small_cnn


@pytest.fixture
def repo(tmp_path, monkeypatch):
    return make_repo(tmp_path, monkeypatch)


def record_flops(eid: str) -> float:
    return json.loads((REPO / "leaderboard" / "results" / f"{eid}.json").read_text())["inference_flops"]


# ------------------------------------------------------------------------------------------- pass
def test_good_hosted_submission_passes_with_every_check(repo, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "hosted.safetensors"
    sha = random_cnn(ckpt, seed=7)
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = srv.add("/ckpt/model.safetensors", ckpt.read_bytes())
        new_entry(repo, "hosted-cnn", url=url, sha=sha, name="Hosted standard CNN")
        commit(repo)
        summary = tmp_path / "step-summary.md"
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
        code, out, problems, _ = pr_check(repo, capsys, "--keep", str(tmp_path / "kept"))
    assert code == 0 and problems == [], out
    assert out.startswith("## pr-check: hosted-cnn (new): passed")
    rows = check_rows(out)
    assert list(rows) == ["path rules", "folder", "schema", "licence", "duplicate checkpoint", "hosted checkpoint",
                          "manifest", "architecture (meta device)", "FLOPs (fvcore, on the empty model)",
                          "forward pass (sandboxed worker)", "logits"]
    assert rows["hosted checkpoint"].startswith("downloaded and verified")
    # the FLOPs counted on the empty meta-built model are the flops stage's (the committed record of
    # the same architecture), and the parameters those of the architecture
    assert rows["FLOPs (fvcore, on the empty model)"].startswith("%.3g k per forward pass" % (
        record_flops("mnist-standard") / 1e3))
    assert "166 k parameters" in rows["architecture (meta device)"]
    assert rows["forward pass (sandboxed worker)"].startswith("4 random inputs 1x28x28: ")
    assert "budget 60 s per phase, scaled by the FLOPs" in rows["forward pass (sandboxed worker)"]
    assert rows["logits"] == "shape (4, 10), all finite"
    assert "AutoAttack" not in out and "Would-be row" not in out  # no numbers from a PR
    assert summary.read_text().strip() == out.strip()  # the same report in the job summary
    kept = tmp_path / "kept"
    assert sorted(p.name for p in kept.iterdir()) == ["pr-check.json", "pr-check.md"]
    data = json.loads((kept / "pr-check.json").read_text())
    assert data["passed"] is True and data["entry"] == "hosted-cnn"
    assert data["count"]["flops_per_pass"] == record_flops("mnist-standard")
    assert data["forward"]["budget_from_flops"] is True and data["forward"]["num_classes"] == 10
    assert not (repo / "leaderboard" / "results" / "hosted-cnn.json").exists()  # nothing is ever written there
    assert not (repo / "leaderboard" / "results" / ".state").exists()


def test_removed_flags_are_noted_and_ignored(repo, capsys):
    new_entry(repo, "mine")
    commit(repo)
    code, out, problems, err = pr_check(repo, capsys, "--n-examples", "4", "--device", "cuda", "--data-dir", "/x")
    assert code == 0, problems
    notes = [ln for ln in err.splitlines() if ln.startswith("note: pr-check no longer uses")]
    assert len(notes) == 3 and any("--data-dir" in n for n in notes)


# -------------------------------------------------------------------------------------- path rules
@pytest.mark.parametrize("path", [
    "harness/worker.py", ".github/workflows/full-eval.yml", "leaderboard/reported.csv",
    "leaderboard/training_recipes.csv", "pyproject.toml", "leaderboard/results/mnist-pgd.json",
    "leaderboard/results/.state/mnist-pgd/key/stage.json",
])
def test_a_pr_that_changes_no_submission_is_not_passed(repo, capsys, path):
    """A code, workflow, data or record change is not a submission PR: never "passed (nothing to
    evaluate)", exit 1, one line saying it needs a maintainer's review."""
    p = repo / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text((p.read_text() if p.exists() else "") + "\n# changed by the PR\n")
    git(repo, "add", "-f", path)  # .state/ would be git-ignored in the real repository: force-added
    git(repo, "commit", "-qm", "pr")
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1
    (problem,) = problems
    if path.endswith(".json") and "/.state/" not in path:  # a records PR: the record itself is refused
        assert problem.startswith(f"problem: {path}: cannot read result record")  # (test_prcheck_records.py)
        assert out.startswith("## pr-check: records PR: failed (1 problem)")
        return
    assert problem.startswith("problem: not a submission PR") and path in problem and "maintainer's review" in problem
    assert out.startswith("## pr-check: not a submission PR: failed (1 problem)")
    assert "### Checks" not in out


def test_an_empty_pr_is_not_a_submission_pr(repo, capsys):
    git(repo, "commit", "-q", "--allow-empty", "-m", "nothing")
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "not a submission PR" in problems[0]


def forge_cifar10_record(root, eid):
    """The forged CIFAR-10 PR of issue 16: a copy of an entry's record under a new id that keeps the
    real arrays for the 100 bundled points and invents the other 9,900 (clean 95%, AutoAttack 70%,
    1,000 FLOPs and parameters), with the hashes recomputed."""
    res = root / "leaderboard" / "results"
    rec = json.loads((REPO / "leaderboard" / "results" / "cifar10-autoattack-resnet18.json").read_text())
    with np.load(REPO / "leaderboard" / "results" / "cifar10-autoattack-resnet18.examples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    n = 10_000
    rng = np.random.default_rng(0)
    for k, a in list(arrays.items()):
        if a.ndim >= 1 and a.shape[0] == 100:
            extra = rng.random((n - 100, *a.shape[1:])) < (0.95 if "clean" in k else 0.7)
            arrays[k] = np.concatenate([a, extra.astype(a.dtype)])
    rec.update(submission_id=eid, n_examples=n, clean_accuracy=0.95, robust_accuracy=0.70, inference_flops=1000,
               params=1000, examples_file=f"{eid}.examples.npz")
    (res / f"{eid}.json").write_text(json.dumps(rec, indent=2))
    np.savez_compressed(res / f"{eid}.examples.npz", **arrays)


def test_the_forged_cifar10_record_pr_is_refused_naming_the_record(repo, capsys):
    new_entry(repo, "forged")
    forge_cifar10_record(repo, "forged")
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1
    (problem,) = problems
    assert problem.startswith("problem: leaderboard/results/forged.examples.npz: a submission PR changes only its "
                              "submissions/<id>/ folder")
    assert "records come only from the trusted GPU evaluation" in problem and "(and 1 more file(s)" in problem
    assert "### Checks" not in out  # nothing of the PR is run
    # the record alone, without a submission folder: a records PR whose record is refused
    shutil.rmtree(repo / "submissions" / "forged")
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1
    assert problems[0].startswith("problem: leaderboard/results/forged.json: its submission "
                                  "submissions/forged/submission.yaml is not on the base branch")


@pytest.mark.parametrize("path", [
    "leaderboard/results/mnist-standard.json", "leaderboard/reported.csv", "harness/worker.py",
    ".github/workflows/full-eval.yml", "pyproject.toml", "tests/test_new.py", "scripts/x.py", "README.md",
    "leaderboard/results/.state/mine/state.json",
])
def test_a_submission_pr_touching_anything_else_is_refused_naming_the_path(repo, capsys, path):
    new_entry(repo, "mine")
    p = repo / path
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json" and p.exists():  # an edited committed record: the robust accuracy raised
        rec = json.loads(p.read_text())
        rec["robust_accuracy"] = 0.9
        p.write_text(json.dumps(rec))
    else:
        p.write_text((p.read_text() if p.exists() else "") + "\n# changed\n")
    git(repo, "add", "-f", "-A")
    git(repo, "commit", "-qm", "pr")
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1
    (problem,) = problems
    assert problem.startswith(f"problem: {path}: a submission PR changes only its submissions/<id>/ folder")
    assert "### Checks" not in out


def test_a_pr_editing_another_entry_fails_and_maintainers_may_allow_it(repo, capsys):
    new_entry(repo, "mine")
    yml = repo / "submissions" / "mnist-pgd" / "submission.yaml"
    yml.write_text(yml.read_text().replace("name: ", "name: Better ", 1))
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1
    assert len(problems) == 1 and "changes entry 'mnist-pgd', which is already on the base branch" in problems[0]
    assert "### Checks" not in out
    # an update of an existing entry alone, allowed by a maintainer, gets every check
    shutil.rmtree(repo / "submissions" / "mine")
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1 and "--allow-update" in problems[0]
    code, out, problems, _ = pr_check(repo, capsys, "--allow-update", "mnist-pgd")
    assert code == 0, problems
    assert out.startswith("## pr-check: mnist-pgd (update): passed") and "logits" in check_rows(out)


def test_two_new_entries_fail(repo, capsys):
    new_entry(repo, "first")
    new_entry(repo, "second", seed=2)
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
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


@pytest.mark.parametrize("name", [b"\xff\xfe-model.bin", b"red-\x1b[31m.txt", "rtl-\u202e-fdp.txt".encode(),
                                  b"two\nlines.txt"])
def test_an_odd_file_name_in_the_pr_is_one_line(repo, capsys, name):
    """A file name that is not UTF-8, or holds control, escape or bidi characters: one line, no
    traceback, and the raw bytes never reach the report."""
    folder = new_entry(repo, "mine")
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(b"x")
    commit(repo)
    code, out, problems, err = pr_check(repo, capsys)
    assert code == 1
    (problem,) = problems
    assert problem.startswith("problem: file name submissions/mine/") and "must be printable UTF-8" in problem
    for raw in ("\x1b", "\u202e", "\ufffd", "\udcff"):
        assert raw not in out + err
    assert not any(line.startswith("lines.txt") for line in (out + err).splitlines())


# ------------------------------------------------------------------------------------------ folder
def test_a_checkpoint_over_the_size_limit_fails(repo, capsys):
    folder = new_entry(repo, "big")
    commit(repo)
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    code, out, problems, _ = pr_check(repo, capsys, "--max-file-mb", f"{size_mb / 2:.3f}")
    assert code == 1 and len(problems) == 1
    assert "submissions/big/model.safetensors" in problems[0] and "over the" in problems[0]
    assert "model.checkpoint.url" in problems[0]  # says what to do instead


def test_symlinks_executables_and_a_missing_licence_fail_then_it_passes(repo, capsys):
    folder = new_entry(repo, "odd", license="my own terms")
    (folder / "train.sh").write_text("#!/bin/sh\n")
    (folder / "train.sh").chmod(0o755)
    (folder / "link.pt").symlink_to(folder / "model.safetensors")
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1
    assert any("train.sh: executable files are not allowed" in p for p in problems)
    assert any("link.pt: symlinks are not allowed" in p for p in problems)
    (folder / "train.sh").unlink()
    (folder / "link.pt").unlink()
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "license: 'my own terms' is not an SPDX" in problems[0]
    (folder / "LICENSE.txt").write_text("my own terms, in full\n")
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)  # every file of a submission must be covered by a hash
    assert code == 1 and len(problems) == 1 and "files: LICENSE.txt is not covered by any hash" in problems[0]
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["files"] = {"LICENSE.txt": hashlib.sha256((folder / "LICENSE.txt").read_bytes()).hexdigest()}
    write_spec(folder, spec)
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 0, problems
    assert check_rows(out)["licence"] == "my own terms"


# -------------------------------------------------------------------------------------------- hash
def test_a_hash_mismatch_fails(repo, capsys):
    new_entry(repo, "local-bad", sha=hashlib.sha256(b"something else").hexdigest())
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "model.checkpoint.sha256: checkpoint hash mismatch" in problems[0]


def test_a_hosted_hash_mismatch_fails_and_caches_nothing(repo, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "c.safetensors"
    sha = random_cnn(ckpt, seed=3)
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = srv.add("/ckpt/model.safetensors", ckpt.read_bytes() + b"\0")
        new_entry(repo, "hosted-bad", url=url, sha=sha)
        commit(repo)
        code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "hash mismatch for https://127.0.0.1" in problems[0]
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_a_checkpoint_already_on_the_base_branch_is_refused_naming_the_entry(repo, tmp_path, capsys, monkeypatch):
    """The same checkpoint under a new id (a replayed entry) is refused before anything is fetched,
    whether the file is in the folder or hosted."""
    folder = new_entry(repo, "replayed")
    shutil.copy(REPO / "submissions" / "mnist-pgd" / "model.safetensors", folder / "model.safetensors")
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    pgd_sha = yaml.safe_load((REPO / "submissions" / "mnist-pgd" / "submission.yaml").read_text())
    spec["model"]["checkpoint"]["sha256"] = pgd_sha["model"]["checkpoint"]["sha256"]
    write_spec(folder, spec)
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1
    (problem,) = problems
    assert "this checkpoint" in problem and "already on the base branch as entry 'mnist-pgd'" in problem
    assert "duplicate checkpoint" not in check_rows(out)
    # hosted under a URL that is never asked for: refused from the declared hash alone
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        url = srv.add("/m.safetensors", (folder / "model.safetensors").read_bytes())
        (folder / "model.safetensors").unlink()
        spec["model"]["checkpoint"] = {"url": url, "sha256": spec["model"]["checkpoint"]["sha256"]}
        write_spec(folder, spec)
        commit(repo)
        code, _, problems, _ = pr_check(repo, capsys)
        assert srv.hits("/m.safetensors") == 0
    assert code == 1 and len(problems) == 1 and "'mnist-pgd'" in problems[0]


def test_a_duplicate_of_a_record_whose_folder_is_gone_is_refused(repo, capsys):
    """The base's records count too: mnist-standard's folder removed on main, its record kept."""
    git(repo, "checkout", "-q", "main")
    shutil.rmtree(repo / "submissions" / "mnist-standard")
    commit(repo, "drop the folder")
    git(repo, "checkout", "-q", "-B", "pr")
    folder = new_entry(repo, "again")
    shutil.copy(REPO / "submissions" / "mnist-standard" / "model.safetensors", folder / "model.safetensors")
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["model"]["checkpoint"]["sha256"] = json.loads(
        (REPO / "leaderboard" / "results" / "mnist-standard.json").read_text())["provenance"]["checkpoint_sha256"]
    write_spec(folder, spec)
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "as entry 'mnist-standard'" in problems[0]


# ------------------------------------------------------------------------------- model and logits
@pytest.mark.slow
def test_wrong_logits_fail_in_one_line(repo, capsys):
    """The logits check: a model with 5 outputs on a 10-class dataset, then one whose weights are NaN."""
    folder = new_entry(repo, "five")
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["model"]["architecture_kwargs"] = {"num_classes": 5}
    save_file(mnist_small_cnn(num_classes=5).state_dict(), str(folder / "model.safetensors"))
    spec["model"]["checkpoint"]["sha256"] = sha256_file(folder / "model.safetensors")
    write_spec(folder, spec)
    commit(repo)
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1
    assert "sandboxed forward pass" in problems[0] and "shape (2, 5), expected (N, 10)" in problems[0]
    assert "logits" not in check_rows(out)
    state = mnist_small_cnn().state_dict()
    state = {k: v.fill_(float("nan")) for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    del spec["model"]["architecture_kwargs"]
    spec["model"]["checkpoint"]["sha256"] = sha256_file(folder / "model.safetensors")
    write_spec(folder, spec)
    commit(repo)
    code, _, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "NaN logits" in problems[0]


def test_an_unknown_base_is_a_one_line_error(repo, capsys):
    assert main(["pr-check", "--base", "origin/nope", "--root", str(repo), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base 'origin/nope' is not a commit" in err and "Traceback" not in err


def _as_format(root, eid, fmt, write):
    folder = new_entry(root, eid)
    (folder / "model.safetensors").unlink()
    name = "model.onnx" if fmt == "onnx" else "model.pt"
    write(folder / name)
    spec = yaml.safe_load((folder / "submission.yaml").read_text())
    spec["model"].pop("architecture")
    spec["model"].update(format=fmt, checkpoint={"path": name, "sha256": sha256_file(folder / name)})
    write_spec(folder, spec)
    commit(root)


@pytest.mark.slow
def test_an_onnx_model_is_counted_in_the_sandbox_and_torchscript_is_refused(repo, capsys):
    """ONNX cannot be built on the meta device: its parameters and FLOPs are counted by the worker
    after loading (fvcore, the same count as the architecture's), under the cap as budget."""
    import torch

    net = mnist_small_cnn().eval()
    _as_format(repo, "as-onnx", "onnx", lambda p: torch.onnx.export(net, torch.rand(1, 1, 28, 28), str(p),
                                                                     dynamo=False, opset_version=17))
    code, out, problems, _ = pr_check(repo, capsys, "--max-forward-seconds", "900")
    assert code == 0, out
    rows = check_rows(out)
    assert "architecture (meta device)" not in rows and "cannot be built on the meta device" in out
    counted = rows["parameters and FLOPs (fvcore, in the sandbox)"]
    assert counted.startswith("166 k parameters; 609 k per forward pass"), counted
    assert "budget 900 s per phase, the cap" in rows["forward pass (sandboxed worker)"]
    assert rows["logits"] == "shape (4, 10), all finite"
    shutil.rmtree(repo / "submissions" / "as-onnx")
    _as_format(repo, "as-ts", "torchscript", lambda p: torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 28, 28)),
                                                                      str(p)))
    code, out, problems, _ = pr_check(repo, capsys)
    assert code == 1 and len(problems) == 1 and "TorchScript submissions are refused" in problems[0]
    assert "forward pass (sandboxed worker)" not in check_rows(out)
